"""The efficiency switches change speed and memory, never the numbers: the CPM has no
BatchNorm, so accumulation and activation checkpointing reproduce the plain gradients, and
channels_last reproduces the outputs, to float tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from cpm_lightning.models.cpm import CPM
from cpm_lightning.train import build
from tests.conftest import REPO

# A 3-stage CPM small enough for exact comparisons in a fraction of a second.
TINY_CPM = dict(
    num_stages=3, num_pools=2, trunk_channels=8, trunk_kernel=3, feature_channels=4, stage1_channels=16,
    stage1_kernel=3, stage_channels=8, stage_kernel=5, stage_layers=2, init="kaiming",
)  # fmt: skip


def gradients(model: CPM, image: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks for both runs
    beliefs = model(image)
    beliefs.pow(2).sum().backward()
    # torch.compile wraps the model as `_orig_mod`; the names stay those of the eager model.
    return beliefs.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


def assert_same_gradients(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float) -> None:
    """Relative to each tensor's norm: summation order (memory layout, recomputation) moves
    single elements of a gradient of magnitude ~1e3 by ~1e-4 absolute, ~1e-7 relative."""
    for name, grad in expected.items():
        error = (actual[name] - grad).norm() / grad.norm()
        assert error < tol, f"{name}: relative error {error:.2e}"


def test_activation_checkpointing_reproduces_plain_gradients():
    torch.manual_seed(0)
    plain = CPM(**TINY_CPM, dropout=0.5).train()
    checkpointed = CPM(**TINY_CPM, dropout=0.5, checkpoint_stages=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 32, 32)
    out_plain, grads_plain = gradients(plain, image)
    out_ckpt, grads_ckpt = gradients(checkpointed, image)
    # Dropout is re-run in backward: the RNG state is restored, so the masks are the same.
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert_same_gradients(grads_ckpt, grads_plain, tol=1e-6)


def test_channels_last_reproduces_outputs_and_gradients():
    torch.manual_seed(0)
    nchw = CPM(**TINY_CPM, dropout=0.0).train()
    nhwc = CPM(**TINY_CPM, dropout=0.0).train()
    nhwc.load_state_dict(nchw.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    image = torch.randn(2, 3, 32, 32)
    out_nchw, grads_nchw = gradients(nchw, image)
    out_nhwc, grads_nhwc = gradients(nhwc, image.contiguous(memory_format=torch.channels_last))
    assert nhwc.stage1.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_nhwc, out_nchw, rtol=1e-5, atol=1e-6)
    assert_same_gradients(grads_nhwc, grads_nchw, tol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    model = CPM(**TINY_CPM, dropout=0.0).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(image)
    assert low.dtype == torch.bfloat16
    relative = (low.float() - reference).norm() / reference.norm()
    assert relative < 2e-2  # bf16 has 8 mantissa bits: ~0.4% per op


def first_update(tiny_config, *overrides: str, optim: str = "paper") -> dict[str, torch.Tensor]:
    """The parameter change of one real optimiser step of the Trainer (SGD unless `optim` says
    otherwise, no dropout, same initial weights) on the first 8 samples of the epoch."""
    cfg = tiny_config(
        f"optim={optim}", "optim.scheduler.name=none", "optim.lr=1e-3", "model.dropout=0", "trainer.max_epochs=1",
        "+trainer.max_steps=1", "trainer.limit_val_batches=0", "~logger", "~callbacks.model_checkpoint", *overrides,
    )  # fmt: skip
    L.seed_everything(0)  # the same initial weights in every call
    module, datamodule, trainer = build(cfg)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    return {n: p.detach() - before[n] for n, p in module.model.named_parameters()}


def test_gradient_accumulation_reproduces_the_full_batch_step(tiny_config):
    # The released CPM has no BatchNorm (cpm_small's optional one sees per-micro-batch statistics).
    full = first_update(tiny_config, "data.batch_size=8", "model.norm=none")
    accumulated = first_update(
        tiny_config, "data.batch_size=4", "+trainer.accumulate_grad_batches=2", "model.norm=none"
    )
    assert_same_gradients(accumulated, full, tol=1e-5)
    half = first_update(tiny_config, "data.batch_size=4", "model.norm=none")  # the first 4 samples only: differs
    with pytest.raises(AssertionError):
        assert_same_gradients(half, full, tol=1e-2)


def test_checkpointing_and_channels_last_from_config_train_the_same_step(tiny_config):
    plain = first_update(tiny_config)
    switched = first_update(tiny_config, "model.checkpoint_stages=true", "channels_last=true")
    assert_same_gradients(switched, plain, tol=1e-5)


@pytest.mark.parametrize("optim", ["paper", "adam"])  # SGD with momentum, AdamW
def test_fused_optimiser_applies_the_same_update(tiny_config, optim):
    plain = first_update(tiny_config, optim=optim)
    fused = first_update(tiny_config, "optim.fused=true", optim=optim)
    assert_same_gradients(fused, plain, tol=1e-5)
    assert any(update.abs().sum() > 0 for update in plain.values())


def test_cpu_bf16_trainer_takes_the_fp32_step_to_bf16_accuracy(tiny_config):
    # trainer=cpu_bf16: bf16 autocast on the CPU (the loss in fp32); SGD's update is lr x gradient.
    # No BatchNorm: the conv biases before a BatchNorm have a zero gradient in exact arithmetic,
    # so their relative error is noise over noise (the whole update's error is ~0.3% either way).
    fp32 = first_update(tiny_config, "model.norm=none")
    bf16 = first_update(tiny_config, "model.norm=none", "trainer=cpu_bf16")
    assert_same_gradients(bf16, fp32, tol=5e-2)  # measured: at most 1.6% per tensor
    with pytest.raises(AssertionError):  # and it is bf16 indeed, not fp32 to the last bit
        assert_same_gradients(bf16, fp32, tol=1e-5)


def test_bf16_mixed_trainer_runs_with_finite_loss(tiny_config):
    module, datamodule, trainer = build(tiny_config("trainer.precision=bf16-mixed", "~callbacks.model_checkpoint"))
    trainer.fit(module, datamodule=datamodule)
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss > 0


def test_pinned_memory_and_persistent_workers_reach_the_dataloader(tiny_config):
    cfg = tiny_config("data.num_workers=2", "data.pin_memory=true", "data.persistent_workers=true")
    _, datamodule, _ = build(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.pin_memory and loader.persistent_workers and loader.num_workers == 2


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile (inductor, C++ on CPU) gives the eager outputs and gradients."""
    torch.manual_seed(0)
    model = CPM(**TINY_CPM, dropout=0.0).train()
    compiled = torch.compile(model)
    image = torch.randn(2, 3, 32, 32)
    out_eager, grads_eager = gradients(model, image)
    out_compiled, grads_compiled = gradients(compiled, image)
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-4, atol=1e-5)
    assert_same_gradients(grads_compiled, grads_eager, tol=1e-5)


