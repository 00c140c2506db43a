"""One GPU run for the paper CPM's training speed: profile, switches measured cumulatively, the Trainer.

    python benchmarks/gpu_profile.py --out DIR                      # on the GPU: ~7 minutes
    python benchmarks/gpu_profile.py --device cpu --tiny --out DIR  # the same JSON, tiny sizes, on a CPU

(benchmarks/gpu_profile.sh wraps the GPU run; docs/scaling.md says how to run it and reads the JSON.)
Everything below runs in this order, each part time-boxed, all inside --budget-s; a part whose
expected time no longer fits is recorded as skipped, with the reason, and the JSON keeps its layout.

1. Eager steps (bf16 autocast, channels_last, uint8 input normalised in the step as
   CPMModule.forward does, SGD as the paper's solver) of the 6-stage CPM at 368x368, batch 16,
   starting from today's `trainer=gpu channels_last=true` and adding one switch at a time:
   `cudnn.benchmark` (`+trainer.benchmark=true`), the fused optimiser (`optim.fused=true`). A switch
   is kept when it beats the best so far by more than 1%. Two costs are measured against the best,
   not kept: the non-finite guard's per-step check (FaultTolerance: one host sync per step), and
   the input conversion (a batch already normalised on the device).
2. torch.compile of the best eager step (`compile=true`), in a child process with its own time
   box, then torch.profiler over a few compiled steps: the kernels by device time, the convs by
   layer (9x9 trunk convs at 368/184/92, 11x11 stage convs at 46, the 1x1s) with their achieved
   TFLOP/s, the phases (forward, loss, backward, optimiser) timed with device events, and the
   host gaps between kernels.
3. `compile_mode=reduce-overhead` (CUDA graphs; the shapes are static) on top.
4. The Trainer: `python -m cpm_lightning.train +experiment=lsp_6stage_joint trainer=gpu` on
   synthetic HDF5 crops warped to 368 with the real DataModule and 8 workers, images/s over a
   window of steps (benchmarks/step_timer.py), as shipped and with the kept switches, each
   against the micro-benchmark of the same settings in this run.
5. Batch size (eager best, per memory) and the peak memory at batch 16 with and without
   activation checkpointing.
6. The Trainer with the kept switches without the non-finite guard, then without the progress
   bar: what their per-step host syncs cost in a real run.
7. `compile_mode=max-autotune-no-cudagraphs`, if time is left.

Writes DIR/gpu_profile.json (all numbers), DIR/gpu_profile.log is the caller's, the profile's
tables DIR/gpu_profile_kernels.txt and trace DIR/gpu_profile_trace.json.gz, and the Inductor
cache as DIR/inductor_cache.tar.gz (split into .partN files over 15 MiB) for the next run to
reuse with --inductor-cache FILE.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from common import H100_BF16_DENSE_TFLOPS, machine, pick_device
from step_timer import timed_train

from cpm_lightning.callbacks.fault_tolerance import FaultTolerance
from cpm_lightning.losses import stage_losses
from cpm_lightning.models.cpm import CPM, forward_flops
from cpm_lightning.module import normalise_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEEP_MARGIN = 1.01  # a switch is kept when it is > 1% faster than the best so far
# What comes back from a GPU machine here: at most 8 files of <= 16 MiB, 64 MiB in all; the JSON,
# kernel table, trace and log take 4 files and a few MiB.
PART_FILE_BYTES = 15 * 2**20
MAX_CACHE_BYTES = 4 * PART_FILE_BYTES

# The sizes of a run. "gpu": the paper's configuration. "tiny": a 2-stage CPM at 64 px that a
# CPU runs end to end in about a minute, to test this script (numbers meaningless).
SIZES = {
    "gpu": dict(model={}, input=368, batch=16, warmup=5, steps=20, profile_steps=3, batches=[32, 64],
                train_samples=3200, trainer_skip=15, trainer_steps=150, workers=8,
                expect_s=dict(compile=120, train=45, train_compiled=80), box_s=dict(compile=180, train=120)),
    "tiny": dict(model=dict(num_stages=2, trunk_channels=8, trunk_kernel=3, feature_channels=4, stage1_channels=16,
                            stage1_kernel=3, stage_channels=8, stage_kernel=5, stage_layers=1),
                 input=64, batch=2, warmup=1, steps=2, profile_steps=1, batches=[4],
                 train_samples=40, trainer_skip=2, trainer_steps=3, workers=1,
                 expect_s=dict(compile=40, train=20, train_compiled=40), box_s=dict(compile=150, train=150)),
}  # fmt: skip
# Today's `trainer=gpu channels_last=true`, as a micro-benchmark step.
TODAY = dict(bf16=True, channels_last=True, cudnn_benchmark=False, fused=False, compile=None,
             guard=False, float_input=False, checkpoint_stages=False)  # fmt: skip
# Each switch: its step setting and the Trainer override that turns it on.
SWITCHES = [
    ("cudnn.benchmark", {"cudnn_benchmark": True}, ["+trainer.benchmark=true"]),
    ("fused SGD", {"fused": True}, ["optim.fused=true"]),
]


# -- one micro-benchmark step ----------------------------------------------------------------
class Marks:
    """Wall time between named points of a step, with device events on a GPU (no sync)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, object]]] = []

    def start(self) -> None:
        self.steps.append([])
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1].append((name, event))
        else:
            self.steps[-1].append((name, time.perf_counter()))

    def mean_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for marks in self.steps:
            for (_, a), (name, b) in zip(marks, marks[1:]):
                ms = a.elapsed_time(b) if self.cuda else 1000 * (b - a)
                totals[name] = totals.get(name, 0.0) + ms
        return {name: total / len(self.steps) for name, total in totals.items()}


