#!/usr/bin/env bash
# One-GPU check in at most ~3 minutes, needing only torch, lightning, h5py and numpy (no
# network, no Hydra/albumentations/W&B): training images/s of the paper CPM at 368x368 for
# eager fp32 NCHW versus bf16 + channels_last (and + torch.compile, if it finishes in its
# time box), MFU over the dense bf16 peak (989 TFLOP/s: H100 SXM, H200), peak memory.
# Writes benchmarks/results/gpu_check*.json and memory_cuda.json.
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
# 3) + torch.compile, in its own time box: compilation takes about a minute; skipped if longer.
timeout 85 "$PYTHON" benchmarks/bench_train_step.py --device cuda --batch 16 --warmup 3 --steps 20 \
    --variants baseline,ours,ours+compile --name gpu_check_compile \
    || echo "gpu_check: torch.compile variant did not finish within 85 s; eager results above stand"
