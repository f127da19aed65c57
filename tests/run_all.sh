#!/usr/bin/env bash
# The project's whole test suite, as the README and CI run it.
# The CUDA simulator and the real CUDA target cannot share a process, so the
# simulator tests run in a pytest process of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}"
python -m pytest tests --ignore=tests/cuda -q "$@"
NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q "$@"
