"""CPU training and validation images/s of a CPM per efficiency setting, against today's default.

The baseline is what `trainer=cpu` runs today: eager fp32, channels_last. Every variant runs in
a fresh subprocess with an empty Inductor cache, so a compiled variant's compile time is the cold
compile a first run pays (reported apart from its images/s), and no thread or oneDNN setting of
one variant leaks into the next. The training step is the module's: forward (under bf16 autocast
where asked, as Lightning's `bf16-mixed` does on a CPU), the summed per-stage losses with stage-1
targets, backward, one AdamW step (SGD for the paper model, as its recipe). Validation is a
forward in eval mode under inference_mode at the evaluation batch size.

    python benchmarks/bench_cpu_step.py --model cpm_small --input 128 [--batch 16] [--steps 8]
        [--variants NAME,NAME] [--name cpu_step_cpm_small_128]
    python benchmarks/bench_cpu_step.py --trainer --data-dir D --input 128 [--trainer-steps 60]
        (the same in real `python -m cpm_lightning.train` runs, over D/synthetic made by
        `python -m data_prep synthetic --out D/synthetic`)
    python benchmarks/bench_cpu_step.py --list     # the variants

Timed numbers count only from a quiet machine (nothing else running on its cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, machine, write_result
from step_timer import timed_train

from cpm_lightning.losses import stage_losses
from cpm_lightning.models.cpm import CPM

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BASELINE = "eager fp32 channels_last"

# name -> settings; missing keys take the defaults of Variant below.
VARIANTS: dict[str, dict] = {
    "eager fp32 NCHW": {"channels_last": False},
    BASELINE: {},
    "eager fp32 + oneDNN conv fp32_precision=bf16": {"conv_fp32_precision": "bf16"},
    "eager fp32 1 thread": {"threads": 1},
    "compile fp32": {"compile": "default"},
    "compile fp32 max-autotune-no-cudagraphs": {"compile": "max-autotune-no-cudagraphs"},
    "eager bf16 autocast": {"bf16": True},
    "eager bf16 autocast 1 thread": {"bf16": True, "threads": 1},
    "compile bf16 autocast": {"bf16": True, "compile": "default"},
    "compile bf16 autocast max-autotune-no-cudagraphs": {"bf16": True, "compile": "max-autotune-no-cudagraphs"},
    # validation only: the training step is not run
    "eval fp32": {"mode": "eval"},
    "eval fp32 conv+BN folded": {"mode": "eval", "fold_batchnorm": True},
    "eval bf16 autocast": {"mode": "eval", "bf16": True},
    "eval bf16 autocast conv+BN folded": {"mode": "eval", "bf16": True, "fold_batchnorm": True},
    "eval compile bf16 autocast": {"mode": "eval", "bf16": True, "compile": "default"},
}
# The same question in a real Trainer run (loader workers, logging, callbacks, the guard's check):
# name -> (overrides, environment). One DataLoader worker is the data configs' default.
TRAINER_VARIANTS: dict[str, tuple[list[str], dict]] = {
    "trainer=cpu (fp32 channels_last, 1 worker)": ([], {}),
    "trainer=cpu_bf16": (["trainer=cpu_bf16"], {}),
    "trainer=cpu_bf16 compile=true": (["trainer=cpu_bf16", "compile=true"], {}),
    "trainer=cpu_bf16 0 workers": (["trainer=cpu_bf16", "data.num_workers=0"], {}),
    "trainer=cpu_bf16 2 workers": (["trainer=cpu_bf16", "data.num_workers=2"], {}),
    "trainer=cpu_bf16 2 workers 1 intra-op thread": (
        ["trainer=cpu_bf16", "data.num_workers=2"],
        {"OMP_NUM_THREADS": "1"},
    ),
}
DEFAULTS = dict(
    mode="train", channels_last=True, bf16=False, compile=None, conv_fp32_precision=None, threads=None,
    fold_batchnorm=False,
)  # fmt: skip


def model_config(name: str) -> dict:
    """conf/model/<name>.yaml with its `defaults` (cpm_small extends cpm_paper), as Hydra composes it."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    merged = OmegaConf.create()
    for parent in node.pop("defaults", []):
        if parent != "_self_":
            merged = OmegaConf.merge(merged, model_config(parent))
    return OmegaConf.to_container(OmegaConf.merge(merged, node))


