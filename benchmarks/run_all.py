"""`make bench`: run every benchmark, write benchmarks/results/*.json, print the README table.

    python benchmarks/run_all.py [--device cuda] [--input 368]

Each benchmark runs in its own process (clean peak-memory and thread state). On a CPU the
defaults are small (batch 2, 2 timed steps) so the whole run takes minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run(script: str, *args: str) -> None:
    print(f"$ {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def markdown_table(device: str) -> str:
    train = json.loads((RESULTS / "train_step.json").read_text())
    memory = json.loads((RESULTS / f"memory_{device}.json").read_text())
    latency = json.loads((RESULTS / f"latency_{device}.json").read_text())
    where = train["machine"].get("gpu") or f"CPU ({train['machine']['cpu']}, {train['machine']['threads']} threads)"
    rows = [f"Measured on {where}, torch {train['machine']['torch']}; {train['benchmark']}.", ""]
    rows += ["| benchmark | result |", "|---|---|"]
    for r in train["results"]:
        mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
        rows.append(
            f"| training, {r['variant']} (batch {r['batch']}) | {r['images_per_s']:.2f} images/s "
            f"(x{r['speedup_vs_baseline']:.2f} vs eager fp32 NCHW){mfu} |"
        )
    label = "estimated from CPU peak RSS" if memory["results"][0]["estimated"] else "measured"
    for r in memory["results"]:
        ckpt = ", activation checkpointing" if r["activation_checkpointing"] else ""
        rows.append(
            f"| memory, {r['mode']}{ckpt} | {r['per_sample_mib']:.0f} MiB/sample; "
            f"{r['total_gib']:.1f} GiB at batch {r['batch']} ({label}) |"
        )
    for r in latency["results"]:
        rows.append(f"| latency, batch 1, {r['test'].replace('_', ' ')} | {r['ms_per_image']:.1f} ms/image |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--input", default="368", help="input size; < 368 only for smoke runs")
    args = parser.parse_args()
    common = ["--device", args.device, "--input", args.input]
    run("bench_train_step.py", *common)
    run("bench_memory.py", *common)
    run("bench_latency.py", *common)
    run("bench_loader.py")  # data loading: our HDF5 crops vs decoding the source JPEG per sample
    device = json.loads((RESULTS / "train_step.json").read_text())["machine"]["device"]
    table = markdown_table(device)
    (RESULTS / "README_table.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
