"""Overhead of the GradientHistograms callback at its default frequency, as a ratio of step time.

Baseline: the same real Trainer run (same config, data and seed) without the callback, in the same
process, alternated with the measured run so that drift in machine load hits both alike.
Two numbers, both against the baseline's median step time:
- end-to-end: median step time with the callback / without (noisy on a shared machine);
- amortised: the measured time of one recording x (1 / every_n_steps) / baseline step time
  (the callback costs nothing on the other steps), the number the 5% target is judged on.

    python benchmarks/bench_gradient_histograms.py [--steps 20] [--repeats 2] [--stages 6] [--trainer gpu]

Writes benchmarks/results/gradient_histograms.json (gradient_histograms_gpu.json with
--trainer gpu). Needs data/synthetic (`make data`) or --data-dir pointing at a root holding
synthetic/. On a GPU every timed interval starts and ends with a device synchronisation, so
asynchronous kernels are charged to the step (or the recording) that launched them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cpm_lightning.callbacks.gradient_histograms import GradientHistograms
from cpm_lightning.train import CONFIG_DIR, build

TARGET = 0.05
RESULTS = Path(__file__).resolve().parent / "results" / "gradient_histograms.json"


def synchronized_clock() -> float:
    """perf_counter after the GPU (if any) has finished the work queued so far."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(L.Callback):
    """Wall time of every training step (forward, backward, optimiser step and hooks)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = synchronized_clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(synchronized_clock() - self._start)


class TimedGradientHistograms(GradientHistograms):
    """The real callback, with the time of each recording call measured."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_seconds: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        records = trainer.global_step % self.every_n_steps == 0
        start = synchronized_clock() if records else 0.0
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if records:
            self.record_seconds.append(synchronized_clock() - start)


def timed_run(args, output_dir: Path, histograms: TimedGradientHistograms | None) -> list[float]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"model.num_stages={args.stages}", "trainer.max_epochs=1", f"+trainer.limit_train_batches={args.steps}",
                "+trainer.limit_val_batches=0", "+trainer.enable_progress_bar=false", "data.num_workers=0",
                "+trainer.enable_checkpointing=false", "+trainer.enable_model_summary=false", "logger=csv",
                f"trainer={args.trainer}",
            ],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(args.data_dir)
        cfg.callbacks = None  # the measured callbacks are added below, nothing else
    L.seed_everything(0, workers=True)
    module, datamodule, trainer = build(cfg)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    if histograms is not None:
        trainer.callbacks.append(histograms)
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds[1:]  # the first step includes one-off warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternated pairs of runs")
    parser.add_argument("--stages", type=int, default=6, help="CPM stages (6: the Figure 5 model)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--trainer", default="cpu", help="trainer config: cpu or gpu (bf16, as conf/trainer/gpu.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/gradient_histograms[_gpu].json")
    args = parser.parse_args()
    suffix = "" if args.trainer == "cpu" else f"_{args.trainer}"
    out = args.out or RESULTS.with_name(f"gradient_histograms{suffix}.json")

    every_n_steps = GradientHistograms().every_n_steps  # the callback's default frequency
    baseline, measured, record_seconds = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            baseline += timed_run(args, Path(tmp) / f"baseline{repeat}", None)
            histograms = TimedGradientHistograms(every_n_steps=every_n_steps, output_dir=f"{tmp}/g{repeat}", plot=False)
            measured += timed_run(args, Path(tmp) / f"measured{repeat}", histograms)
            record_seconds += histograms.record_seconds

    step = statistics.median(baseline)
    amortised = statistics.median(record_seconds) / every_n_steps / step
    result = {
        "benchmark": "gradient_histograms",
        "baseline": "the same Trainer run without the GradientHistograms callback, alternated in one process",
        "device": torch.cuda.get_device_name(0) if args.trainer == "gpu" else "cpu",
        "trainer": f"conf/trainer/{args.trainer}.yaml",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": f"conf/model/cpm_small with {args.stages} stages on conf/data/synthetic (its batch size)",
        "every_n_steps": every_n_steps,
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "baseline_step_ms_median": 1000 * step,
        "with_callback_step_ms_median": 1000 * statistics.median(measured),
        "end_to_end_ratio": statistics.median(measured) / step,
        "record_ms_median": 1000 * statistics.median(record_seconds),
        "recordings": len(record_seconds),
        "amortised_overhead": amortised,
        "target_overhead": TARGET,
        "meets_target": amortised <= TARGET,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
