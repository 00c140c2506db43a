"""End-to-end sanity on real pixels: a small CPM fits the converted real LSP/LSPET crops.

If labels, flips or crops were misaligned with the image content, a network could not reach
near-perfect PCK on the very crops it trains on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from data_prep.__main__ import main as data_prep
from tests.real_samples import real_samples


@pytest.mark.slow
def test_small_cpm_fits_the_real_lsp_samples(tmp_path):
    data = tmp_path / "lsp"
    argv = ["lsp", "--lsp-root", str(real_samples("lsp")), "--lspet-root", str(real_samples("lspet"))]
    assert data_prep([*argv, "--out", str(data), "--on-error", "skip", "--workers", "2"]) == 0
    train = str(data / "train.h5")
    run = tmp_path / "run"
    overrides = [
        "data=lsp", f"data.train_files=[{train}]", f"data.val_file={train}", "data.input_size=128",
        "data.augment.photometric=false", "data.augment.scale_min=0.9", "data.augment.scale_max=1.1",
        "data.augment.max_rotation=10", "data.augment.flip_probability=0.5", "data.sigma=14",
        "data.batch_size=4", "data.num_workers=0", "model=cpm_small", "model.dropout=0.0", "optim=adam",
        "optim.lr=2e-3", "trainer.max_epochs=120", "+trainer.check_val_every_n_epoch=20",
        "+trainer.enable_progress_bar=false", "~callbacks.progress_bar", "trainer.log_every_n_steps=5",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "cpm_lightning.train", *overrides], cwd=REPO,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pck_final_stage"] >= 0.9, metrics
