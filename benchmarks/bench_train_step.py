"""Training images/s of the paper's 6-stage CPM at 368x368: ours versus plain eager fp32 NCHW.

"ours" is what conf/trainer/gpu.yaml + channels_last=true run: bf16 autocast (GPU only; CPUs
without bf16 units only get slower) and channels_last; "ours+compile" adds torch.compile. Both
variants run in this one process on the same device, so their ratio is meaningful; on a GPU
the MFU is achieved training FLOP/s over the card's dense bf16 peak.

    python benchmarks/bench_train_step.py [--device cuda] [--batch 16] [--steps 20]
        [--variants baseline,ours,ours+compile]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import (
    H100_BF16_DENSE_TFLOPS,
    PAPER_INPUT,
    RESULTS_DIR,
    machine,
    paper_model,
    pick_device,
    random_batch,
    seconds_per_call,
    training_flops_per_image,
    training_step_fn,
    write_result,
)


def measure(variant: str, device: torch.device, batch: int, warmup: int, steps: int, input_size: int) -> dict:
    channels_last = variant != "baseline"
    bf16 = variant != "baseline" and device.type == "cuda"
    torch.manual_seed(0)
    model = paper_model(device, channels_last=channels_last)
    if variant == "ours+compile":
        model = torch.compile(model)
    image, target = random_batch(batch, device, channels_last, input_size)
    step = training_step_fn(model, image, target, bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(step, device, warmup, steps)
    result = {"variant": variant, "channels_last": channels_last, "bf16": bf16, "batch": batch}
    result.update(steps=steps, seconds_per_step=seconds, images_per_s=batch / seconds)
    result["achieved_tflops"] = batch / seconds * training_flops_per_image(input_size) / 1e12
    if device.type == "cuda":
        result["mfu"] = result["achieved_tflops"] / H100_BF16_DENSE_TFLOPS
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"{variant:>13}: {result['images_per_s']:8.2f} images/s, {result['achieved_tflops']:.3f} TFLOP/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on GPU, 2 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 on GPU, 1 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 20 on GPU, 2 on CPU")
    parser.add_argument(
        "--variants", default="baseline,ours", help="comma-separated, baseline first: baseline, ours, ours+compile"
    )
    parser.add_argument("--input", type=int, default=PAPER_INPUT, help="input size; < 368 only for smoke runs")
    parser.add_argument("--name", default="train_step", help="results/<name>.json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (16 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    steps = args.steps or (20 if gpu else 2)
    if gpu:
        torch.backends.cudnn.benchmark = True
    variants = args.variants.split(",")
    assert variants[0] == "baseline" and set(variants) <= {"baseline", "ours", "ours+compile"}, args.variants
    results = [measure(v, device, batch, warmup, steps, args.input) for v in variants]
    baseline = results[0]["images_per_s"]
    for r in results:
        r["speedup_vs_baseline"] = r["images_per_s"] / baseline
    record = {
        "benchmark": f"training step, paper CPM (6 stages, 14 parts), {args.input}x{args.input}",
        "baseline": "the same network, eager fp32 NCHW",
        "training_gflop_per_image": training_flops_per_image(args.input) / 1e9,
        "peak_tflops_for_mfu": H100_BF16_DENSE_TFLOPS if gpu else None,
        "machine": machine(device),
        "results": results,
    }
    write_result(args.name, record, args.out_dir)


if __name__ == "__main__":
    main()