def make_step(spec: dict, model_config: dict, device: torch.device, marks: Marks):
    """The training step of `spec` on a fixed batch already on the device (the loader's part is
    what the Trainer measurement adds)."""
    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]
    torch.manual_seed(0)
    model = CPM(checkpoint_stages=spec["checkpoint_stages"], **model_config).to(device).train()
    layout = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=layout)
    forward = torch.compile(model, mode=spec["compile"]) if spec["compile"] else model
    n, size, stride = spec["batch"], spec["input"], model.stride
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    normalised = normalise_image(images.contiguous(memory_format=layout))
    maps = (n, model.config.num_parts + 1, size // stride, size // stride)
    targets, stage1_targets = (torch.rand(maps, generator=generator).to(device) for _ in range(2))
    # The paper's solver (lr small enough that random targets never blow up the weights).
    fused = True if spec["fused"] else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-8, momentum=0.9, weight_decay=5e-4, fused=fused)
    guard, precision = FaultTolerance(), SimpleNamespace(precision="bf16-mixed" if spec["bf16"] else "32-true")

    def step() -> None:
        marks.start()
        optimizer.zero_grad(set_to_none=True)
        # CPMModule.forward: channels_last on the uint8 batch, then normalised.
        image = normalised if spec["float_input"] else normalise_image(images.contiguous(memory_format=layout))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["bf16"]):
            beliefs = forward(image)
        marks.mark("forward")
        loss = stage_losses(beliefs, targets, stage1_targets).sum()
        marks.mark("loss")
        loss.backward()
        marks.mark("backward")
        if spec["guard"]:  # the non-finite guard exactly as the Trainer runs it: one host sync
            guard.on_before_backward(precision, model, loss)
            guard.on_before_optimizer_step(precision, model, optimizer)
            marks.mark("guard")
        optimizer.step()
        marks.mark("optimizer")

    return step, model


