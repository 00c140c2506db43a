"""The Hydra entry point: configs compose, runs write their outputs, bad configs fail clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO, TINY, compose_config
from hydra import compose, initialize_config_dir

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
REQUIRED_EXPERIMENTS = {
    "synthetic_3stage_joint", "lsp_3stage_joint", "lsp_3stage_stagewise", "lsp_3stage_finetune",
    "lsp_3stage_no_is", "lsp_6stage_joint", "mpii_6stage_joint", "lsp_mpii_6stage_joint", "flic_4stage_joint",
}  # fmt: skip


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def test_required_experiments_exist():
    assert set(EXPERIMENTS) >= REQUIRED_EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    assert cfg.name
    from cpm_lightning.models import CPM

    assert CPM(**cfg.model).num_stages == cfg.model.num_stages


def test_defaults_are_the_synthetic_run_and_experiment_is_not_a_default():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train")
    assert cfg.name == "synthetic_3stage_joint" and "experiment" not in cfg
    assert cfg.data.train_files[0].endswith("synthetic/train.h5")
    named = compose_config(["+experiment=synthetic_3stage_joint"], Path("/tmp"))
    plain = compose_config([], Path("/tmp"))
    assert named == plain  # the named experiment is exactly the default run


def test_paper_experiments_use_the_release_hyperparameters(tmp_path):
    cfg = compose_config(["+experiment=lsp_3stage_joint"], tmp_path)
    assert (cfg.data.input_size, cfg.data.batch_size, cfg.data.sigma) == (368, 16, 7.0)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 8e-5, 0.9, 5e-4)
    assert (cfg.optim.stage1_lr_mult, cfg.optim.stage1_bias_lr_mult, cfg.optim.bias_lr_mult) == (5, 10, 2)
    assert cfg.optim.scheduler == {"name": "step", "step_size": 136106, "gamma": 0.333}
    assert cfg.data.augment.scale_min == 0.7 and cfg.data.augment.max_rotation == 40


def test_paper_optimizer_groups_follow_the_release_multipliers(tmp_path):
    from omegaconf import OmegaConf

    from cpm_lightning.module import CPMModule

    cfg = compose_config(["+experiment=lsp_3stage_joint", "trainer=cpu"], tmp_path)
    module = CPMModule(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.scheme),
                       OmegaConf.to_container(cfg.optim), max_epochs=10)  # fmt: skip
    groups = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in module.parameter_groups()}
    assert set(groups) == {(4e-4, 5e-4), (8e-4, 0.0), (8e-5, 5e-4), (1.6e-4, 0.0)}
    assert groups[(4e-4, 5e-4)] + groups[(8e-4, 0.0)] == 4_386_095  # stage 1 at x5 / x10


def test_training_run_writes_config_checkpoints_and_metrics(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"] == "lsp_pck" and metrics["split"] == "val"
    assert [s["stage"] for s in metrics["stages"]] == [1, 2, 3]
    assert [s["receptive_field_px"] for s in metrics["stages"]] == [93, 237, 381]
    assert all(0.0 <= s["pck"] <= 1.0 and s["loss"] > 0 for s in metrics["stages"])
    assert metrics["pck_final_stage"] == metrics["stages"][-1]["pck"]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert Path(metrics["checkpoint"]).exists() and "checkpoints" in metrics["checkpoint"]
    assert "receptive field per stage (input px): [93, 237, 381]" in result.stdout


@pytest.mark.parametrize(("logger", "pattern"), [("wandb", "wandb/offline-run-*/run-*.wandb"),
                                                 ("tensorboard", "tensorboard/version_0/events.out.*")])  # fmt: skip
def test_wandb_offline_and_tensorboard_loggers_work_without_an_account(logger, pattern, tmp_path, data_dir):
    run_dir = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_cli(*TINY, f"logger={logger}", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(run_dir.glob(pattern)), sorted(str(p) for p in run_dir.rglob("*"))[:50]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_stages=0", "model.num_stages=0 is invalid: it must be an integer >= 1"),
        ("data.sigma=-2", "data.sigma=-2 is invalid: it must be a positive number"),
        ("data.input_size=100", "data.input_size=100 is not divisible by the model's stride 8"),
        ("scheme.name=bogus", "scheme='bogus' is unknown: choose one of joint, stagewise, finetune, no_intermediate"),
        ("scheme=bogus", "Could not find 'scheme/bogus'"),
    ],
)
def test_bad_config_fails_before_training_with_the_key_and_allowed_values(override, message, data_dir, tmp_path):
    result = run_cli(override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_missing_real_data_names_the_file_and_the_command(tmp_path):
    result = run_cli("+experiment=lsp_3stage_joint", "trainer=cpu", f"paths.data_dir={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path}/lsp/train.h5 does not exist" in result.stderr
    assert "python -m data_prep lsp" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sweep_runs_six_jobs_each_with_its_own_metrics(tmp_path, data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "model.num_stages=1,2,3", "scheme=joint,no_intermediate", *TINY,
                     f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(metrics) == 6
    assert sorted(len(m["stages"]) for m in metrics) == [1, 1, 2, 2, 3, 3]
    assert len({str(p.parent) for p in sweep_dir.glob("*/metrics.json")}) == 6