def fold_batchnorm(model: CPM) -> CPM:
    """An eval copy with every BatchNorm folded into the conv before it (one op instead of two)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                    module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = torch.nn.Identity()
    return folded


def run_variant(settings: dict, model_name: str, input_size: int, batch: int, warmup: int, steps: int) -> dict:
    """Time one variant in this process (the parent runs each in a subprocess of its own)."""
    s = {**DEFAULTS, **settings}
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if s["conv_fp32_precision"]:
        torch.backends.mkldnn.conv.fp32_precision = s["conv_fp32_precision"]
    torch.manual_seed(0)
    config = model_config(model_name)
    model = CPM(**config)
    stride, parts = model.stride, model.config.num_parts
    memory_format = torch.channels_last if s["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    image = (torch.randn(batch, 3, input_size, input_size) / 4).contiguous(memory_format=memory_format)
    size = input_size // stride
    target = torch.rand(batch, parts + 1, size, size)
    train = s["mode"] == "train"
    if not train:
        model = fold_batchnorm(model) if s["fold_batchnorm"] else model.eval()
    forward = torch.compile(model, mode=s["compile"]) if s["compile"] else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=s["bf16"])
    if train:
        model.train()
        optimizer = (
            torch.optim.AdamW(model.parameters(), lr=1e-3)
            if model_name != "cpm_paper"
            else torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        )

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                beliefs = forward(image)
            stage_losses(beliefs, target, target).sum().backward()
            optimizer.step()
    else:

        def step() -> None:
            with torch.inference_mode(), autocast:
                forward(image)

    start = time.perf_counter()
    step()  # compiles a compiled variant
    first_step = time.perf_counter() - start
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    result = {"settings": s, "batch": batch, "steps": steps, "seconds_per_step": seconds}
    result.update(images_per_s=batch / seconds, first_step_s=first_step, threads=torch.get_num_threads())
    if s["compile"]:
        result["compile_s"] = first_step - seconds  # the first call's extra time: the cold compile
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cpm_small", help="a conf/model name: cpm_small, cpm_paper, ...")
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="training batch (data.batch_size)")
    parser.add_argument("--eval-batch", type=int, default=64, help="validation batch (data.eval_batch_size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (--list)")
    parser.add_argument("--name", default=None, help="results/<name>.json; default cpu_step_<model>_<input>")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per variant, compilation included")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--trainer", action="store_true", help="time real Trainer runs instead (TRAINER_VARIANTS)")
    parser.add_argument("--data-dir", type=Path, help="--trainer: the data root holding synthetic/*.h5")
    parser.add_argument("--trainer-skip", type=int, default=10, help="--trainer: steps before the timed window")
    parser.add_argument("--trainer-steps", type=int, default=60, help="--trainer: timed steps")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant here, print JSON
    args = parser.parse_args()
    if args.list:
        print("\n".join(f"{name}: {VARIANTS[name]}" for name in VARIANTS))
        return
    if args.trainer:
        return trainer_runs(args)
    if args.one:
        settings = VARIANTS[args.one]
        batch = args.eval_batch if settings.get("mode") == "eval" else args.batch
        print(json.dumps(run_variant(settings, args.model, args.input, batch, args.warmup, args.steps)))
        return
    names = [BASELINE] + [n for n in args.variants.split(",") if n != BASELINE]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}: see --list")
    results = []
    for name in names:
        with tempfile.TemporaryDirectory() as cache:  # a cold Inductor cache for every variant
            command = [sys.executable, __file__, "--one", name, "--model", args.model, "--input", str(args.input)]
            command += ["--batch", str(args.batch), "--eval-batch", str(args.eval_batch)]
            command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess(command, 1, "", f"did not finish within {args.timeout} s")
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}")
            results.append({"variant": name, "error": done.stderr[-2000:]})
            continue
        result = {"variant": name, **json.loads(done.stdout.strip().splitlines()[-1])}
        results.append(result)
        compiled = f", compile {result['compile_s']:.0f} s" if "compile_s" in result else ""
        print(f"{name:>50}: {result['images_per_s']:7.2f} images/s (batch {result['batch']}){compiled}", flush=True)
    train_base = results[0]["images_per_s"]
    eval_base = next((r["images_per_s"] for r in results if r["variant"] == "eval fp32"), None)
    for r in results:
        base = eval_base if r.get("settings", {}).get("mode") == "eval" else train_base
        if "images_per_s" in r and base:
            r["speedup_vs_baseline"] = r["images_per_s"] / base
    config = CPM(**model_config(args.model)).config
    record = {
        "benchmark": f"CPU training step and validation forward, {args.model} ({config.num_stages} stages, "
        f"norm={config.norm}), {args.input}x{args.input}",
        "baseline": f"training: {BASELINE} (trainer=cpu today); validation: eval fp32 (channels_last)",
        "machine": {**machine(torch.device("cpu")), **cpu_model()},
        "results": results,
    }
    write_result(args.name or f"cpu_step_{args.model}_{args.input}", record, args.out_dir)


def trainer_runs(args: argparse.Namespace) -> None:
    """Each TRAINER_VARIANTS entry as a real training run of the default experiment with this
    benchmark's model and input size; images/s over a window of steps (benchmarks/step_timer.py)."""
    common = [
        f"paths.data_dir={args.data_dir.resolve()}", f"model={args.model}", f"data.input_size={args.input}",
        f"data.batch_size={args.batch}", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
        "+trainer.limit_val_batches=1",  # the validation after fit: not timed, kept short
    ]  # fmt: skip
    results = []
    baseline, *others = TRAINER_VARIANTS
    asked = [n for n in args.variants.split(",") if n in TRAINER_VARIANTS and n != baseline]
    for name in [baseline, *(asked or others)]:
        overrides, env = TRAINER_VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:  # a cold Inductor cache for every run
            cold = {**env, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
            run = timed_train(
                [*common, *overrides], Path(tmp) / "run", args.trainer_skip, args.trainer_steps, 900, cold
            )
        if "error" in run:
            print(f"{name}: failed\n{run['error'][-2000:]}")
        else:
            r = run["result"]
            print(f"{name:>50}: {r['images_per_s']:7.2f} images/s, {r['seconds_to_first_window_step']:.0f} s to step "
                  f"{args.trainer_skip}, {run['wall_s']:.0f} s in all", flush=True)  # fmt: skip
        results.append({"variant": name, "overrides": overrides, "environment": env, **run})
    base = results[0].get("result", {}).get("images_per_s")
    for r in results:
        if base and "result" in r:
            r["speedup_vs_baseline"] = r["result"]["images_per_s"] / base
    window = f"steps {args.trainer_skip + 1}-{args.trainer_skip + args.trainer_steps}"
    record = {
        "benchmark": f"real training runs (python -m cpm_lightning.train), model={args.model}, "
        f"{args.input}x{args.input}, batch {args.batch}: images/s over {window}",
        "baseline": "trainer=cpu as shipped (fp32, channels_last, 1 loader worker)",
        "machine": {**machine(torch.device("cpu")), **cpu_model()},
        "results": results,
    }
    write_result(args.name or f"cpu_trainer_{args.model}_{args.input}", record, args.out_dir)


def cpu_model() -> dict:
    """The CPU's name and whether it has native bf16 dot products (what makes bf16 pay here)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return {}
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"cpu_model": name, "avx512_bf16": "avx512_bf16" in info, "amx_bf16": "amx_bf16" in info}


if __name__ == "__main__":
    main()
