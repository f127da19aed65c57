#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU, in ~7 minutes:
#   1. the CUDA tests (tests/cuda) on the REAL target (NUMBA_ENABLE_CUDASIM unset);
#      without pytest, a built-in comparison of every CUDA op with the NumPy reference
#   2. a whole training step of a token classifier, engine cpu/cuda vs torch cpu/cuda
#      (benchmarks/bench_model_step.py), then the CUDA-vs-CPU layer sweep
#      (benchmarks/bench_cuda_vs_cpu.py): table, JSON, PNG
#   3. registers / shared / local memory of every kernel (PTX assembled for this GPU)
# Everything lands in one folder: ./gpu_check.sh [OUT_DIR]   (default ./gpu_out)
# Needs only Python with numba, numba-cuda, numpy (pytest, torch, matplotlib optional);
# nothing is installed: the package is imported from the source tree (PYTHONPATH).
# Each stage's failure is logged and the next stage still runs; the total is capped.
set -x
set -u
OUT="${1:-./gpu_out}"
TOTAL_BUDGET="${GPU_CHECK_BUDGET:-420}"          # seconds for the whole script
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM
export PYTHONDONTWRITEBYTECODE=1
# the first Python that imports numba (override with PYTHON=...)
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for cand in python3 python; do
        if command -v "$cand" >/dev/null && "$cand" -c "import numba" 2>/dev/null; then
            PY="$cand"; break
        fi
    done
fi
PY="${PY:-python3}"
# without coreutils' timeout, stages run unlimited (the total budget is then not enforced)
if command -v timeout >/dev/null; then
    limit_cmd() { local s="$1"; shift; timeout --kill-after=10 "$s" "$@"; }
else
    limit_cmd() { shift; "$@"; }
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS

# Some images pair numba-cuda with a NumPy that removed numpy.row_stack (NumPy 2.5), and
# `from numba import cuda` fails; then a sitecustomize.py on PYTHONPATH restores the alias.
if ! "$PY" -c "from numba import cuda" 2> "$OUT/numba_cuda_import.err"; then
    SHIM="$OUT/pyshim"
    mkdir -p "$SHIM"
    cat > "$SHIM/sitecustomize.py" <<'PYEOF'
# added by benchmarks/gpu_check.sh: numba-cuda still calls numpy.row_stack (gone in NumPy 2.5)
import numpy
if not hasattr(numpy, "row_stack"):
    numpy.row_stack = numpy.vstack
PYEOF
    export PYTHONPATH="$SHIM:$PYTHONPATH"
    if "$PY" -c "from numba import cuda"; then
        echo "numba.cuda: import needed the numpy.row_stack shim ($SHIM)" | tee -a "$SUMMARY"
    else
        echo "numba.cuda: NOT importable even with the shim (numba_cuda_import.err)" | tee -a "$SUMMARY"
    fi
fi

left() { echo $(( TOTAL_BUDGET - (SECONDS - START) )); }

# run_stage NAME SECONDS CMD... : log to $OUT/NAME.log, record status, never abort the script
run_stage() {
    local name="$1" limit="$2"; shift 2
    local remaining; remaining=$(left)
    if (( remaining < 15 )); then
        echo "$name: SKIPPED (time budget spent)" | tee -a "$SUMMARY"
        return
    fi
    (( limit > remaining - 5 )) && limit=$(( remaining - 5 ))
    local t0=$SECONDS
    limit_cmd "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local what="ok"
    (( rc == 124 || rc == 137 )) && what="TIMED OUT after ${limit}s"
    (( rc != 0 && rc != 124 && rc != 137 )) && what="FAILED (exit $rc)"
    echo "$name: $what in $(( SECONDS - t0 ))s (log: $name.log)" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

# ---------------------------------------------------------------- 0. the machine
run_stage 00_env 30 bash -c '
    date -u; uname -a; nvidia-smi || echo "nvidia-smi: not available"
    '"$PY"' -c "import sys, numpy, numba; print(sys.version); print(\"numpy\", numpy.__version__, \"numba\", numba.__version__)"
    '"$PY"' -m pip list 2>/dev/null | grep -i -E "numba|cuda|numpy|torch|pytest|matplotlib" || true
    '"$PY"' -c "from numba import cuda; cuda.detect(); d = cuda.get_current_device(); print(\"device:\", d.name, \"cc\", d.compute_capability)"
    '"$PY"' -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), torch.version.cuda, \"cudnn\", torch.backends.cudnn.version())" || echo "torch: not importable"
'

# ---------------------------------------------------------------- 1. correctness on the GPU
if "$PY" -c "import pytest" 2>/dev/null; then
    run_stage 01_cuda_tests 150 "$PY" -m pytest tests/cuda -q -rs -p no:cacheprovider --durations=10
else
    echo "pytest is not importable: running the built-in comparison instead" | tee -a "$SUMMARY"
fi
# a second, independent check at realistic sizes (runs with or without pytest)
run_stage 02_cuda_vs_reference 90 "$PY" - <<'EOF'
import time
import numpy as np
from numba import cuda
from gruengine import reference as ref
from gruengine.kernels import cuda as kc

assert cuda.is_available(), "no CUDA GPU visible to numba"
print("device:", cuda.get_current_device().name)
failures = []


