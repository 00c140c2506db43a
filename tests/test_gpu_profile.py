"""benchmarks/gpu_profile.py is what a GPU lease runs at once, with no time to debug it: run it
here on the CPU at tiny sizes and check the JSON that docs/scaling.md tells the reader to read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_gpu_profile(out, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO / "src")])}
    command = [sys.executable, "benchmarks/gpu_profile.py", "--device", "cpu", "--tiny", "--out", str(out), *args]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return json.loads((out / "gpu_profile.json").read_text())


def check_eager_steps_and_profile(record: dict) -> None:
    names = [v["name"] for v in record["variants"]]
    assert names[:3] == ["today: trainer=gpu channels_last=true", "+ cudnn.benchmark", "+ fused SGD"]
    assert any(n.startswith("cost: + the non-finite guard") for n in names)
    for variant in record["variants"][:5]:
        result = variant["result"]
        assert result["images_per_s"] > 0 and set(result["phases_ms"]) >= {"forward", "loss", "backward", "optimizer"}
    assert record["variants"][0]["kept"] and record["best"]["images_per_s"] > 0
    profile = record["profile"]
    assert profile["top_kernels"] and all(k["ms_per_step"] > 0 for k in profile["top_kernels"])
    # Every conv of the tiny model's first stage, by layer, forward and backward, with its FLOP rate.
    layers = {(c["layer"], c["pass"]) for c in profile["convs"]}
    assert ("3x3 conv 3->8 at 64x64", "forward") in layers and ("3x3 conv 3->8 at 64x64", "backward") in layers
    assert all(c["tflops"] > 0 for c in profile["convs"])
    assert 0 <= profile["host_gaps"]["idle_fraction"] < 1 and profile["host_gaps"]["kernels"] > 0


def test_gpu_profile_eager_part_and_memory_on_cpu(tmp_path):
    record = run_gpu_profile(tmp_path, "--parts", "memory")
    check_eager_steps_and_profile(record)
    assert record["profile"]["of"] == record["best"]["name"]  # no compiled step: the eager one is profiled
    assert (tmp_path / record["profile"]["trace"]).stat().st_size > 0
    assert (tmp_path / "gpu_profile_kernels.txt").read_text().strip()
    assert record["memory"]["checkpointed_images_per_s"] > 0 and record["batch_sizes"]["rows"][0]["images_per_s"] > 0
    assert record["trainer"] == [] and record["inductor_cache"] == {"skipped": "no compiled variant ran"}


@pytest.mark.slow
def test_gpu_profile_end_to_end_on_cpu(tmp_path):
    """Every part at tiny sizes: compile and its profile, the four Trainer runs against the
    micro-benchmark, the compile modes (CUDA graphs skipped on a CPU), the Inductor cache."""
    record = run_gpu_profile(tmp_path, "--budget-s", "600")
    check_eager_steps_and_profile(record)
    compiled = next(v for v in record["variants"] if v["name"] == "+ compile (default)")
    assert compiled["result"]["compile_s"] > 0 and record["profile"]["of"] == "+ compile (default)"
    names = [run["name"] for run in record["trainer"]]
    assert any(n.endswith("without the non-finite guard") for n in names), names
    assert any(n.endswith("without the progress bar") for n in names), names
    for run in record["trainer"]:
        assert run["result"]["images_per_s"] > 0 and run["ratio_vs_micro"] > 0, run
    skipped = {v["name"]: v.get("skipped") for v in record["variants"]}
    assert skipped["+ compile (reduce-overhead)"] == "CUDA graphs need a GPU"
    cache = record["inductor_cache"]
    assert all((tmp_path / name).stat().st_size > 0 for name in cache["files"])
