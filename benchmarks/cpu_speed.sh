#!/usr/bin/env bash
# CPU speed of the training step per efficiency setting, then in real training runs (what the
# settings give in the Trainer): benchmarks/results/cpu_step_*.json and cpu_trainer_*.json, the
# table of docs/scaling.md ("CPU speed"). About 20 minutes on 2 cores; time it on a quiet machine.
#   bash benchmarks/cpu_speed.sh [DATA_DIR]      (DATA_DIR/synthetic is made if missing; default data)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DATA_DIR="${1:-data}"
[ -f "$DATA_DIR/synthetic/train.h5" ] || "$PYTHON" -m data_prep synthetic --out "$DATA_DIR/synthetic"
STEP=benchmarks/bench_cpu_step.py
EVAL="eval fp32,eval fp32 conv+BN folded,eval bf16 autocast,eval bf16 autocast conv+BN folded"
# cpm_small at 128 px (the default run, the real-data recipe's size): every variant.
"$PYTHON" $STEP --model cpm_small --input 128 --variants "eager fp32 NCHW,eager fp32 + oneDNN conv fp32_precision=bf16,\
eager fp32 1 thread,compile fp32,eager bf16 autocast,eager bf16 autocast 1 thread,compile bf16 autocast,\
compile bf16 autocast max-autotune-no-cudagraphs,$EVAL,eval compile bf16 autocast"
# 160 px: what carries over to a larger input.
"$PYTHON" $STEP --model cpm_small --input 160 --variants "eager fp32 NCHW,eager bf16 autocast,compile bf16 autocast,$EVAL"
# The paper model at 368 px, batch 2, a few steps (~10 s each in fp32).
"$PYTHON" $STEP --model cpm_paper --input 368 --batch 2 --warmup 1 --steps 2 \
    --variants "eager fp32 NCHW,eager bf16 autocast,compile bf16 autocast"
# Real training runs of cpm_small at 128 px: 10 steps, then 60 timed.
"$PYTHON" $STEP --trainer --data-dir "$DATA_DIR" --model cpm_small --input 128
