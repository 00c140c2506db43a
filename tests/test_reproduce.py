"""`python -m cpm_lightning.reproduce`: the quick mode end to end, the verdicts, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cpm_lightning.reproduce import CLAIMS, FIGURES, Summary, verdict

REPO = Path(__file__).resolve().parents[1]
FIGURE = {f.key: f for f in FIGURES}


def reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpm_lightning.reproduce", *args], cwd=REPO, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_mode_runs_every_figure_and_writes_the_report(data_dir, tmp_path):
    result = reproduce("--mode", "quick", "--data-dir", str(data_dir), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    for text in CLAIMS.values():  # the thresholds are in the report
        assert text in report
    assert "none in quick mode" in report and "PASS" not in report and "FAIL" not in report
    for figure in FIGURES:
        assert f"## {figure.title}" in report
    rows = ("| 109 |", "| 237 |", "| joint |", "| no_intermediate |", "| stagewise |", "| finetune |", "| 1 |", "| 2 |")
    for row in rows:  # the quick mode's sweep points: RFs, schemes, stage counts
        assert row in report, row
    assert "First-epoch RMS gradient by depth" in report
    assert "Overrides for this figure, after the budget above: `model.num_stages=1,2`." in report
    for png in ("fig4.png", "fig5_gradients.png", "fig6b.png", "fig6c.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png
        assert f"({png})" in report
    # each figure is a real Hydra multirun of its experiment
    assert len(list((tmp_path / "runs" / "fig6b").glob("*/metrics.json"))) == 4
    assert len(list((tmp_path / "runs" / "fig5").glob("*/gradients/gradient_histograms.npz"))) == 2

    # --only reruns one figure and reads the others' runs from this directory
    fig4_metrics = sorted((tmp_path / "runs" / "fig4").glob("*/metrics.json"))
    before = {path: path.stat().st_mtime_ns for path in fig4_metrics}
    rerun = reproduce("--mode", "quick", "--data-dir", str(data_dir), "--out", str(tmp_path), "--only", "fig6c")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reusing 2 runs" in rerun.stdout
    assert {path: path.stat().st_mtime_ns for path in fig4_metrics} == before
    assert all(f"## {figure.title}" in (tmp_path / "REPORT.md").read_text() for figure in FIGURES)
    rewritten = reproduce("--mode", "quick", "--data-dir", str(data_dir), "--out", str(tmp_path), "--report-only")
    assert rewritten.returncode == 0 and rewritten.stdout.count("reusing") == len(FIGURES), rewritten.stderr[-3000:]


def test_a_failing_sweep_names_its_log_and_stops(tmp_path):
    result = reproduce("--mode", "quick", "--data-dir", str(tmp_path / "no_data"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "out" / "logs" / "fig4.log") in result.stderr
    assert "synthetic_rf_sweep" in result.stderr
    # the thresholds were written before the failed run
    assert CLAIMS["fig6c"] in (tmp_path / "out" / "REPORT.md").read_text()


def test_only_without_earlier_runs_says_what_to_do(data_dir, tmp_path):
    result = reproduce("--mode", "quick", "--data-dir", str(data_dir), "--out", str(tmp_path), "--only", "fig5")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'runs' / 'fig4'} holds none" in result.stderr and "run without them first" in result.stderr


def summaries(values: dict) -> dict:
    return {key: Summary([v, v]) for key, v in values.items()}


def test_verdicts_follow_the_thresholds():
    rises_and_saturates = summaries({69: 40.0, 93: 50.0, 117: 56.0, 165: 58.0, 205: 58.5})
    assert verdict(FIGURE["fig4"], rises_and_saturates, [])[0]
    keeps_rising = summaries({69: 40.0, 93: 41.0, 117: 42.0, 165: 50.0, 205: 60.0})
    assert not verdict(FIGURE["fig4"], keeps_rising, [])[0]

    paper = summaries({"joint": 60.0, "stagewise": 50.0, "finetune": 58.0, "no_intermediate": 49.0})
    passed, numbers = verdict(FIGURE["fig6b"], paper, [])
    assert passed and "joint - stagewise +10.0" in numbers and "80%" in numbers
    no_recovery = summaries({"joint": 60.0, "stagewise": 50.0, "finetune": 52.0, "no_intermediate": 49.0})
    assert not verdict(FIGURE["fig6b"], no_recovery, [])[0]

    stages = summaries({1: 30.0, 2: 38.0, 3: 41.0, 4: 42.0, 5: 42.5, 6: 42.0})
    assert verdict(FIGURE["fig6c"], stages, [])[0]
    small_gap = summaries({1: 30.0, 2: 32.0, 3: 34.0, 4: 36.0, 5: 38.0, 6: 38.0})
    passed, numbers = verdict(FIGURE["fig6c"], small_gap, [])
    assert not passed and "3 - 1 = +4.0" in numbers


def test_summary_reports_mean_spread_and_seeds():
    assert str(Summary([40.0, 44.0])) == "42.0 ± 2.0 (40.0, 44.0)"
