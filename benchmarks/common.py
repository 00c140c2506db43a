"""Shared by the benchmarks: the paper model, one training step, timing and the JSON record.

Imports only torch and the model/loss files of cpm_lightning, so benchmarks/gpu_check.sh runs on
a bare GPU machine (torch, lightning, h5py, numpy) without Hydra, albumentations or W&B.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cpm_lightning.losses import stage_losses
from cpm_lightning.models.cpm import CPM, CPMConfig, forward_flops

PAPER_INPUT = 368
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM and H200, dense bf16 tensor-core peak
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def paper_model(device: torch.device, channels_last: bool = False, checkpoint_stages: bool = False) -> CPM:
    """The released 6-stage, 14-part CPM (31.2 M parameters) in train mode."""
    model = CPM(checkpoint_stages=checkpoint_stages).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def random_batch(
    batch: int, device: torch.device, channels_last: bool = False, input_size: int = PAPER_INPUT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised random crops (368x368 unless a smoke run asks for less) and random targets."""
    image = torch.randn(batch, 3, input_size, input_size, device=device) / 4
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    size = input_size // CPMConfig().stride
    return image, torch.rand(batch, CPMConfig().num_parts + 1, size, size, device=device)


def training_step_fn(
    model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor, bf16: bool
) -> Callable[[], torch.Tensor]:
    """One SGD step with the summed per-stage losses of the paper (what a training step does)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
            beliefs = model(image)
        loss = stage_losses(beliefs, target).sum()
        loss.backward()
        optimizer.step()
        return loss

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Mean wall time of `repeats` calls after `warmup` untimed ones (GPU work included)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def training_flops_per_image(input_size: int = PAPER_INPUT) -> float:
    """~3 x forward (forward + backward of activations and weights) of the paper model."""
    return 3.0 * forward_flops(CPMConfig(), input_size)


def machine(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    info["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_result(name: str, result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
