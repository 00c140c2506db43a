#!/usr/bin/env bash
# Wheels of the project's dependencies that a bare GPU image (torch, lightning, h5py, numpy, ...)
# lacks, for a machine without network access: run this where pip reaches the package index,
# copy .whl/ along with the clone; benchmarks/gpu_profile.sh installs them from there.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]      (default 3.12: the GPU machine's Python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${1:-3.12}"
PIP="${PIP:-python3 -m pip}"
mkdir -p .whl
# The versions the test suite runs with. Pure Python: any platform; antlr4 4.9.3 (what
# omegaconf 2.3 pins) ships as a source archive only, so it is built into a wheel here.
$PIP download -q --no-deps --only-binary=:all: -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 hydra-submitit-launcher==1.2.0 submitit==1.5.4
$PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
# simplejpeg has a compiled extension: the wheel for the GPU machine's Python and platform.
$PIP download -q --no-deps --only-binary=:all: -d .whl --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 simplejpeg==1.9.0
ls -l .whl
