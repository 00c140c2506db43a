#!/usr/bin/env bash
# The one-GPU profile and speed run of the paper CPM (benchmarks/gpu_profile.py): ~7.5 minutes,
# everything written to one folder. docs/scaling.md ("GPU profile") says what it measures and
# how to read the JSON.
#   OUT=DIR bash benchmarks/gpu_profile.sh        (default DIR: outputs/gpu_profile; PYTHON=...)
# On a machine without network access whose Python lacks the project's Hydra, OmegaConf and
# simplejpeg: make their wheels elsewhere (bash benchmarks/gpu_wheels.sh) and bring .whl/ along.
# A previous run's Inductor cache, copied to .inductor_cache/, is reused: compiling then takes
# seconds instead of ~100 s per compiled variant.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-outputs/gpu_profile}"
mkdir -p "$OUT"
if [ -d .whl ]; then
    SITE="$(mktemp -d)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu_profile: no CUDA GPU visible'); print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"
"$PYTHON" -c "import hydra, omegaconf, simplejpeg" || echo "gpu_profile: Hydra/OmegaConf/simplejpeg missing: the Trainer runs will fail (see above)"
CACHE=(.inductor_cache/inductor_cache.tar.gz*)
[ -e "${CACHE[0]}" ] && CACHE_ARGS=(--inductor-cache "${CACHE[@]}") || CACHE_ARGS=()
# The budget leaves ~60 s under the timeout for packing the cache and writing the JSON.
timeout 540 "$PYTHON" benchmarks/gpu_profile.py --out "$OUT" --budget-s 450 "${CACHE_ARGS[@]}" 2>&1 | tee "$OUT/gpu_profile.log"