def check(what, got, want, rtol):
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        err = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)) if w.size else 0.0
        ok = err <= rtol
        print(f"{what}[{i}]: max rel err {err:.2e} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append((what, i, err))


rng = np.random.default_rng(0)
for dt, rtol in ((np.float32, 2e-4), (np.float64, 1e-10)):
    for B, T, I, H in ((3, 5, 4, 7), (64, 50, 128, 256), (5, 40, 16, 33)):
        for reset_after in (True, False):
            for reverse in (False, True):
                s = 1 / np.sqrt(H)
                args = (rng.standard_normal((B, T, I)).astype(dt), rng.standard_normal((B, H)).astype(dt),
                        rng.uniform(-s, s, (3 * H, I)).astype(dt), rng.uniform(-s, s, (3 * H, H)).astype(dt),
                        rng.uniform(-s, s, 3 * H).astype(dt), rng.uniform(-s, s, 3 * H).astype(dt),
                        rng.integers(1, T + 1, B).astype(np.int64))
                dy = rng.standard_normal((B, T, H)).astype(dt)
                dh = rng.standard_normal((B, H)).astype(dt)
                t0 = time.perf_counter()
                y, hn, c = kc.gru_forward(*args, reset_after, reverse)
                g = kc.gru_backward(dy, dh, *args, c, reset_after, reverse)
                t1 = time.perf_counter()
                yr, hr, cr = ref.gru_forward(*args, reset_after, reverse)
                gr = ref.gru_backward(dy, dh, *args, cr, reset_after, reverse)
                check(f"gru {np.dtype(dt).name} B={B} T={T} I={I} H={H} reset_after={reset_after} "
                      f"reverse={reverse} ({t1 - t0:.2f}s)", (y, hn) + tuple(g), (yr, hr) + tuple(gr), rtol)
    x = rng.standard_normal((300, 70)).astype(dt)
    W = rng.standard_normal((45, 70)).astype(dt)
    b = rng.standard_normal(45).astype(dt)
    dy2 = rng.standard_normal((300, 45)).astype(dt)
    check("linear", (kc.linear_forward(x, W, b),) + kc.linear_backward(dy2, x, W),
          (ref.linear_forward(x, W, b),) + ref.linear_backward(dy2, x, W), rtol)
    lg = rng.standard_normal((1000, 7)).astype(dt)
    tg = rng.integers(0, 7, 1000)
    w = rng.random(1000).astype(dt)
    check("softmax_cross_entropy", kc.softmax_cross_entropy(lg, tg, w), ref.softmax_cross_entropy(lg, tg, w), rtol)
    tb = rng.random(1000).astype(dt)
    check("bce_with_logits", kc.bce_with_logits(lg[:, 0].copy(), tb, w), ref.bce_with_logits(lg[:, 0].copy(), tb, w), rtol)
    p2 = rng.standard_normal((1000, 3)).astype(dt)
    check("mse", kc.mse(p2, lg[:, :3].copy(), w), ref.mse(p2, lg[:, :3].copy(), w), rtol)
    yy = rng.standard_normal((16, 30, 40)).astype(dt)
    L = rng.integers(1, 31, 16)
    for mode in ("last", "mean", "max"):
        p, idx = kc.pool_forward(yy, L, mode)
        pr, ir = ref.pool_forward(yy, L, mode)
        dp = rng.standard_normal((16, 40)).astype(dt)
        check(f"pool {mode}", (p, idx, kc.pool_backward(dp, L, mode, idx, 30)),
              (pr, ir, ref.pool_backward(dp, L, mode, ir, 30)), rtol)
    ids = rng.integers(0, 50, (16, 30))
    E = rng.standard_normal((50, 24)).astype(dt)
    de = rng.standard_normal((16, 30, 24)).astype(dt)
    check("embedding", (kc.embedding_forward(ids, E), kc.embedding_backward(de, ids, 50, 3)),
          (ref.embedding_forward(ids, E), ref.embedding_backward(de, ids, 50, 3)), rtol)
    n = 100_003
    bufs = [rng.standard_normal(n).astype(dt) for _ in range(3)] + [rng.random(n).astype(dt)]
    mine = [a.copy() for a in bufs]
    theirs = [a.copy() for a in bufs]
    for step in (1, 2, 3):
        kc.adam_step(*mine, step, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, 0.5)
        ref.adam_step(*theirs, step, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, 0.5)
    check("adamw", mine, theirs, rtol)
    check("sum_of_squares", [kc.sum_of_squares(bufs[1])], [ref.sum_of_squares(bufs[1])], 1e-12)
print("FAILURES:", failures if failures else "none")
raise SystemExit(1 if failures else 0)
EOF

# ---------------------------------------------------------------- 2. a model step, then the sweep
# B=64 T=200 E=H=128, the model resident on the GPU (docs/cuda.md); model_step.json
run_stage 02b_model_step 75 "$PY" benchmarks/bench_model_step.py --out "$OUT" --repeats 10

# CPU engines only where a training step costs <= 60 GFLOP (the rest would eat the budget).
# The bench stops starting points at --budget and lists what it skipped; past the stage
# limit `timeout` sends SIGTERM, on which it still writes the rows it has.
remaining=$(left)
bench_budget=$(( remaining - 70 ))
(( bench_budget < 10 )) && bench_budget=10
run_stage 03_bench "$(( remaining - 30 ))" "$PY" benchmarks/bench_cuda_vs_cpu.py \
    --out "$OUT" --budget "$bench_budget" --cpu-max-gflop 60 --warmup 2 --repeats 5 \
    --max-seconds 2

# ---------------------------------------------------------------- 3. resources per kernel (last: least needed)
run_stage 04_kernel_resources 60 "$PY" -m gruengine.kernels.cuda.ptx
cp "$OUT/04_kernel_resources.log" "$OUT/kernel_resources.md" 2>/dev/null

echo "total: $(( SECONDS - START ))s of a ${TOTAL_BUDGET}s budget" | tee -a "$SUMMARY"
cat "$SUMMARY"
ls -la "$OUT"
