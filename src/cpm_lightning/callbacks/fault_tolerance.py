"""Faults lose nothing: non-finite losses, preemption signals and exact resumption.

What Lightning 2.6 already does, and what this callback adds on top of it:

- SIGTERM: Lightning's signal connector sets `trainer.received_sigterm`; the loops finish the
  current batch and raise `SIGTERMException`, but nothing is saved (only SLURM auto-requeue
  saves an "hpc" checkpoint, on SIGUSR1). `on_exception` saves `last.ckpt` here, mid-epoch if
  need be, so `ckpt_path=last` continues from the very batch where the job stopped. Only an
  interrupted fit saves: during a later `trainer.validate` the model holds other weights (the
  best checkpoint's), and `last.ckpt` already holds the end of training. The exception is a
  bare `SystemExit` (status 0); `cpm_lightning.train` turns it into exit status 143.
- SIGUSR1 (what `sbatch --signal=USR1@90` sends before the time limit): Lightning handles it
  only under SLURM auto-requeue; otherwise its default action kills the process. Here it is
  turned into SIGTERM, so the path above applies.
- A non-finite loss or gradient stops training before the optimiser step, so the weights and
  `last.ckpt` stay those of the last good step; a checkpoint with non-finite weights is never
  written.
- Exact resumption: dropout is the only randomness in a training step, so its generator is
  seeded from (seed, global step, rank) before every step; with augmentation drawn from (seed,
  epoch, index) by the data pipeline, a resumed run replays exactly what an uninterrupted one
  does, whatever consumed random numbers in between (sanity checks, worker start-up).
- A run resumed into a new output directory keeps the best-checkpoint bookkeeping of the run
  it continues (Lightning drops it when the checkpoint directory changes), so "best" means best
  over the whole run and the old files are left where they are.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from cpm_lightning.errors import ConfigError, UserFacingError


class NonFiniteLossError(UserFacingError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the message names where and why."""