def measure(spec: dict, model_config: dict, device: torch.device, profile_to: Path | None = None) -> dict:
    """images/s, MFU, phases and peak memory of one step setting (and its profile if asked)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    marks = Marks(device)
    step, model = make_step(spec, model_config, device, marks)
    start = time.perf_counter()
    step()  # compiles a compiled step; cuDNN's algorithm search with benchmark=True
    _sync(device)
    first_step_s = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    marks.steps.clear()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / spec["steps"]
    flops = 3.0 * forward_flops(model.config, spec["input"]) * spec["batch"]  # per step, training
    result = {
        "images_per_s": spec["batch"] / seconds,
        "ms_per_step": 1000 * seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / H100_BF16_DENSE_TFLOPS if cuda else None,
        "phases_ms": marks.mean_ms(),
        "first_step_s": first_step_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    if spec["compile"]:
        result["compile_s"] = first_step_s - seconds
    if profile_to is not None:
        result["profile"] = profile(step, device, spec["profile_steps"], profile_to)
    del step, model
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the profile ---------------------------------------------------------------------------------
def conv_flops(shapes: list, backward: bool) -> tuple[float, str] | None:
    """FLOPs and a layer label from a profiled aten::convolution(_backward) call's input shapes."""
    if backward:  # grad_output, input, weight, bias_sizes, stride, padding, ..., output_mask
        grad_out, inp, weight = shapes[0], shapes[1], shapes[2]
        passes = 2  # the input's and the weight's gradients
    else:  # input, weight, bias, stride, padding, ...
        inp, weight = shapes[0], shapes[1]
        grad_out, passes = None, 1
    if len(inp) != 4 or len(weight) != 4:
        return None
    n, cin, h, w = inp
    cout, _, kh, kw = weight
    if backward and cin == 3:
        passes = 1  # the first conv: the image needs no gradient
    out_hw = (grad_out[2] * grad_out[3]) if grad_out else h * w  # stride 1, same padding
    label = f"{kh}x{kw} conv {cin}->{cout} at {h}x{w}"
    return passes * 2.0 * n * cout * out_hw * cin * kh * kw, label


def profile(step, device: torch.device, steps: int, out_dir: Path) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    cuda = device.type == "cuda"
    time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    kernel_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    averages = [e for e in prof.key_averages() if e.device_type == kernel_type and time_of(e) > 0]
    total_us = sum(time_of(e) for e in averages)
    top = sorted(averages, key=time_of, reverse=True)[:25]
    kernels = [
        {"name": e.key[:160], "calls": e.count // steps, "ms_per_step": time_of(e) / 1000 / steps,
         "share": time_of(e) / total_us}
        for e in top
    ]  # fmt: skip
    convs: dict[tuple[str, str], dict] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::convolution", "aten::convolution_backward"):
            continue
        backward = e.key.endswith("backward")
        found = conv_flops(e.input_shapes, backward)
        if found is None:
            continue
        flops, label = found
        entry = convs.setdefault((label, "backward" if backward else "forward"), {"ms": 0.0, "flops": 0.0})
        spent_us = e.device_time_total if cuda else e.cpu_time_total
        entry["ms"] += spent_us / 1000 / steps
        entry["flops"] += flops * e.count / steps
    conv_rows = sorted(
        ({"layer": label, "pass": direction, "ms_per_step": v["ms"],
          "tflops": v["flops"] / (v["ms"] / 1000) / 1e12 if v["ms"] else None}
         for (label, direction), v in convs.items()),
        key=lambda r: r["ms_per_step"], reverse=True,
    )  # fmt: skip
    trace = out_dir / "gpu_profile_trace.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=40)
    (out_dir / "gpu_profile_kernels.txt").write_text(table)
    return {
        "steps": steps,
        "kernel_ms_per_step": total_us / 1000 / steps,
        "top_kernels": kernels,
        "convs": conv_rows,
        "host_gaps": host_gaps(prof, kernel_type),
        "trace": f"{trace.name}.gz",
    }


