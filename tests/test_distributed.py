"""Real DDP on the CPU (trainer=ddp_sim: 2 processes, gloo) and real submitit sweeps.

DDP runs go through a small script run as a subprocess: Lightning's `ddp` strategy starts the
other rank by re-running the command line, which must not be pytest itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

from cpm_lightning.train import build
from tests.conftest import CONFIG_DIR, REPO, TINY, compose_config

DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import lightning as L, torch
from cpm_lightning.train import build
from tests.conftest import compose_config

mode, data_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
overrides = json.loads(sys.argv[4])
L.seed_everything(0)
module, datamodule, trainer = build(compose_config(overrides, out, data_dir))
if mode == "fit":
    trainer.fit(module, datamodule=datamodule)
    result = {{"loss": float(trainer.callback_metrics["train/loss"]), "step": trainer.global_step}}
    torch.save({{"params": module.model.state_dict(), **result}}, out / f"rank{{trainer.global_rank}}.pt")
else:
    metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    if trainer.is_global_zero:
        (out / "validate.json").write_text(json.dumps(metrics[0]))
"""

# The whole odd-sized validation split (25 samples) in batches of 4: ranks get 13 and 12.
FULL_VAL = ["trainer.limit_val_batches=1.0", "data.eval_batch_size=4"]


def run_ddp_script(tmp: Path, mode: str, data_dir: Path, out: Path, overrides: list[str]) -> None:
    script = tmp / "ddp_script.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    run = subprocess.run(
        [sys.executable, str(script), mode, str(data_dir), str(out), json.dumps(overrides)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data_dir) -> Path:
    """A 3-step training run of 2 gloo processes; each rank saves its parameters."""
    out = tmp_path_factory.mktemp("ddp_fit")
    run_ddp_script(out, "fit", data_dir, out, [*TINY, "trainer=ddp_sim"])
    return out


@pytest.mark.slow
def test_ddp_sim_trains_with_identical_parameters_on_both_ranks(ddp_run, data_dir):
    ranks = [torch.load(ddp_run / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank in ranks:
        assert rank["step"] == 3 and torch.isfinite(torch.tensor(rank["loss"]))
    # Each rank saw different samples, yet all-reduced gradients keep the replicas bitwise equal.
    assert ranks[0]["loss"] != ranks[1]["loss"]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    L.seed_everything(0)  # the same initial weights as the run: training moved them
    module, _, _ = build(compose_config([*TINY, "trainer=ddp_sim"], ddp_run / "init", data_dir))
    assert not torch.equal(module.model.stage1.trunk[0].weight, ranks[0]["params"]["stage1.trunk.0.weight"])


@pytest.mark.slow
def test_checkpoint_metrics_are_identical_with_two_processes_and_one(ddp_run, data_dir, tmp_path):
    run_ddp_script(tmp_path, "validate", data_dir, ddp_run, [*TINY, *FULL_VAL, "trainer=ddp_sim"])
    two = json.loads((ddp_run / "validate.json").read_text())
    module, datamodule, trainer = build(compose_config([*TINY, *FULL_VAL], tmp_path / "one", data_dir))
    one = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ddp_run / "checkpoints" / "last.ckpt"))[0]
    pck_keys = [k for k in one if k.startswith("val/pck")]
    assert len(pck_keys) == 4  # 3 stages + the final one
    for key in pck_keys:
        assert two[key] == pytest.approx(one[key], abs=1e-7), key  # sum states: exact counts
    # Losses are summed per sample over both ranks (13 and 12 samples), not averaged per rank.
    loss_keys = [k for k in one if k.startswith("val/loss")]
    assert len(loss_keys) == 4
    for key in loss_keys:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_ddp_child_command_inside_a_multirun_would_rerun_the_sweep(monkeypatch, tmp_path):
    """The pitfall, shown on the command Lightning builds for rank 1 when `strategy=ddp` runs
    inside `-m`: it repeats `-m` and the sweep, so rank 1 would start the whole sweep again."""
    argv = ["train.py", "-m", "trainer=ddp", "optim.lr=1e-3,1e-4"]
    monkeypatch.setattr(sys, "argv", argv)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        job_config = compose(config_name="train", overrides=["trainer=ddp"], return_hydra_config=True)
    job_config.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(job_config)
    try:
        command, _ = _hydra_subprocess_cmd(local_rank=1)
    finally:
        HydraConfig.instance().cfg = None
    assert "-m" in command and "optim.lr=1e-3,1e-4" in command


@pytest.mark.slow
def test_submitit_local_two_job_sweep(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", "-m", "hydra/launcher=submitit_local",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}", "seed=0,1", *TINY],
        cwd=REPO, env={**os.environ, "CPM_DATA_DIR": str(data_dir)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    metrics = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in (0, 1)]
    assert all(0.0 <= m["pck_final_stage"] <= 1.0 for m in metrics)
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2  # each job ran as its own process


@pytest.mark.slow
def test_ddp_spawn_inside_a_multirun_runs_each_job_once(tmp_path, data_dir):
    """The single-machine workaround: DDP ranks spawned (not re-launched) in a 2-job sweep."""
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", "-m", "trainer=ddp_sim", "trainer.strategy.start_method=spawn",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}", "seed=0,1", *TINY],
        cwd=REPO, env={**os.environ, "CPM_DATA_DIR": str(data_dir)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no re-run sweep
    for job in (0, 1):
        assert json.loads((sweep / str(job) / "metrics.json").read_text())["global_step"] == 3
