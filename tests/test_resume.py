"""Faults lose nothing: SIGTERM saves a checkpoint and exits with status 143, a resumed run ends
exactly where an uninterrupted one does (stage-wise, interrupted mid-phase, colour jitter on), a
NaN stops training cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, TINY
from lightning.pytorch.utilities.exceptions import SIGTERMException

# Deterministic, 3 stage-wise phases of 3 batches, no sanity pass: 9 optimiser steps in all.
# Photometric augmentation on: its random draws must replay on resume like the geometric ones.
STAGEWISE = [*TINY, "scheme=stagewise", "trainer.max_epochs=3", "trainer.deterministic=true",
             "+trainer.num_sanity_val_steps=0", "data.num_workers=1", "data.augment.photometric=true"]  # fmt: skip

SIGTERM_AT_STEP = """
import os, signal, sys
from pathlib import Path

import lightning as L
from cpm_lightning import train as entry

class Preempt(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGTERM)

build = entry.build
def build_with_preemption(cfg):
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(Preempt())
    return module, datamodule, trainer
entry.build = build_with_preemption
sys.argv = ["train", *{overrides!r}]
entry.main()
"""


def run(overrides: list[str], code: str | None = None) -> subprocess.CompletedProcess:
    args = ["-c", code] if code else ["-m", "cpm_lightning.train", *overrides]
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONHASHSEED": "0"})  # fmt: skip


@pytest.mark.slow
def test_sigterm_mid_phase_saves_and_resume_matches_an_uninterrupted_run(tmp_path, data_dir):
    common = [*STAGEWISE, f"paths.data_dir={data_dir}"]
    whole = run([*common, f"hydra.run.dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]

    # Step 4 is the first batch of epoch 1: stage-wise phase 2, mid-epoch.
    code = SIGTERM_AT_STEP.format(step=4, overrides=[*common, f"hydra.run.dir={tmp_path / 'cut'}"])
    cut = run([], code)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert last.exists(), cut.stderr[-3000:]
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-3000:]  # stopped, not finished: 143
    assert not (tmp_path / "cut" / "metrics.json").exists()
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 4 and saved["scheme"]["phase_index"] == 1

    resumed = run([*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    actual = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert actual["global_step"] == expected["global_step"] == 9
    assert actual["stages"] == expected["stages"]  # every stage's loss and PCK, exactly
    final = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    reference = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(final[k], reference[k]) for k in reference)


class SignalAt(L.Callback):
    """Sends this process a signal at the end of one training or validation batch."""

    def __init__(self, signum: int, train_step: int | None = None, validation_batch: int | None = None):
        self.signum, self.train_step, self.validation_batch = signum, train_step, validation_batch

    def _send(self) -> None:
        # Unhandled, SIGTERM or SIGUSR1 would kill the test process itself: fail instead.
        assert signal.getsignal(self.signum) is not signal.SIG_DFL, f"nothing handles signal {self.signum}"
        os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.train_step:
            self._send()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.validation_batch:
            self._send()


def test_sigusr1_outside_slurm_requeue_saves_like_sigterm(tiny_config):
    from cpm_lightning.train import build

    module, datamodule, trainer = build(tiny_config("+trainer.num_sanity_val_steps=0"))
    trainer.callbacks.append(SignalAt(signal.SIGUSR1, train_step=1))
    with pytest.raises(SIGTERMException):
        trainer.fit(module, datamodule=datamodule)
    last = torch.load(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)
    assert last["global_step"] == 1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored after training


def test_sigterm_in_the_final_validation_leaves_last_ckpt_alone(tiny_config):
    from cpm_lightning.train import build

    module, datamodule, trainer = build(tiny_config("+trainer.num_sanity_val_steps=0", "data.eval_batch_size=8"))
    trainer.fit(module, datamodule=datamodule)
    last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
    written = last.stat().st_mtime_ns
    # train.py validates the best checkpoint: the model then holds its weights, not the last ones.
    trainer.callbacks.append(SignalAt(signal.SIGTERM, validation_batch=0))  # of 2: Lightning stops after it
    with pytest.raises(SIGTERMException):
        trainer.validate(module, datamodule=datamodule, ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert last.stat().st_mtime_ns == written


class PoisonAt(L.Callback):
    """Makes the loss non-finite at one step by poisoning a weight before the forward pass."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.model.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_config):
    from cpm_lightning.callbacks.fault_tolerance import NonFiniteLossError
    from cpm_lightning.train import build

    cfg = tiny_config("trainer.max_epochs=2", "+trainer.num_sanity_val_steps=0")
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.append(PoisonAt(step=4))
    with pytest.raises(NonFiniteLossError, match="step 4") as error:
        trainer.fit(module, datamodule=datamodule)
    assert "epoch 1" in str(error.value)
    last = torch.load(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3  # the end of epoch 0, the last good state
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
