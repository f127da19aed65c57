#!/usr/bin/env bash
# The project's whole test suite, as the README and CI run it.
# The CUDA simulator and the real CUDA target cannot share a process, so the simulator tests
# run in a pytest process of their own, and only where numba-cuda (the cuda extra) is
# installed; without it they are skipped with one line saying how to enable them.
set -euo pipefail
cd "$(dirname "$0")/.."
export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}"
status=0
python -m pytest tests --ignore=tests/cuda -q "$@" || status=$?
if python -c "import numba_cuda" 2>/dev/null; then
    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q "$@" || status=$?
else
    echo "CUDA simulator tests skipped: numba-cuda is not installed (pip install -e \".[cuda]\" to run them)"
fi
exit "$status"
