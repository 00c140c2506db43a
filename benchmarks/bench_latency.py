"""Inference latency per image at batch 1: single scale versus the release's 7-scale test.

The 7-scale test (cpm-release run_benchmark.m) runs the network on the image scaled by
0.7, 0.8, ..., 1.3, each padded or cropped back to 368x368 around the centre, upsamples each
last-stage belief map x8 (bicubic), undoes the scaling and sums the maps over scales.

    python benchmarks/bench_latency.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import PAPER_INPUT, machine, paper_model, pick_device, seconds_per_call, write_result

SCALES = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]


def fit_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-pad (with 0, the normalised grey) or centre-crop a square image to size x size."""
    excess = image.shape[-1] - size
    if excess > 0:
        start = excess // 2
        return image[..., start : start + size, start : start + size]
    before = -excess // 2
    return F.pad(image, (before, -excess - before, before, -excess - before))


def multi_scale_beliefs(model: torch.nn.Module, image: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Last-stage belief maps summed over scales, at the input resolution."""
    size = image.shape[-1]
    total = torch.zeros(1, model.config.num_parts + 1, size, size, device=image.device)
    for scale in scales:
        scaled_size = round(size * scale)
        scaled = F.interpolate(image, size=(scaled_size, scaled_size), mode="bilinear", align_corners=False)
        beliefs = model(fit_to(scaled, size))[:, -1]
        beliefs = F.interpolate(beliefs, scale_factor=model.stride, mode="bicubic", align_corners=False)
        total += F.interpolate(fit_to(beliefs, scaled_size), size=(size, size), mode="bicubic", align_corners=False)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 on GPU, 2 on CPU")
    parser.add_argument("--input", type=int, default=PAPER_INPUT, help="input size; < 368 only for smoke runs")
    args = parser.parse_args()
    device = pick_device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 2)
    model = paper_model(device).eval()
    image = torch.randn(1, 3, args.input, args.input, device=device) / 4
    results = []
    with torch.inference_mode():
        for name, scales in (("single_scale", [1.0]), ("seven_scales", SCALES)):
            seconds = seconds_per_call(lambda s=scales: multi_scale_beliefs(model, image, s), device, 1, repeats)
            results.append({"test": name, "scales": scales, "ms_per_image": 1000 * seconds})
            print(f"{name:>13}: {1000 * seconds:9.1f} ms per image")
    record = {
        "benchmark": f"inference latency, batch 1, paper CPM (6 stages), {args.input}x{args.input}, fp32",
        "repeats": repeats,
        "machine": machine(device),
        "results": results,
    }
    write_result(f"latency_{device.type}", record)


if __name__ == "__main__":
    main()
