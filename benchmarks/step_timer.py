"""StepTimer: training images/s of a real Trainer run over a window of steps, written to JSON.

Added to a run from the command line (benchmarks/ on PYTHONPATH):

    PYTHONPATH=benchmarks python -m cpm_lightning.train ... +trainer.max_steps=60 \\
        +callbacks.step_timer._target_=step_timer.StepTimer +callbacks.step_timer.out=timer.json

The window opens at the end of step `skip` (compilation, worker start-up and cuDNN's search
fall before it) and closes at the end of the last step of the run, so it holds everything a
training step costs the user (loading, logging, callbacks, the optimiser) and nothing after
training. Time is synchronised with the GPU at both ends only: a sync per step would itself
remove the host's run-ahead that the measurement must see. Validation inside the window is
timed apart (`validation_s`) and left out of the images/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepTimer(L.Callback):
    def __init__(self, out: str, skip: int = 10):
        self.out = Path(out)
        self.skip = skip
        self.start = self.opened = None
        self.images = self.validation_s = 0.0
        self.steps = 0
        self._validation_start = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = _now(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self.opened = _now(pl_module.device)
        elif self.opened is not None:
            self.images += batch["image"].shape[0]
            self.steps += 1
            if trainer.global_step >= trainer.max_steps > 0:  # the last step: close the window
                self._close(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.opened is not None and trainer.state.fn == "fit":
            self._validation_start = _now(pl_module.device)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self.validation_s += _now(pl_module.device) - self._validation_start
            self._validation_start = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.out.exists():  # a run that ended by epochs, not max_steps
            self._close(trainer, pl_module)

    def _close(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = _now(pl_module.device)
        if self.opened is None or self.steps == 0:
            raise RuntimeError(f"StepTimer: the run ended before step {self.skip} + 1; raise max_steps")
        seconds = end - self.opened - self.validation_s
        record = {
            "skipped_steps": self.skip,
            "seconds_to_first_window_step": self.opened - self.start,  # compile, worker start-up
            "timed_steps": self.steps,
            "images": self.images,
            "seconds": seconds,
            "validation_s": self.validation_s,
            "images_per_s": self.images / seconds,
            "precision": str(trainer.precision),
            "device": str(pl_module.device),
            "threads": torch.get_num_threads(),
        }
        if pl_module.device.type == "cuda":
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            partial = self.out.with_suffix(".partial")
            partial.write_text(json.dumps(record, indent=2))
            partial.replace(self.out)  # whole or absent: timed_train stops the run once it appears


def timed_train(
    overrides: list[str], run_dir: Path, skip: int, steps: int, timeout: float, env: dict | None = None
) -> dict:
    """Run `python -m cpm_lightning.train OVERRIDES` for skip + steps steps with a StepTimer;
    {"result": the timer's record, "wall_s": seconds to it}, or {"error": the end of its output}."""
    here = Path(__file__).resolve().parent
    timer = run_dir / "timer.json"
    command = [
        sys.executable, "-m", "cpm_lightning.train", *overrides, f"+trainer.max_steps={skip + steps}",
        f"hydra.run.dir={run_dir}", "+callbacks.step_timer._target_=step_timer.StepTimer",
        f"+callbacks.step_timer.out={timer}", f"+callbacks.step_timer.skip={skip}",
    ]  # fmt: skip
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here), str(here.parent / "src"), env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    # The record is complete once the timer has written it: stop the run there (SIGTERM, as a
    # scheduler would), sparing its final validation, which a compiled run compiles first.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=here.parent, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        while process.poll() is None and not timer.exists() and time.monotonic() - start < timeout:
            time.sleep(0.5)
        wall = time.monotonic() - start
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.seek(0)
        output = log.read()
    if not timer.exists():
        why = f"did not finish within {timeout:.0f} s" if wall >= timeout else "the run ended without a record"
        return {"error": f"{why}:\n{output[-3000:]}", "wall_s": wall}
    return {"result": json.loads(timer.read_text()), "wall_s": wall}
