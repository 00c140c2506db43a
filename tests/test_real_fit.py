"""End-to-end sanity on real pixels: a small CPM fits the converted real LSP/LSPET crops.

If labels, flips or crops were misaligned with the image content, a network could not reach
near-perfect PCK on the very crops it trains on.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from data_prep.__main__ import main as data_prep
from tests.real_samples import real_samples


def train_cli(overrides: list[str], run: Path) -> dict:
    """`python -m cpm_lightning.train` as a user runs it, into `run`; its metrics.json."""
    result = subprocess.run([sys.executable, "-m", "cpm_lightning.train", *overrides, f"hydra.run.dir={run}"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def converted_lsp(tmp_path_factory) -> Path:
    """The real LSP and LSPET samples converted by data_prep: DIR/lsp/{train,val,test}.h5."""
    data_dir = tmp_path_factory.mktemp("data")
    argv = ["lsp", "--lsp-root", str(real_samples("lsp")), "--lspet-root", str(real_samples("lspet"))]
    assert data_prep([*argv, "--out", str(data_dir / "lsp"), "--on-error", "skip", "--workers", "2"]) == 0
    return data_dir


@pytest.mark.slow
def test_lsp_3stage_joint_trains_one_epoch_on_the_converted_samples(converted_lsp, tmp_path):
    """The experiment as shipped (release model at 368 px, its solver, sigma, augmentation, photometrics
    on), on the CPU with a smaller batch: one whole epoch, validation, metrics.json."""
    run = tmp_path / "run"
    overrides = [
        "+experiment=lsp_3stage_joint", f"paths.data_dir={converted_lsp}", "trainer=cpu", "trainer.max_epochs=1",
        "data.batch_size=4", "data.num_workers=0", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
    ]  # fmt: skip
    metrics = train_cli(overrides, run)
    assert metrics["epochs"] == 1 and metrics["global_step"] >= 4
    assert [s["receptive_field_px"] for s in metrics["stages"]] == [167, 407, 647]  # the release's model
    assert all(math.isfinite(s["loss"]) and 0.0 <= s["pck"] <= 1.0 for s in metrics["stages"])


@pytest.mark.slow
def test_small_cpm_fits_the_real_lsp_samples(converted_lsp, tmp_path):
    train = str(converted_lsp / "lsp" / "train.h5")
    run = tmp_path / "run"
    overrides = [
        "data=lsp", f"data.train_files=[{train}]", f"data.val_file={train}", "data.input_size=128",
        "data.augment.photometric=false", "data.augment.scale_min=0.9", "data.augment.scale_max=1.1",
        "data.augment.max_rotation=10", "data.augment.flip_probability=0.5", "data.sigma=14",
        "data.batch_size=4", "data.num_workers=0", "model=cpm_small", "model.dropout=0.0", "optim=adam",
        "optim.lr=2e-3", "trainer.max_epochs=120", "+trainer.check_val_every_n_epoch=20",
        "+trainer.enable_progress_bar=false", "~callbacks.progress_bar", "trainer.log_every_n_steps=5",
    ]  # fmt: skip
    metrics = train_cli(overrides, run)
    assert metrics["pck_final_stage"] >= 0.9, metrics
