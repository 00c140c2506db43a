"""What cannot run here (SLURM, several nodes or GPUs) is tested on what the code generates:
the sbatch script of a real `-m hydra/launcher=slurm` sweep, the Trainer settings of each
trainer config, and the GPU assignment of the local `gpu_pool` sweep."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from hydra_plugins.cpm_gpu_pool.gpu_pool_launcher import run_on_gpu_pool
from tests.conftest import CONFIG_DIR, REPO, TINY

FAKE_SBATCH = """#!/bin/sh
# Records the script submitit hands to sbatch, then refuses it (there is no cluster here).
cp "$1" "{capture}"
echo "sbatch: error: this is a test machine" >&2
exit 1
"""


def compose_trainer(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"trainer={name}", *overrides])


@pytest.fixture(scope="module")
def sbatch_script(tmp_path_factory) -> str:
    """The sbatch script of a real 2-job multirun with hydra/launcher=slurm, trainer=ddp_multinode."""
    tmp = tmp_path_factory.mktemp("slurm")
    capture = tmp / "submitted.sbatch"
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(capture=capture))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    overrides = [
        "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu-long", "hydra.launcher.timeout_min=600",
        "trainer=ddp_multinode", "trainer.devices=4", "trainer.num_nodes=3", "seed=0,1",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert capture.exists(), f"sbatch was never called:\n{run.stdout}\n{run.stderr}"
    return capture.read_text()


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S*))?$", script, flags=re.MULTILINE))


def test_slurm_sweep_requests_one_task_per_gpu_on_every_node(sbatch_script):
    flags = sbatch_flags(sbatch_script)
    assert flags["nodes"] == "3"
    assert flags["ntasks-per-node"] == "4"  # one task per GPU: each task is one DDP rank
    assert flags["gpus-per-node"] == "4"
    assert flags["partition"] == "gpu-long"
    assert flags["time"] == "600"  # minutes
    assert flags["array"] == "0-1%2"  # the two jobs of the sweep, as one job array
    assert "srun" in sbatch_script  # srun starts the tasks, so Lightning starts no processes


def test_slurm_sweep_sends_lightnings_requeue_signal(sbatch_script):
    flags = sbatch_flags(sbatch_script)
    assert flags["signal"] == "USR1@120"  # Lightning's requeue signal, not submitit's USR2
    assert "requeue" in flags


def instantiate_trainer(name: str, root: Path, *overrides: str):
    return hydra.utils.instantiate(compose_trainer(name, *overrides).trainer, default_root_dir=str(root))


def test_multinode_trainer_is_one_rank_per_slurm_task_and_requeues_on_sigusr1(tmp_path, monkeypatch):
    # What srun sets for task 5 of 8 (2 nodes x 4 GPUs); CPU stands in for the GPUs.
    slurm_task = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[01-02]",
    }  # fmt: skip
    for key, value in slurm_task.items():
        monkeypatch.setenv(key, value)
    trainer = instantiate_trainer("ddp_multinode", tmp_path, "trainer.accelerator=cpu", "trainer.precision=32-true")
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_nodes == 2 and trainer.num_devices == 4
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (5, 1, 1, 8)
    assert environment.creates_processes_externally  # Lightning re-launches nothing under SLURM


@pytest.mark.parametrize(
    ("name", "accelerator", "devices", "strategy", "precision"),
    [
        ("cpu", "cpu", 1, None, "32-true"),
        ("gpu", "gpu", 1, None, "bf16-mixed"),
        ("ddp", "gpu", 2, "ddp", "bf16-mixed"),
        ("ddp_multinode", "gpu", 4, "ddp", "bf16-mixed"),
        ("ddp_sim", "cpu", 2, "DDPStrategy", "32-true"),
    ],
)
def test_trainer_configs(name, accelerator, devices, strategy, precision):
    trainer = compose_trainer(name).trainer
    assert (trainer.accelerator, trainer.devices, trainer.precision) == (accelerator, devices, precision)
    got = trainer.get("strategy")
    assert (got if isinstance(got, str) or got is None else got._target_.rsplit(".", 1)[-1]) == strategy
    # Our EpochSampler splits by rank itself; Lightning's sampler would split a second time.
    assert trainer.use_distributed_sampler is False


def test_ddp_sim_trainer_is_two_gloo_processes(tmp_path):
    trainer = instantiate_trainer("ddp_sim", tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._process_group_backend == "gloo"
    assert trainer.num_devices == 2
    assert isinstance(instantiate_trainer("cpu", tmp_path).strategy, SingleDeviceStrategy)


class FakeJob:
    """A job that finishes when the test says so."""

    def __init__(self, job: int, gpu: int):
        self.job, self.gpu, self.finished = job, gpu, False

    def done(self) -> bool:
        return self.finished


def test_gpu_pool_runs_one_job_per_gpu_and_reuses_freed_gpus():
    started: list[FakeJob] = []

    def start(job: int, gpu: int) -> FakeJob:
        assert all(j.finished for j in started if j.gpu == gpu), f"GPU {gpu} given to two running jobs"
        started.append(FakeJob(job, gpu))
        return started[-1]

    def finish_jobs_in_background():
        # The first job to finish is #1 (on GPU 2): job #3 must go there, and so on.
        for job in (1, 0, 2, 3, 4):
            while len(started) <= job:
                time.sleep(0.001)
            time.sleep(0.01)
            started[job].finished = True

    thread = threading.Thread(target=finish_jobs_in_background)
    thread.start()
    handles = run_on_gpu_pool(5, [0, 2], start, FakeJob.done, poll_seconds=0.001)
    thread.join()
    assert [h.job for h in handles] == [0, 1, 2, 3, 4]
    assert [h.gpu for h in handles] == [0, 2, 2, 0, 2]


@pytest.mark.slow
def test_gpu_pool_sweep_gives_each_job_its_own_gpu(tmp_path, data_dir):
    """A real 3-job sweep on 2 'GPUs' (CUDA_VISIBLE_DEVICES is set even without GPUs; the
    jobs train on the CPU): every job finishes, and each saw exactly one GPU id."""
    sweep = tmp_path / "sweep"
    # Resolved inside each job process and saved with the logged hyperparameters (the run's
    # name is a free string, so the schema check lets it carry the value).
    seen = "name=gpu_${oc.env:CUDA_VISIBLE_DEVICES,unset}"
    run = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", "-m", "hydra/launcher=gpu_pool", "hydra.launcher.gpus=[0,1]",
         "hydra.launcher.poll_seconds=0.2", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}",
         "hydra.sweep.subdir=${hydra.job.num}", "seed=0,1,2", seen, *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assigned = {int(job): gpu for job, gpu in re.findall(r"#(\d+) on GPU (\d+)", run.stdout + run.stderr)}
    assert assigned[0] == "0" and assigned[1] == "1" and assigned[2] in ("0", "1")
    for job in range(3):
        job_dir = sweep / str(job)
        assert (job_dir / "metrics.json").exists(), f"job {job} did not finish"
        (hparams,) = job_dir.glob("csv/*/hparams.yaml")
        assert re.search(r"^name: gpu_(\d+)$", hparams.read_text(), re.MULTILINE).group(1) == assigned[job]
