"""Shared fixtures: a small real synthetic data set and composed Hydra configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")

# Small enough to make in ~1 s, large enough for a few batches of 16 and an odd eval split.
SMALL_SET = {"train": 96, "val": 25, "test": 25}


def make_synthetic(out: Path, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Run the real converter CLI, as a user would."""
    subprocess.run(
        [sys.executable, "-m", "data_prep", "synthetic", "--out", str(out), "--train", str(train),
         "--val", str(val), "--test", str(test), "--seed", str(seed)],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data root holding synthetic/{train,val,test}.h5 (paths.data_dir for configs)."""
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root / "synthetic", **SMALL_SET)
    return root


def compose_config(overrides: list[str], output_dir: Path, data_dir: Path | None = None) -> DictConfig:
    """train.yaml composed as the CLI would, with tiny limits set by the caller's overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    return cfg


# Overrides that make a real Trainer run take seconds on a CPU.
TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "~callbacks.progress_bar",
]


@pytest.fixture
def tiny_config(tmp_path, data_dir):
    """compose(extra_overrides) -> a config for a seconds-long real training run in tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([*TINY, *overrides], tmp_path / "run", data_dir)

    return make


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, data_dir) -> Path:
    """last.ckpt of a seconds-long run of the default experiment (evaluate, predict, export tests)."""
    from cpm_lightning.train import train

    run = tmp_path_factory.mktemp("trained")
    train(compose_config([*TINY, "+trainer.limit_test_batches=1"], run, data_dir))
    return run / "checkpoints" / "last.ckpt"