def step_seed(seed: int, global_step: int, rank: int) -> int:
    """A 63-bit seed that depends on (seed, step, rank) only, well mixed by SeedSequence."""
    state = np.random.SeedSequence([seed, global_step, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where `last.ckpt` of this run lives: the ModelCheckpoint's folder, else <root>/checkpoints."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        folder, name = Path(callback.dirpath), callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
    else:
        folder, name = Path(trainer.default_root_dir) / "checkpoints", "last.ckpt"
    return folder / name


def resume_position(trainer: L.Trainer) -> tuple[int, int]:
    """(epoch, batches of it already trained on) where the restored training loop continues.

    Read from Lightning's restored loop progress: `ready` counts the batches fetched in the
    checkpoint's epoch; a checkpoint written after the epoch's last batch (at its end) means the
    next epoch, from its start. A fresh run gives (0, 0).
    """
    loop = trainer.fit_loop
    batches = loop.epoch_loop.batch_progress
    epoch = loop.epoch_progress.current.completed
    if batches.is_last_batch:
        return epoch + 1, 0
    return epoch, batches.current.ready


class FaultTolerance(L.Callback):
    """Stops on non-finite values, checkpoints on SIGTERM / SIGUSR1, makes resumption exact.

    seed: the run's seed (the per-step dropout seed derives from it).
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._loss: torch.Tensor | None = None
        self._previous_sigusr1 = None

    # -- non-finite values -----------------------------------------------------------------
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()  # checked with the gradients below: one device sync per step

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        checks = [torch.isfinite(self._loss).all()] if self._loss is not None else []
        # fp16 mixed precision: the gradient scaler skips steps with inf gradients by design.
        if trainer.precision not in ("16-mixed", "16"):
            checks += [torch.isfinite(p.grad).all() for p in pl_module.parameters() if p.grad is not None]
        if checks and not bool(torch.stack(checks).all()):
            raise NonFiniteLossError(self._non_finite_message(trainer, optimizer))

    def _non_finite_message(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> str:
        loss = float(self._loss) if self._loss is not None else math.nan
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"a gradient is not finite (loss {loss:.4g})"
        last = last_checkpoint_path(trainer)
        kept = f"the last good checkpoint is kept at {last}" if last.exists() else "no checkpoint had been saved yet"
        lr = optimizer.param_groups[0]["lr"]
        return (
            f"Training stopped at epoch {trainer.current_epoch}, global step {trainer.global_step}: {what}. "
            f"The step was not applied, and {kept}. Likely causes: a learning rate too high for this model "
            f"(current lr {lr:.3g}: lower optim.lr), an overflow in reduced precision (trainer.precision="
            f"{trainer.precision}: try 32-true), or corrupt data (check the files with `python -m data_prep "
            f"verify FILE`). Fix the cause, then resume with ckpt_path=last or start afresh."
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:  # raising here stops Lightning before it writes the file
            raise NonFiniteLossError(
                f"Refusing to write a checkpoint at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}: weights {', '.join(bad[:3])} are not finite. The previous checkpoints "
                f"in {last_checkpoint_path(trainer).parent} are kept; resume from one with a lower optim.lr."
            )

    # -- exact resumption --------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_step, trainer.global_rank))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # ModelCheckpoint restores its best-k bookkeeping only when its folder is unchanged; a
        # resumed run writes to a new Hydra output folder, so point the stored state at it.
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            state = checkpoint.get("callbacks", {}).get(callback.state_key)
            if state is not None:
                state["dirpath"] = callback.dirpath

    # -- preemption ----------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            # `estimated_stepping_batches` (the one-cycle schedule) makes Lightning build and
            # start iterating the training loader before it restores the checkpoint; drop that
            # loader so that the loop asks the datamodule again, which now knows where to resume.
            # Private attributes: Lightning has no public way to drop a loader it already built
            # (checked against Lightning 2.6.6).
            trainer.fit_loop._data_fetcher.teardown()
            trainer.fit_loop._combined_loader = None
        # Lightning has registered its handlers by now, and handles SIGUSR1 only under SLURM
        # auto-requeue (it saves and requeues the job). A SIGUSR1 nobody handles would kill the
        # process unsaved: make it a SIGTERM. A handler already there is left alone.
        in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
        if in_main_thread and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, _forward_to_sigterm)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # on every rank: the strategy writes once
        rank_zero_info(
            f"Stopped by a signal at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
            f"saved {path}. Resume with ckpt_path={path} (or ckpt_path=last from the same experiment)."
        )


def _forward_to_sigterm(signum: int, frame) -> None:
    signal.raise_signal(signal.SIGTERM)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path, search_siblings: bool = True) -> str | None:
    """The checkpoint a run resumes from (see docs/reliability.md):

    - None: a fresh run.
    - "last": <output_dir>/checkpoints/last.ckpt if it exists (a run resumed in its own folder),
      otherwise, with `search_siblings`, the newest */checkpoints/last.ckpt among the other runs of
      this experiment (the folders next to output_dir: outputs/NAME/*). Nothing found means a
      fresh start, announced, so the same command serves the first submission and its requeues.
    - a run folder: its checkpoints/last.ckpt; a file: that file.
    """
    if ckpt_path is None:
        return None
    output_dir = Path(output_dir)
    if str(ckpt_path) == "last":
        own = output_dir / "checkpoints" / "last.ckpt"
        candidates = [own] if own.is_file() else []
        if not candidates and search_siblings:
            candidates = sorted(output_dir.parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            where = f"{own}" + (f" or {output_dir.parent}/*/checkpoints/last.ckpt" if search_siblings else "")
            rank_zero_info(f"ckpt_path=last: no checkpoint at {where}; starting from scratch.")
            return None
        rank_zero_info(f"ckpt_path=last: resuming from {candidates[-1]}")
        return str(candidates[-1])
    path = Path(ckpt_path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return str(candidate)
        raise ConfigError(
            f"ckpt_path={ckpt_path} is a folder without checkpoints/last.ckpt or last.ckpt: give a run folder "
            f"(outputs/NAME/DATE_TIME), a .ckpt file, or ckpt_path=last."
        )
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist: give a .ckpt file, a run folder (outputs/NAME/DATE_TIME) or "
            f"ckpt_path=last (the newest run of this experiment)."
        )
    return str(path)
