"""Gradient-magnitude histograms at depth: the paper's Figure 5 as a Lightning callback.

Figure 5 shows, epoch by epoch, how the gradients of conv layers far from the output collapse
towards zero without intermediate supervision and keep a wide spread with it. This callback
records the same thing for any run:

- which layers: the convs on the longest path image -> stage 1 -> stage 2 -> ... -> output,
  each named by its depth from the output (the last conv is depth 1). By default the first conv
  of every stage and the last conv of the network; `depths` picks others.
- when: in `on_before_optimizer_step`, every `every_n_steps` optimiser steps. There the
  gradients are final: unscaled under mixed precision, already all-reduced under DDP (so rank 0
  alone records them).
- what: a histogram of log10 |gradient| over fixed bins (one bin layout fits every run, so epochs
  and runs add up and overlay), plus the sum of squares, giving the spread (RMS) exactly. Both are
  accumulated on the device; the host reads them once per epoch (no per-parameter syncs).
- where: per epoch, to W&B as `wandb.Histogram`s keyed `gradients/depth_NN` at the trainer step
  (offline works), the RMS as scalars to every logger, and, whatever the logger,
  `<output_dir>/gradient_histograms.npz` (all epochs so far) and at the end of training a PNG grid
  like Figure 5 (rows = depth, columns = epoch). `plot_histogram_grid` overlays several runs,
  e.g. with and without intermediate supervision:

    python -m cpm_lightning.callbacks.gradient_histograms joint.npz no_intermediate.npz \
        --labels joint no_intermediate --out figure5.png
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from cpm_lightning.errors import ConfigError, DataFileError

FILE_NAME = "gradient_histograms.npz"
FIGURE_NAME = "gradient_histograms.png"
# |g| below 1e-12 lands in the first bin, above 1e4 in the last: wide enough for the paper's
# summed Euclidean loss and for mean-reduced losses alike. Exact zeros (dead ReLUs, unused
# weights) are counted apart so that they do not hide the shape of the distribution.
DEFAULT_LOG10_RANGE = (-12.0, 4.0)


def belief_path_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The convs on the path image -> stage 1 -> refine of stage 2 -> ... -> output, input first.

    The shared trunk and the per-stage 5x5 feature convs sit on shorter side branches, so the
    longest path (the one gradients must travel without intermediate supervision) is this one.
    """
    blocks = [("stage1", model.stage1)] + [(f"stages.{i}.refine", s.refine) for i, s in enumerate(model.stages)]
    return [
        (f"{prefix}.{name}", module)
        for prefix, block in blocks
        for name, module in block.named_modules()
        if isinstance(module, nn.Conv2d)
    ]


def default_depths(model: nn.Module) -> list[int]:
    """Depths of the first conv of every stage and of the last conv, far from the output first."""
    convs = belief_path_convs(model)
    first_of_stage = [0] + [i for i, (name, _) in enumerate(convs) if name.endswith("refine.0")]
    return sorted({len(convs) - i for i in first_of_stage} | {1}, reverse=True)


@dataclass
class GradientHistogramRecord:
    """What one run recorded: per epoch and depth, a log10|g| histogram and the sum of squares."""

    depths: np.ndarray  # (D,) depth from the output, 1 = last conv
    layer_names: np.ndarray  # (D,) names inside the CPM, e.g. "stage1.trunk.0"
    bin_edges: np.ndarray  # (B + 1,) in log10 |gradient|
    epochs: np.ndarray  # (E,)
    global_steps: np.ndarray  # (E,) trainer step at the end of each epoch
    counts: np.ndarray  # (E, D, B) non-zero gradient values per bin
    num_zeros: np.ndarray  # (E, D) gradient values exactly zero
    sum_squares: np.ndarray  # (E, D)
    num_values: np.ndarray  # (E, D) gradient values recorded (weights x recorded steps)
    label: str = ""

    @property
    def rms(self) -> np.ndarray:
        """(E, D) root mean square gradient: the spread of the distribution (NaN if not recorded)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.sum_squares / self.num_values)

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees a half-written file."""
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, **{k: np.asarray(v) for k, v in vars(self).items()})
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path) -> GradientHistogramRecord:
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
            fields["label"] = str(fields["label"])
            return cls(**fields)
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise DataFileError(
                f"{path} is not a gradient histogram file ({error}). It is written by the "
                f"GradientHistograms callback as {FILE_NAME} in the run's gradients/ directory; "
                "pass that file, or rerun with callbacks=gradients."
            ) from error


