"""`python -m cpm_lightning.reproduce [--mode quick|full] [--data synthetic|lsp]`: the paper's analyses.

Runs the experiment sweeps of Figures 4, 5, 6b and 6c (conf/experiment/*, as Hydra multiruns of
`cpm_lightning.train`, exactly what a user would launch) under one training budget (plus the
per-figure overrides in BUDGETS, which the report names), then writes REPORT.md with tables
(mean and spread over seeds) and PNG plots.

- quick: tiny runs of every sweep (one seed, a few batches, fewer sweep points); proves the
  machinery in a couple of minutes on 2 CPU cores. No verdicts.
- full: every sweep point, 2 seeds, equal total epochs within each figure; each of the paper's
  claims gets PASS or FAIL against a threshold fixed here, in CLAIMS, and written into the report
  before the first run starts.

On real data (`--data lsp`: LSP for Figures 5, 6b, 6c and FLIC at 304 px for Figure 4) the same
command runs the lsp_*/flic_* experiments; give the real budget with `--override`, e.g.
`--override trainer.max_epochs=60 --override trainer.devices=8`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from cpm_lightning.callbacks.gradient_histograms import FILE_NAME, GradientHistogramRecord, plot_histogram_grid
from cpm_lightning.errors import UserFacingError

REPO = Path(__file__).resolve().parents[2]


# -- what runs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    experiments: dict[str, str]  # --data -> experiment config
    group_by: str  # the swept quantity that names a table row


FIGURES = (
    Figure("fig4", "Figure 4: accuracy vs receptive field",
           {"synthetic": "synthetic_rf_sweep", "lsp": "flic_rf_sweep"}, "receptive field (px)"),
    Figure("fig5", "Figure 5: gradient magnitude at depth",
           {"synthetic": "synthetic_gradients", "lsp": "lsp_gradients"}, "scheme"),
    Figure("fig6b", "Figure 6b: training schemes", {"synthetic": "synthetic_schemes", "lsp": "lsp_schemes"}, "scheme"),
    Figure("fig6c", "Figure 6c: number of stages", {"synthetic": "synthetic_stages_sweep", "lsp": "lsp_stages_sweep"},
           "stages"),
)  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """Hydra overrides of every run, plus per-figure ones (the quick mode drops sweep points)."""

    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    per_figure: dict[str, tuple[str, ...]] = field(default_factory=dict)
    judged: bool = True


# Validation runs once, after the last epoch, on the first `limit_val_batches` x 64 validation
# crops (the same crops for every run): on 2 cores a validation pass costs as much as many steps.
def _steps(epochs: int, train_batches: int, val_batches: int, batch_size: int) -> tuple[str, ...]:
    return (
        f"trainer.max_epochs={epochs}",
        f"+trainer.limit_train_batches={train_batches}",
        f"+trainer.limit_val_batches={val_batches}",
        "+trainer.check_val_every_n_epoch=${trainer.max_epochs}",
        f"data.batch_size={batch_size}",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "~callbacks.progress_bar",
    )


BUDGETS = {
    "synthetic": {
        "quick": Budget(
            seeds=(0,),
            overrides=(*_steps(epochs=2, train_batches=2, val_batches=1, batch_size=8), "data.num_workers=0"),
            per_figure={
                "fig4": ("model=rf_synthetic_109,rf_synthetic_237",),
                "fig5": ("model.num_stages=3", "callbacks.gradient_histograms.every_n_steps=1"),
                "fig6b": ("model.num_stages=2", "trainer.max_epochs=3"),
                "fig6c": ("model.num_stages=1,2",),
            },
            judged=False,
        ),
        # 36 runs of 10 epochs x 24 batches of 16 (stage-wise: 6 phases; finetune: 7), those of Figures
        # 6b and 6c of 20 epochs; about 2.5 hours on 2 CPU cores (the report has the measured time of
        # each figure). At 120 steps a 6-stage model reached only 25.5% PCK, barely trained; at 240 a
        # one-seed trial gave 24.4% for 1 stage and 36.0% for 3, but the 4- to 6-stage models were
        # still under-trained (3 -> 4 stages lost 1.3 points, the 4-stage seeds 5 points apart).
        "full": Budget(
            seeds=(0, 1),
            overrides=_steps(epochs=10, train_batches=24, val_batches=4, batch_size=16),
            per_figure={
                "fig5": ("callbacks.gradient_histograms.every_n_steps=2",),
                "fig6b": ("trainer.max_epochs=20",),
                "fig6c": ("trainer.max_epochs=20",),
            },
        ),
    },
    # Real data: the experiment configs' own epochs; the caller adds the budget with --override.
    "lsp": {
        "quick": Budget(
            seeds=(0,), overrides=_steps(epochs=1, train_batches=2, val_batches=1, batch_size=4), judged=False
        ),  # fmt: skip
        "full": Budget(seeds=(0, 1), overrides=()),
    },
}


# -- the claims and their thresholds, fixed before any run ----------------------------------------
CLAIMS = {
    "fig4": "Accuracy rises with the receptive field and saturates: PCK at the largest field >= PCK at the "
    "smallest + 3 points, and the gain over the upper half of the field range (middle -> largest) is at most "
    "half the gain over the lower half (smallest -> middle).",
    "fig5": "With intermediate supervision the layer farthest from the output gets clearly larger gradients "
    "early in training: in the first epoch its RMS gradient with joint training >= 2x its RMS without "
    "intermediate supervision (mean of seeds).",
    "fig6b": "Joint training with intermediate supervision beats stage-wise by >= 2 points; fine-tuning "
    "recovers >= 50% of that gap; no intermediate supervision is the worst or within 2 points of the worst.",
    "fig6c": "Accuracy rises with stages up to about 5: PCK(3 stages) >= PCK(1 stage) + 5 points (the "
    "central claim), PCK(5) >= PCK(1) + 5 points, and no step from t to t + 1 stages (t < 5) loses > 1 point.",
}
RISE_POINTS, SATURATION_FRACTION = 3.0, 0.5
GRADIENT_RATIO = 2.0
JOINT_OVER_STAGEWISE_POINTS, FINETUNE_RECOVERY, NO_INTERMEDIATE_SLACK_POINTS = 2.0, 0.5, 2.0
CENTRAL_GAP_POINTS, STAGE_STEP_TOLERANCE_POINTS = 5.0, 1.0


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Run:
    directory: Path
    seed: int
    scheme: str
    num_stages: int
    receptive_field: int  # of the final stage, input px
    pck_by_stage: list[float]  # percent
    minutes: float  # wall clock, from the run's config to its metrics file

    @property
    def pck(self) -> float:
        return self.pck_by_stage[-1]


def load_runs(sweep_dir: Path) -> list[Run]:
    runs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        config_file = metrics_file.parent / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_file)
        metrics = json.loads(metrics_file.read_text())
        runs.append(
            Run(
                directory=metrics_file.parent,
                seed=int(config.seed),
                scheme=str(config.scheme.name),
                num_stages=int(config.model.num_stages),
                receptive_field=int(metrics["stages"][-1]["receptive_field_px"]),
                pck_by_stage=[100.0 * s["pck"] for s in metrics["stages"]],
                minutes=(metrics_file.stat().st_mtime - config_file.stat().st_mtime) / 60,
            )
        )
    return runs


def group_key(figure: Figure, run: Run) -> str | int:
    return {"fig4": run.receptive_field, "fig6c": run.num_stages}.get(figure.key, run.scheme)


@dataclass
class Summary:
    """Mean and spread (half the range) over seeds of one value."""

    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def spread(self) -> float:
        return float(np.ptp(self.values) / 2)

    def __str__(self) -> str:
        seeds = ", ".join(f"{v:.1f}" for v in self.values)
        return f"{self.mean:.1f} ± {self.spread:.1f} ({seeds})"


def summarise(figure: Figure, runs: list[Run]) -> dict[str | int, Summary]:
    groups: dict[str | int, list[float]] = {}
    for run in runs:
        groups.setdefault(group_key(figure, run), []).append(run.pck)
    order = sorted(groups) if figure.key in ("fig4", "fig6c") else list(groups)
    return {key: Summary(groups[key]) for key in order}


def first_epoch_rms(runs: list[Run]) -> dict[str, dict[int, Summary]]:
    """scheme -> depth -> RMS gradient in the first epoch, over seeds."""
    table: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        record = GradientHistogramRecord.load(run.directory / "gradients" / FILE_NAME)
        for depth, rms in zip(record.depths, record.rms[0]):
            table.setdefault(run.scheme, {}).setdefault(int(depth), []).append(float(rms))
    return {scheme: {d: Summary(v) for d, v in depths.items()} for scheme, depths in table.items()}


# -- verdicts --------------------------------------------------------------------------------------
def verdict(figure: Figure, summary: dict, runs: list[Run]) -> tuple[bool, str]:
    """(passed, the numbers) for the figure's claim in CLAIMS."""
    if figure.key == "fig4":
        fields = list(summary)
        smallest, middle, largest = (summary[fields[i]].mean for i in (0, len(fields) // 2, -1))
        lower, upper = middle - smallest, largest - middle
        passed = largest - smallest >= RISE_POINTS and upper <= SATURATION_FRACTION * max(lower, 0.0)
        return passed, (
            f"PCK {smallest:.1f} at {fields[0]} px, {middle:.1f} at {fields[len(fields) // 2]} px, {largest:.1f} at "
            f"{fields[-1]} px: rise {largest - smallest:+.1f} (needs >= {RISE_POINTS}), upper-half gain {upper:+.1f} "
            f"vs lower-half gain {lower:+.1f} (needs <= {SATURATION_FRACTION}x)"
        )
    if figure.key == "fig5":
        rms = first_epoch_rms(runs)
        far = max(rms["joint"])
        joint, plain = rms["joint"][far].mean, rms["no_intermediate"][far].mean
        ratio = joint / plain
        return ratio >= GRADIENT_RATIO, (
            f"first-epoch RMS gradient at depth {far}: joint {joint:.3g}, no_intermediate {plain:.3g}, "
            f"ratio {ratio:.2f} (needs >= {GRADIENT_RATIO})"
        )
    if figure.key == "fig6b":
        pck = {scheme: s.mean for scheme, s in summary.items()}
        gap = pck["joint"] - pck["stagewise"]
        recovered = (pck["finetune"] - pck["stagewise"]) / gap if gap > 0 else float("nan")
        worst_other = min(v for k, v in pck.items() if k != "no_intermediate")
        passed = (
            gap >= JOINT_OVER_STAGEWISE_POINTS
            and recovered >= FINETUNE_RECOVERY
            and pck["no_intermediate"] <= worst_other + NO_INTERMEDIATE_SLACK_POINTS
        )
        return passed, (
            f"PCK joint {pck['joint']:.1f}, stagewise {pck['stagewise']:.1f}, finetune {pck['finetune']:.1f}, "
            f"no_intermediate {pck['no_intermediate']:.1f}: joint - stagewise {gap:+.1f} (needs >= "
            f"{JOINT_OVER_STAGEWISE_POINTS}), finetune recovers {recovered:.0%} (needs >= {FINETUNE_RECOVERY:.0%}), "
            f"no_intermediate vs worst other {pck['no_intermediate'] - worst_other:+.1f} (needs <= "
            f"{NO_INTERMEDIATE_SLACK_POINTS})"
        )
    pck = {t: s.mean for t, s in summary.items()}
    steps = [pck[t + 1] - pck[t] for t in range(1, 5)]
    passed = (
        pck[3] - pck[1] >= CENTRAL_GAP_POINTS
        and pck[5] - pck[1] >= CENTRAL_GAP_POINTS
        and min(steps) >= -STAGE_STEP_TOLERANCE_POINTS
    )
    return passed, (
        f"PCK by stages {', '.join(f'{t}: {v:.1f}' for t, v in pck.items())}; 3 - 1 = {pck[3] - pck[1]:+.1f}, "
        f"5 - 1 = {pck[5] - pck[1]:+.1f} (need >= {CENTRAL_GAP_POINTS}); worst step {min(steps):+.1f} (needs >= "
        f"{-STAGE_STEP_TOLERANCE_POINTS})"
    )


# -- plots -----------------------------------------------------------------------------------------
def plot_figure(figure: Figure, summary: dict, runs: list[Run], out_dir: Path) -> list[Path]:
    """The figure's PNG(s) in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if figure.key == "fig5":
        by_scheme = {run.scheme: run.directory / "gradients" / FILE_NAME for run in runs if run.seed == runs[0].seed}
        return [plot_histogram_grid(by_scheme, out_dir / "fig5_gradients.png")]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if figure.key == "fig6b":  # PCK per stage for each scheme, as the paper plots it
        for scheme in summary:
            per_stage = np.array([r.pck_by_stage for r in runs if r.scheme == scheme])
            stages = np.arange(1, per_stage.shape[1] + 1)
            ax.errorbar(stages, per_stage.mean(0), yerr=np.ptp(per_stage, 0) / 2, marker="o", capsize=3, label=scheme)
        ax.set_xlabel("stage")
        ax.legend(fontsize=8)
    else:
        keys = list(summary)
        ax.errorbar(keys, [s.mean for s in summary.values()], yerr=[s.spread for s in summary.values()],
                    marker="o", capsize=3)  # fmt: skip
        ax.set_xlabel(figure.group_by)
    ax.set_ylabel("PCK (%)")
    ax.set_title(figure.title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / f"{figure.key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# -- running ---------------------------------------------------------------------------------------
def run_sweep(figure: Figure, data: str, budget: Budget, data_dir: Path, out_dir: Path, extra: list[str]) -> Path:
    """One Hydra multirun of the figure's experiment; returns its sweep directory."""
    sweep_dir = out_dir / "runs" / figure.key
    log = out_dir / "logs" / f"{figure.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "cpm_lightning.train", "-m", f"+experiment={figure.experiments[data]}",
        f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}", f"paths.data_dir={data_dir}",
        f"seed={','.join(map(str, budget.seeds))}", *budget.overrides, *budget.per_figure.get(figure.key, ()), *extra,
    ]  # fmt: skip
    with log.open("w") as stream:
        stream.write(" ".join(command) + "\n\n")
        stream.flush()
        result = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-8:])
        raise UserFacingError(
            f"The {figure.title} sweep (+experiment={figure.experiments[data]}) failed with exit code "
            f"{result.returncode}; its full log is {log}. Fix what it reports (for a missing data set, make it "
            f"first, e.g. `make data`) and rerun. Last lines:\n{tail}"
        )
    return sweep_dir