def host_gaps(prof, kernel_type) -> dict:
    """Idle time of the device between kernels: the union of kernel intervals against their span.

    On a CPU the "kernels" are the top-level ops of the main thread, so the gaps are the Python
    and dispatch time between them (the same layout; the GPU numbers are the ones that matter)."""
    events = [e for e in prof.events() if e.device_type == kernel_type]
    if kernel_type == torch.autograd.DeviceType.CPU:
        events = [e for e in events if e.cpu_parent is None]
    intervals = sorted((e.time_range.start, e.time_range.end, e.name) for e in events)
    if not intervals:
        return {"kernels": 0}
    busy, gaps, (start, end, name) = 0.0, [], intervals[0]
    for s, e, n in intervals[1:]:
        if s > end:
            busy += end - start
            gaps.append((s - end, name, n))
            start, end, name = s, e, n
        elif e > end:
            end, name = e, n
    busy += end - start
    span = intervals[-1][1] - intervals[0][0]
    gaps.sort(reverse=True)
    return {
        "kernels": len(intervals),
        "span_ms": span / 1000,
        "busy_ms": busy / 1000,
        "idle_fraction": 1 - busy / span if span else 0.0,
        "gaps_over_10us": sum(1 for g in gaps if g[0] > 10),
        "largest_gaps": [{"us": g, "after": a[:80], "before": b[:80]} for g, a, b in gaps[:8]],
    }


