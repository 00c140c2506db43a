#!/usr/bin/env bash
# One-GPU check in about 5 minutes (steps 1-3 about 3), needing only torch, lightning, h5py and numpy (no
# network, no Hydra/albumentations/W&B): training images/s of the paper CPM at 368x368 for
# eager fp32 NCHW versus bf16 + channels_last (and + torch.compile, if it finishes in its
# time box), MFU over the dense bf16 peak (989 TFLOP/s: H100 SXM, H200), peak memory.
# Writes benchmarks/results/gpu_check*.json and memory_cuda.json.
# Where the project's own dependencies are importable too (pip install -e .), it then runs the
# default synthetic experiment end to end on the GPU (Lightning, bf16, 8 loader workers) and the
# gradient-histogram callback's overhead: gpu_default_run.json, gradient_histograms_gpu.json.
#   bash benchmarks/gpu_check.sh            (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .`

"$PYTHON" -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA GPU visible'); print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"

# 1) eager fp32 NCHW vs ours (bf16 autocast + channels_last): 5 warm-up + 20 timed steps each.
timeout 60 "$PYTHON" benchmarks/bench_train_step.py --device cuda --batch 16 --warmup 5 --steps 20 \
    --variants baseline,ours --name gpu_check
# 2) peak memory at batch 16, training with and without activation checkpointing, inference.
timeout 30 "$PYTHON" benchmarks/bench_memory.py --device cuda --batch 16
# 3) + torch.compile, in its own time box: compiling takes ~100 s on an H200; skipped if longer.
timeout 150 "$PYTHON" benchmarks/bench_train_step.py --device cuda --batch 16 --warmup 3 --steps 20 \
    --variants baseline,ours,ours+compile --name gpu_check_compile \
    || echo "gpu_check: torch.compile variant did not finish within 150 s; eager results above stand"

# 4) The framework itself on the GPU, where Hydra and the loader's decoder are installed.
"$PYTHON" -c "import hydra, simplejpeg" 2>/dev/null || { echo "gpu_check: no Hydra/simplejpeg, steps 5-6 skipped"; exit 0; }
DATA_DIR="${CPM_DATA_DIR:-data}"
[ -f "$DATA_DIR/synthetic/train.h5" ] || timeout 60 "$PYTHON" -m data_prep synthetic --out "$DATA_DIR/synthetic"
# 5) gradient-histogram overhead at the callback's default frequency, synchronised GPU timing.
timeout 90 "$PYTHON" benchmarks/bench_gradient_histograms.py --trainer gpu --data-dir "$DATA_DIR" \
    || echo "gpu_check: gradient-histogram benchmark did not finish within 90 s"
# 6) `make train` on the GPU: the default experiment as shipped, with trainer=gpu.
RUN_DIR=outputs/gpu_check_default_run
start=$(date +%s.%N)
timeout 200 "$PYTHON" -m cpm_lightning.train trainer=gpu data.num_workers=8 data.pin_memory=true \
    paths.data_dir="$DATA_DIR" hydra.run.dir="$RUN_DIR" ~callbacks.progress_bar +trainer.enable_progress_bar=false
"$PYTHON" - "$RUN_DIR" "$start" <<'PY'
import json, sys, time, torch
from pathlib import Path
run_dir, start = Path(sys.argv[1]), float(sys.argv[2])
record = {"benchmark": "the default experiment (make train) with trainer=gpu data.num_workers=8 data.pin_memory=true",
          "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "wall_seconds_including_startup": time.time() - start,
          "metrics": json.loads((run_dir / "metrics.json").read_text())}
Path("benchmarks/results/gpu_default_run.json").write_text(json.dumps(record, indent=2))
print(json.dumps({k: v for k, v in record.items() if k != "metrics"}, indent=2))
PY