def write_report(path: Path, mode: str, data: str, budget: Budget, sections: list[str]) -> None:
    header = [
        f"# Reproduction report: {mode} mode, {data} data",
        "",
        f"Made by `python -m cpm_lightning.reproduce --mode {mode} --data {data}`. Seeds: "
        f"{', '.join(map(str, budget.seeds))}. Every run of a figure has the same budget (Hydra overrides: "
        f"`{' '.join(budget.overrides) or 'the experiment configs as they are'}`). PCK is the validation PCK of "
        "the final stage (per stage for Figure 6b), in percent: mean ± half the range over seeds (per-seed values).",
        "",
        "## Claims and thresholds (fixed in code before the runs)",
        "",
        *(f"- **{key}**: {text}" for key, text in CLAIMS.items()),
        "",
        "Verdicts: "
        + (
            "PASS or FAIL per claim below."
            if budget.judged
            else "none in quick mode (it proves the machinery; its runs are too short to judge)."
        ),  # fmt: skip
        "",
    ]
    path.write_text("\n".join(header + sections) + "\n")


def figure_section(
    figure: Figure, summary: dict, runs: list[Run], plots: list[Path], judged: bool, budget_overrides: tuple = ()
) -> str:
    lines = [f"## {figure.title}", ""]
    if budget_overrides:
        lines += [f"Overrides for this figure, after the budget above: `{' '.join(budget_overrides)}`.", ""]
    lines += [f"| {figure.group_by} | PCK (%) |", "|---|---|"]
    lines += [f"| {key} | {s} |" for key, s in summary.items()]
    if figure.key == "fig5":
        rms = first_epoch_rms(runs)
        schemes = list(rms)
        lines += ["", "First-epoch RMS gradient by depth from the output:", "",
                  f"| depth | {' | '.join(schemes)} |", "|---|" + "---|" * len(schemes)]  # fmt: skip
        for depth in sorted(rms[schemes[0]], reverse=True):
            cells = " | ".join(f"{rms[s][depth].mean:.3g} ± {rms[s][depth].spread:.2g}" for s in schemes)
            lines.append(f"| {depth} | {cells} |")
    lines += ["", *(f"![{figure.key}]({p.name})" for p in plots), ""]
    if judged:
        passed, numbers = verdict(figure, summary, runs)
        lines += [f"**{'PASS' if passed else 'FAIL'}**: {numbers}.", ""]
        print(f"{figure.key}: {'PASS' if passed else 'FAIL'}: {numbers}")
    return "\n".join(lines)