# -- the parent: parts, time boxes, the JSON ---------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = pick_device(args.device)
        self.size = SIZES["tiny" if args.tiny else "gpu"]
        self.deadline = time.monotonic() + args.budget_s
        self.out = args.out
        self.record: dict = {
            "benchmark": f"training step of the CPM {'(tiny, a test of this script) ' if args.tiny else ''}"
            f"at {self.size['input']}x{self.size['input']}, batch {self.size['batch']}: switches cumulatively, "
            "the compiled step's profile, the Trainer against the micro-benchmark",
            "machine": machine(self.device),
            "sizes": {k: v for k, v in self.size.items() if k != "model"},
            "model": self.size["model"] or "the paper's 6-stage CPM (conf/model/cpm_paper.yaml)",
            "peak_tflops_for_mfu": H100_BF16_DENSE_TFLOPS if self.device.type == "cuda" else None,
            "variants": [],
            "profile": None,
            "trainer": [],
            "batch_sizes": {"skipped": "not asked for (--parts)"},
            "memory": {"skipped": "not asked for (--parts)"},
        }
        self.timeline: dict[str, float] = {}
        self.started = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spec(self, **settings) -> dict:
        keys = ("input", "batch", "warmup", "steps", "profile_steps")
        return {**TODAY, **{k: self.size[k] for k in keys}, **settings}

    def save(self) -> None:
        self.record["timeline_s"] = self.timeline
        (self.out / "gpu_profile.json").write_text(json.dumps(self.record, indent=2))

    def note(self, part: str) -> None:
        self.timeline[part] = round(time.monotonic() - self.started, 1)
        self.save()
        print(f"[{self.timeline[part]:6.1f} s] {part} done, {self.left():.0f} s of the budget left", flush=True)

    # -- 1: eager --------------------------------------------------------------------------
    def eager(self) -> dict:
        best_name, best = "today: trainer=gpu channels_last=true", self.spec()
        best_result = self.variant(best_name, best, kept=True)
        for name, settings, _ in SWITCHES:
            candidate = {**best, **settings}
            result = self.variant(f"+ {name}", candidate)
            if result and result["images_per_s"] > KEEP_MARGIN * best_result["images_per_s"]:
                best_name, best, best_result = f"+ {name}", candidate, result
                self.record["variants"][-1]["kept"] = True
        guard, normalised = {**best, "guard": True}, {**best, "float_input": True}
        self.variant("cost: + the non-finite guard's host sync per step", guard, compare=best_result)
        self.variant("bound: input already normalised on the device", normalised, compare=best_result)
        return {"name": best_name, "spec": best, "result": best_result}

    def variant(self, name: str, spec: dict, kept: bool = False, compare: dict | None = None) -> dict | None:
        entry: dict = {"name": name, "spec": spec, "kept": kept}
        self.record["variants"].append(entry)
        try:
            entry["result"] = measure(spec, self.size["model"], self.device)
        except Exception as error:  # one variant that fails (e.g. out of memory) leaves the others
            entry["error"] = f"{type(error).__name__}: {error}"[:1000]
            print(f"{name}: FAILED {entry['error']}", flush=True)
            return None
        finally:
            self.save()
        self.compare(entry, compare)
        return entry["result"]

    def compare(self, entry: dict, reference: dict | None) -> None:
        previous = [v["result"] for v in self.record["variants"][:-1] if v.get("kept") and "result" in v]
        reference = reference or (previous[-1] if previous else None)
        if reference and "result" in entry:
            entry["vs_best_so_far"] = entry["result"]["images_per_s"] / reference["images_per_s"]
        r = entry.get("result", {})
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        ratio = f" (x{entry['vs_best_so_far']:.3f})" if "vs_best_so_far" in entry else ""
        print(f"{entry['name']:>58}: {r.get('images_per_s', 0):8.2f} images/s{ratio}{mfu}", flush=True)

    # -- 2 and 4: compiled steps in child processes ----------------------------------------------
    def compiled(self, best: dict, mode: str, with_profile: bool) -> dict:
        name = f"+ compile ({mode})"
        box = self.box("compile")
        if box is None:
            self.record["variants"].append({"name": name, "skipped": f"budget: {self.left():.0f} s left"})
            return best
        if mode == "reduce-overhead" and self.device.type != "cuda":
            self.record["variants"].append({"name": name, "skipped": "CUDA graphs need a GPU"})
            return best
        spec = {**best["spec"], "compile": mode}
        entry: dict = {"name": name, "spec": spec, "kept": False}
        self.record["variants"].append(entry)
        command = [sys.executable, __file__, "--child", json.dumps(spec), "--device", self.device.type]
        command += (
            ["--out", str(self.out)] + (["--tiny"] if self.args.tiny else []) + (["--profile"] if with_profile else [])
        )
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=box, env=self.env())
            if done.returncode != 0:
                entry["error"] = done.stderr[-3000:]
            else:
                entry["result"] = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            entry["error"] = f"did not finish within its {box:.0f} s box (compilation included)"
        if "error" in entry:
            print(f"{name}: FAILED {entry['error'][-500:]}", flush=True)
            self.save()
            return best
        if "profile" in entry["result"]:
            self.record["profile"] = {"of": name, **entry["result"].pop("profile")}
        self.compare(entry, best["result"])
        if entry["result"]["images_per_s"] > KEEP_MARGIN * best["result"]["images_per_s"]:
            entry["kept"] = True
            return {"name": name, "spec": spec, "result": entry["result"]}
        return best

    def box(self, part: str) -> float | None:
        """The time limit of a part, or None where the budget no longer holds its expected time."""
        expected = self.size["expect_s"][part]
        if self.left() < expected:
            return None
        return min(self.size["box_s"][part.removesuffix("_compiled")], max(self.left(), expected) + 30)

    def env(self) -> dict:
        return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(self.args.cache_dir), "PYTHONUNBUFFERED": "1"}

    # -- 3: the Trainer -----------------------------------------------------------------------
    def trainer_runs(self, today: dict, best: dict, costs: bool) -> None:
        """The Trainer as shipped and with the kept switches, or (costs) those switches without
        the non-finite guard, then without the progress bar: what their host syncs cost."""
        data = self.make_data()
        switched = [o for _, settings, overrides in SWITCHES if _has(best["spec"], settings) for o in overrides]
        if best["spec"]["compile"]:
            switched += ["compile=true", f"compile_mode={best['spec']['compile']}"]
        label = "with the kept switches" if switched else "as shipped"
        if costs:
            runs = [
                (f"{label}, without the non-finite guard", [*switched, "~callbacks.fault_tolerance"], best),
                (f"{label}, without the progress bar",
                 [*switched, "~callbacks.progress_bar", "+trainer.enable_progress_bar=false"], best),
            ]  # fmt: skip
        else:
            runs = [("as shipped (trainer=gpu, channels_last=true)", [], today)]
            runs += [(label, switched, best)] if switched else []
        for name, overrides, reference in runs:
            entry: dict = {"name": name, "overrides": overrides, "micro_reference": reference["name"]}
            self.record["trainer"].append(entry)
            box = self.box("train_compiled" if "compile=true" in overrides else "train")
            if box is None:
                entry["skipped"] = f"budget: {self.left():.0f} s left"
                continue
            entry.update(self.train(data, overrides, box))
            if "result" in entry:
                entry["ratio_vs_micro"] = entry["result"]["images_per_s"] / reference["result"]["images_per_s"]
                print(f"{'Trainer ' + name:>70}: {entry['result']['images_per_s']:8.2f} images/s, "
                      f"x{entry['ratio_vs_micro']:.3f} of the micro-benchmark", flush=True)  # fmt: skip
            else:
                print(f"Trainer {name}: FAILED {entry.get('error', '')[-800:]}", flush=True)
            self.save()

    def make_data(self) -> Path:
        root = self.args.cache_dir.parent / "data"
        n = self.size["train_samples"]
        if not (root / "synthetic" / "train.h5").exists():
            command = [sys.executable, "-m", "data_prep", "synthetic", "--out", str(root / "synthetic"),
                       "--train", str(n), "--val", str(max(16, n // 30)), "--test", "16"]  # fmt: skip
            subprocess.run(command, cwd=REPO, check=True, capture_output=True, env=self.env())
        return root / "synthetic"

    def train(self, data: Path, overrides: list[str], box: float) -> dict:
        size, cuda = self.size, self.device.type == "cuda"
        run_dir = Path(tempfile.mkdtemp(dir=self.args.cache_dir.parent, prefix="run_"))
        common = [
            "+experiment=lsp_6stage_joint", "trainer=gpu" if cuda else "trainer=cpu_bf16",
            f"data.train_files=[{data / 'train.h5'}]", f"data.val_file={data / 'val.h5'}",
            f"data.test_file={data / 'test.h5'}", f"data.input_size={size['input']}",
            f"data.batch_size={size['batch']}", f"data.num_workers={size['workers']}",
            f"data.pin_memory={str(cuda).lower()}", "channels_last=true",
            *[f"model.{k}={v}" for k, v in size["model"].items()],
        ]  # fmt: skip
        return timed_train([*common, *overrides], run_dir, size["trainer_skip"], size["trainer_steps"], box, self.env())

    # -- 5: batch size and memory ---------------------------------------------------------------
    def batch_and_memory(self, best_eager: dict) -> None:
        eager = {**best_eager["spec"], "compile": None}
        rows = []
        for batch in self.size["batches"]:
            if self.left() < 30:
                rows.append({"batch": batch, "skipped": "budget"})
                continue
            try:
                rows.append({"batch": batch, **measure({**eager, "batch": batch}, self.size["model"], self.device)})
            except torch.OutOfMemoryError as error:
                rows.append({"batch": batch, "error": str(error)[:300]})
        self.record["batch_sizes"] = {"settings": "the best eager step (a compiled one recompiles per batch size)",
                                      "baseline_batch": {"batch": self.size["batch"], **best_eager["result"]},
                                      "rows": rows}  # fmt: skip
        memory = {"batch": self.size["batch"], "without_checkpointing_gib": best_eager["result"]["peak_memory_gib"]}
        if self.left() > 20:
            checkpointed = measure({**eager, "checkpoint_stages": True}, self.size["model"], self.device)
            memory["with_checkpointing_gib"] = checkpointed["peak_memory_gib"]
            memory["checkpointed_images_per_s"] = checkpointed["images_per_s"]
        self.record["memory"] = memory

    def pack_cache(self) -> None:
        cache = self.args.cache_dir
        if not cache.exists():
            self.record["inductor_cache"] = {"skipped": "no compiled variant ran"}
            return
        archive = self.out / "inductor_cache.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(cache, arcname="inductor_cache")
        size = archive.stat().st_size
        if size > MAX_CACHE_BYTES:
            archive.unlink()
            self.record["inductor_cache"] = {"skipped": f"{size / 2**20:.0f} MiB: too large to bring back"}
            return
        files = [archive.name]
        if size > PART_FILE_BYTES:
            data, files = archive.read_bytes(), []
            for i in range(0, size, PART_FILE_BYTES):
                part = self.out / f"inductor_cache.tar.gz.part{i // PART_FILE_BYTES}"
                part.write_bytes(data[i : i + PART_FILE_BYTES])
                files.append(part.name)
            archive.unlink()
        self.record["inductor_cache"] = {"files": files, "bytes": size, "torch": torch.__version__}


def _has(spec: dict, settings: dict) -> bool:
    return all(spec[k] == v for k, v in settings.items())


def unpack_cache(files: list[Path], cache_dir: Path) -> None:
    """A previous run's cache (one .tar.gz, or its .partN files) into cache_dir."""
    parts = sorted(files, key=lambda p: (len(p.name), p.name))  # part2 before part10
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "cache.tar.gz"
        with open(archive, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.move(Path(tmp) / "inductor_cache", cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON, profile, trace and cache")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a test of this script (CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="all parts together (the lease: 8 minutes)")
    parser.add_argument("--parts", default="compile,trainer,modes,memory", help="what runs after the eager steps")
    parser.add_argument("--inductor-cache", type=Path, nargs="*", default=[], help="a previous run's cache file(s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one compiled step, JSON on stdout
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    if args.child:
        spec, model = json.loads(args.child), SIZES["tiny" if args.tiny else "gpu"]["model"]
        result = measure(spec, model, device, args.out if args.profile else None)
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    args.cache_dir = work / "inductor_cache"
    if args.inductor_cache:
        unpack_cache(args.inductor_cache, args.cache_dir)
    parts = set(args.parts.split(","))
    run = Run(args)
    run.record["parts"] = sorted(parts)
    run.record["inductor_cache_reused"] = bool(args.inductor_cache)
    best_eager = best = run.eager()
    run.note("eager")
    if "compile" in parts:
        best = run.compiled(best, "default", with_profile=True)
        run.note("compile")
    if run.record["profile"] is None:  # compiling failed or was not asked for: profile the eager step
        profiled = measure(best_eager["spec"], run.size["model"], run.device, args.out)
        run.record["profile"] = {"of": best_eager["name"], **profiled["profile"]}
        run.note("profile")
    today = {"name": run.record["variants"][0]["name"], "result": run.record["variants"][0]["result"]}
    if "modes" in parts:  # CUDA graphs first: the compile mode most likely to matter
        best = run.compiled(best, "reduce-overhead", with_profile=False)
        run.note("reduce-overhead")
    if "trainer" in parts:
        run.trainer_runs(today, best, costs=False)
        run.note("trainer")
    if "memory" in parts:
        run.batch_and_memory(best_eager)
        run.note("memory")
    if "trainer" in parts:
        run.trainer_runs(today, best, costs=True)
        run.note("trainer costs")
    if "modes" in parts:
        best = run.compiled(best, "max-autotune-no-cudagraphs", with_profile=False)
        run.note("max-autotune-no-cudagraphs")
    run.record["best"] = {"name": best["name"], "spec": best["spec"], **best["result"]}
    run.pack_cache()
    run.save()
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'gpu_profile.json'}")


if __name__ == "__main__":
    main()
