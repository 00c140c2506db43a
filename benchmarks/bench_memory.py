"""Peak memory per sample of the paper CPM at 368x368, training and inference, with and
without per-stage activation checkpointing.

GPU: torch.cuda.max_memory_allocated at the requested batch (default 16), measured.
CPU: the peak resident set size of a fresh process per measurement at batch 1 and 2; the
growth from 1 to 2 is the memory per sample, and batch 16 is extrapolated linearly from it.
CPU numbers are ESTIMATES of GPU memory (the CPU kernels keep other workspaces), labelled so.

    python benchmarks/bench_memory.py [--device cuda] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import PAPER_INPUT, machine, paper_model, pick_device, random_batch, training_step_fn, write_result

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]
CASES = [("train", False), ("train", True), ("inference", False)]


def run_case(mode: str, checkpoint: bool, batch: int, device: torch.device, input_size: int = PAPER_INPUT) -> int:
    """Bytes added at the peak of one training step (or forward) over the model's own memory."""
    torch.manual_seed(0)
    model = paper_model(device, checkpoint_stages=checkpoint)
    image, target = random_batch(batch, device, input_size=input_size)
    if mode == "train":
        work = training_step_fn(model, image, target, bf16=device.type == "cuda")
    else:
        model.eval()

        def work() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(image)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    work()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def cpu_case_in_fresh_process(mode: str, checkpoint: bool, batch: int, input_size: int) -> int:
    """ru_maxrss only grows, so every CPU measurement needs its own process."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import torch; from bench_memory import run_case; "
        f"print(run_case({mode!r}, {checkpoint}, {batch}, torch.device('cpu'), {input_size}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16, help="the batch reported (measured on GPU)")
    parser.add_argument("--input", type=int, default=PAPER_INPUT, help="input size; < 368 only for smoke runs")
    args = parser.parse_args()
    device = pick_device(args.device)
    weights = sum(p.numel() * p.element_size() for p in paper_model(torch.device("cpu")).parameters())
    results = []
    for mode, checkpoint in CASES:
        if device.type == "cuda":
            peak = run_case(mode, checkpoint, args.batch, device, args.input)
            per_sample = peak / args.batch
            row = {"measured_at_batch": args.batch, "estimated": False}
        else:
            one, two = (cpu_case_in_fresh_process(mode, checkpoint, b, args.input) for b in (1, 2))
            per_sample = two - one
            peak = one + (args.batch - 1) * per_sample
            row = {"measured_at_batch": [1, 2], "estimated": True}
        # Training holds weights, gradients and SGD momentum (3 x weights); inference the weights.
        total = peak + weights
        row.update(mode=mode, activation_checkpointing=checkpoint, per_sample_mib=per_sample / MIB)
        row.update(batch=args.batch, total_gib=total / 2**30)
        print(json.dumps(row))
        results.append(row)
    record = {
        "benchmark": f"peak memory, paper CPM (6 stages, 14 parts), {args.input}x{args.input}",
        "method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "CPU peak RSS at batch 1 and 2, extrapolated linearly: an estimate of GPU memory",
        "weights_mib": weights / MIB,
        "machine": machine(device),
        "results": results,
    }
    write_result(f"memory_{device.type}", record)


if __name__ == "__main__":
    main()