@pytest.mark.slow
def test_compile_mode_from_config_matches_eager(tiny_config):
    """compile_mode reaches torch.compile (here the mode that autotunes, as on a GPU) and the
    compiled module gives the eager outputs and gradients."""
    # No BatchNorm: a conv bias before one has a zero gradient, whose relative error is noise.
    overrides = ("compile=true", "compile_mode=max-autotune-no-cudagraphs", "model.dropout=0", "model.norm=none")
    module, _, _ = build(tiny_config(*overrides))
    assert module._forward is not module.model
    module.train()
    image = torch.randn(2, 3, 64, 64)
    out_eager, grads_eager = gradients(module.model, image)
    out_compiled, grads_compiled = gradients(module, image)  # CPMModule.forward: the compiled model
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-4, atol=1e-5)
    assert_same_gradients({n.removeprefix("model."): g for n, g in grads_compiled.items()}, grads_eager, tol=1e-5)


def test_gpu_check_training_step_runs_without_hydra_albumentations_wandb(tmp_path):
    """benchmarks/gpu_check.sh runs bench_train_step.py on bare GPU machines: run it here (CPU,
    tiny input) with those packages made unimportable, and check the JSON it writes."""
    blocker = (
        "import runpy, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in {'hydra', 'omegaconf', 'albumentations', 'wandb', 'torchmetrics', 'cv2'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['bench_train_step.py', *sys.argv[1:]]\n"
        "runpy.run_path('benchmarks/bench_train_step.py', run_name='__main__')\n"
    )
    args = ["--device", "cpu", "--input", "32", "--batch", "1", "--warmup", "0", "--steps", "1"]
    subprocess.run(
        [sys.executable, "-c", blocker, *args, "--out-dir", str(tmp_path), "--name", "check"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "benchmarks")}, check=True, capture_output=True,
    )  # fmt: skip
    record = json.loads((tmp_path / "check.json").read_text())
    assert [r["variant"] for r in record["results"]] == ["baseline", "ours"]
    assert all(r["images_per_s"] > 0 for r in record["results"])
    assert record["results"][0]["speedup_vs_baseline"] == 1.0