class GradientHistograms(L.Callback):
    """Records gradient-magnitude histograms of conv layers by depth from the output (Figure 5).

    every_n_steps: record at optimiser steps 0, N, 2N, ...; aggregated per epoch.
    depths: depths from the output to record (1 = last conv); None = first conv of each stage + last.
    output_dir: where the npz and the PNG go (default: <trainer.default_root_dir>/gradients).
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        depths: Sequence[int] | None = None,
        num_bins: int = 128,
        log10_range: Sequence[float] = DEFAULT_LOG10_RANGE,
        output_dir: str | None = None,
        plot: bool = True,
    ):
        if every_n_steps < 1:
            raise ConfigError(f"GradientHistograms every_n_steps={every_n_steps} is invalid: use an integer >= 1.")
        self.every_n_steps = every_n_steps
        self.requested_depths = list(depths) if depths is not None else None
        self.bin_edges = np.linspace(*map(float, log10_range), num_bins + 1)
        self.output_dir = output_dir
        self.plot = plot
        self.layers: list[tuple[int, str, nn.Parameter]] = []  # (depth, name, conv weight)
        self.history: list[dict[str, np.ndarray | int]] = []

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        convs = belief_path_convs(pl_module.model)
        by_depth = {len(convs) - i: (name, conv.weight) for i, (name, conv) in enumerate(convs)}
        depths = self.requested_depths or default_depths(pl_module.model)
        unknown = [d for d in depths if d not in by_depth]
        if unknown:
            raise ConfigError(
                f"GradientHistograms depths {unknown} do not exist: this model has convs at depths 1.."
                f"{len(convs)} from the output. Set callbacks.gradient_histograms.depths within that range."
            )
        self.layers = [(d, *by_depth[d]) for d in sorted(depths, reverse=True)]
        self.history = []
        root = Path(self.output_dir or Path(trainer.default_root_dir) / "gradients")
        self.directory = root

    def _reset_accumulators(self, device: torch.device) -> None:
        num_layers, num_bins = len(self.layers), len(self.bin_edges) - 1
        self._counts = torch.zeros(num_layers, num_bins + 1, dtype=torch.long, device=device)  # + zeros
        self._sum_squares = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self._num_values = torch.zeros(num_layers, dtype=torch.long, device=device)
        self._inner_edges = torch.as_tensor(self.bin_edges[1:-1], dtype=torch.float32, device=device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset_accumulators(pl_module.device)

    # -- recording (on the device, no host syncs) -----------------------------------------------
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not trainer.is_global_zero or trainer.global_step % self.every_n_steps:
            return
        for i, (_, _, weight) in enumerate(self.layers):
            if weight.grad is None:  # a frozen stage (stage-wise training) has no gradient
                continue
            gradient = weight.grad.detach().flatten().float()
            # Out-of-range values land in the end bins; exact zeros in one extra bin past the end.
            bins = torch.bucketize(gradient.abs().log10(), self._inner_edges)
            bins = torch.where(gradient == 0, self._counts.shape[1] - 1, bins)
            self._counts[i] += torch.bincount(bins, minlength=self._counts.shape[1])
            self._sum_squares[i] += gradient.double().square().sum()
            self._num_values[i] += gradient.numel()

    # -- per epoch: one host read, then the logs and the npz ------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epoch = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "counts": self._counts.cpu().numpy(),  # the last column counts exact zeros
            "sum_squares": self._sum_squares.cpu().numpy(),
            "num_values": self._num_values.cpu().numpy(),
        }
        self.history.append(epoch)
        record = self.record(label=getattr(getattr(pl_module, "scheme", None), "name", ""))
        self.directory.mkdir(parents=True, exist_ok=True)
        record.save(self.directory / FILE_NAME)
        self._log(trainer, record)

    def record(self, label: str = "") -> GradientHistogramRecord:
        """Everything recorded so far as one record (the npz layout)."""
        return GradientHistogramRecord(
            depths=np.array([d for d, _, _ in self.layers]),
            layer_names=np.array([name for _, name, _ in self.layers]),
            bin_edges=self.bin_edges,
            epochs=np.array([e["epoch"] for e in self.history]),
            global_steps=np.array([e["global_step"] for e in self.history]),
            counts=np.stack([e["counts"][:, :-1] for e in self.history]),
            num_zeros=np.stack([e["counts"][:, -1] for e in self.history]),
            sum_squares=np.stack([e["sum_squares"] for e in self.history]),
            num_values=np.stack([e["num_values"] for e in self.history]),
            label=label,
        )

    def _log(self, trainer: L.Trainer, record: GradientHistogramRecord) -> None:
        step = trainer.global_step
        latest_rms = record.rms[-1]
        scalars = {f"gradients/rms_depth_{d:02d}": float(r) for d, r in zip(record.depths, latest_rms) if r == r}
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                import wandb

                histograms = {
                    f"gradients/depth_{d:02d}": wandb.Histogram(np_histogram=(counts, record.bin_edges))
                    for d, counts in zip(record.depths, record.counts[-1])
                    if counts.sum()
                }
                logger.log_metrics({**histograms, "epoch": trainer.current_epoch}, step=step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.plot and self.history:
            plot_histogram_grid({"": self.directory / FILE_NAME}, self.directory / FIGURE_NAME)


# -- the Figure 5 grid ------------------------------------------------------------------------------
def _columns(epochs: np.ndarray, max_columns: int) -> list[int]:
    """Indices of at most `max_columns` epochs, evenly spread, first and last included."""
    if len(epochs) <= max_columns:
        return list(range(len(epochs)))
    return sorted({int(round(i)) for i in np.linspace(0, len(epochs) - 1, max_columns)})


def plot_histogram_grid(
    runs: Mapping[str, str | Path | GradientHistogramRecord], out: str | Path, max_columns: int = 6
) -> Path:
    """PNG grid like Figure 5: rows = depth (far from the output on top), columns = epoch.

    `runs` maps a label to an npz file (or record); several runs are overlaid in each cell, e.g.
    {"joint": ..., "no_intermediate": ...}. They must record the same depths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {label: r if isinstance(r, GradientHistogramRecord) else GradientHistogramRecord.load(r)
               for label, r in runs.items()}  # fmt: skip
    first = next(iter(records.values()))
    for label, record in records.items():
        if not np.array_equal(record.depths, first.depths):
            raise ConfigError(
                f"Cannot overlay gradient histograms: run {label!r} recorded depths {record.depths.tolist()}, "
                f"the first run {first.depths.tolist()}. Record the same depths (same model) in both runs."
            )
    columns = _columns(first.epochs, max_columns)
    centres = (first.bin_edges[:-1] + first.bin_edges[1:]) / 2
    occupied = np.flatnonzero(sum(r.counts.sum(axis=(0, 1)) for r in records.values()))
    x_range = (centres[occupied[0]] - 0.5, centres[occupied[-1]] + 0.5) if len(occupied) else None

    rows = len(first.depths)
    figure, axes = plt.subplots(
        rows, len(columns), figsize=(2.4 * len(columns) + 1, 1.5 * rows + 1), squeeze=False, sharex=True
    )
    for row, (depth, name) in enumerate(zip(first.depths, first.layer_names)):
        for col, e in enumerate(columns):
            ax = axes[row, col]
            for label, record in records.items():
                if e >= len(record.epochs) or not record.counts[e, row].sum():
                    continue
                density = record.counts[e, row] / record.counts[e, row].sum()
                ax.step(centres, density, where="mid", label=f"{label} rms {record.rms[e, row]:.1e}".strip())
            if x_range:
                ax.set_xlim(*x_range)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=5, frameon=False, loc="upper left")
            if row == 0:
                ax.set_title(f"epoch {first.epochs[e] + 1}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"depth {depth}\n{name}", fontsize=7)
            if row == rows - 1:
                ax.set_xlabel("log10 |gradient|", fontsize=7)
    figure.suptitle("Gradient magnitude by depth from the output (rows) and epoch (columns)", fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot (and overlay) gradient histogram files as a Figure 5 grid.")
    parser.add_argument("files", nargs="+", type=Path, help=f"{FILE_NAME} files of one or more runs")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: the runs' scheme names)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--max-columns", type=int, default=6, help="epochs shown (evenly spread)")
    args = parser.parse_args(argv)
    records = [GradientHistogramRecord.load(f) for f in args.files]
    labels = args.labels or [r.label or f.parent.parent.name for r, f in zip(records, args.files)]
    if len(labels) != len(records):
        parser.error(f"--labels has {len(labels)} entries for {len(records)} files")
    print(plot_histogram_grid(dict(zip(labels, records)), args.out, args.max_columns))


if __name__ == "__main__":
    main()