def reproduce(
    mode: str, data: str, data_dir: Path, out_dir: Path, extra: list[str], only: list[str] | None = None
) -> Path:
    """Run every figure's sweep (or only those in `only`, reading the others' runs from an earlier
    call with the same out_dir; `only=[]` runs none and rewrites the report) and write
    out_dir/REPORT.md."""
    budget = BUDGETS[data][mode]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "REPORT.md"
    write_report(report, mode, data, budget, ["Runs in progress."])  # the thresholds, before any run
    sections = []
    for figure in FIGURES:
        if only is not None and figure.key not in only:
            runs = load_runs(out_dir / "runs" / figure.key)
            if not runs:
                raise UserFacingError(
                    f"--only / --report-only reuse earlier runs, but {out_dir / 'runs' / figure.key} holds "
                    f"none: run without them first (or add {figure.key} to --only)."
                )
            print(f"{figure.title}: reusing {len(runs)} runs in {out_dir / 'runs' / figure.key}", flush=True)
        else:
            print(f"{figure.title}: running +experiment={figure.experiments[data]} ...", flush=True)
            runs = load_runs(run_sweep(figure, data, budget, data_dir, out_dir, extra))
        summary = summarise(figure, runs)
        plots = plot_figure(figure, summary, runs, out_dir)
        minutes = sum(run.minutes for run in runs)
        section = figure_section(figure, summary, runs, plots, budget.judged, budget.per_figure.get(figure.key, ()))
        sections.append(f"{section}\n_{len(runs)} runs, {minutes:.1f} min._\n")
        write_report(report, mode, data, budget, sections)
    print(f"report: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument("--mode", choices=("quick", "full"), default="quick")
    parser.add_argument("--data", choices=tuple(BUDGETS), default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CPM_DATA_DIR", "data")))
    parser.add_argument("--out", type=Path, help="output directory (default: outputs/reproduce/<data>_<mode>)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for every run")
    parser.add_argument(
        "--only", nargs="+", choices=[f.key for f in FIGURES],
        help="run only these figures' sweeps; the report reads the others from an earlier run in --out",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="run nothing; rewrite REPORT.md from --out's runs")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs") / "reproduce" / f"{args.data}_{args.mode}"
    try:
        only = [] if args.report_only else args.only
        reproduce(args.mode, args.data, args.data_dir.resolve(), out.resolve(), args.override, only)
    except UserFacingError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
