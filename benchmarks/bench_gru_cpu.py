"""GRU training step (forward + backward) on the CPU: gruengine against torch.nn.GRU.

Both run in the same process, alternating round by round; the median of the rounds is
reported as tokens/s, GFLOP/s and as a fraction of the ceiling set by this machine's float32
GEMM speed (a training step costs about 18 * (I + H) * H flops per token, layer and direction).
Two gradient patterns: dy at every step (a tagger) and dh_n only (a classifier, the gradient
enters at the last step). PyTorch is timed with its defaults and with
torch.set_flush_denormal(True) (its best on the classifier pattern).

    NUMBA_NUM_THREADS=2 python benchmarks/bench_gru_cpu.py               # B=64 T=200 I=H=128
    python benchmarks/bench_gru_cpu.py --batch 32 --steps 100 --threads 1
    python benchmarks/bench_gru_cpu.py --compile-time                   # Numba compile/cache times
    python benchmarks/bench_gru_cpu.py --gate-kernels                   # serial vs parallel kernel
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--input", type=int, default=128, help="input size I")
    p.add_argument("--hidden", type=int, default=128, help="hidden size H")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="BLAS, Numba and torch threads")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-torch", action="store_true", help="time the engine alone")
    p.add_argument("--parallel-gates", action="store_true",
                   help="swap in gate kernels compiled with parallel=True (same source) to "
                        "compare with the serial ones the engine ships")
    p.add_argument("--breakdown", action="store_true",
                   help="time the engine's forward, backward and the big GEMMs alone, and exit")
    p.add_argument("--gate-kernels", action="store_true",
                   help="time one step's GEMM and gate kernel, serial against parallel, and exit")
    p.add_argument("--compile-time", action="store_true",
                   help="measure time to the first forward+backward with an empty and a warm "
                        "Numba cache (two fresh processes) and exit")
    return p.parse_args(argv)


ARGS = parse_args()
# thread counts must be fixed before numpy / numba / torch load their pools
for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

FIRST_STEP = """
import time; t0 = time.perf_counter()
import numpy as np, gruengine
g = gruengine.GRU(8, 16, seed=0)
x = np.random.default_rng(0).standard_normal((4, 5, 8)).astype(np.float32)
y, h = g.forward(x, lengths=np.array([5, 3, 4, 1]))
g.backward(np.ones_like(y))
print(time.perf_counter() - t0)
"""


def compile_times():
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        out = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, check=True,
                               capture_output=True, text=True)
            out.append(float(r.stdout.strip().splitlines()[-1]))
    print(f"time to first forward+backward (float32, import included): "
          f"empty cache {out[0]:.1f} s, from the cache {out[1]:.2f} s")


def gate_kernels():
    # One forward step at B x H: the recurrent GEMM and the fused gate kernel, the kernel
    # compiled serial (as shipped) and parallel (same source, prange over rows).
    import numba
    from gruengine.kernels.cpu import _gru_cells as K
    B, H = ARGS.batch, ARGS.hidden
    dt = np.dtype(ARGS.dtype)
    rng = np.random.default_rng(0)
    Hp = rng.standard_normal((2 * B, H)).astype(dt)
    W_hh = (rng.standard_normal((3 * H, H)) * 0.1).astype(dt)
    gh = np.empty((B, 3 * H), dt)
    Gx = rng.standard_normal((B, 1, 3 * H)).astype(dt)
    b = (rng.standard_normal(3 * H) * 0.1).astype(dt)
    G = np.empty((2 * B, 4 * H), dt)
    perm, lengths = np.arange(B), np.ones(B, np.int64)
    y, h_n = np.empty((B, 1, H), dt), np.empty((B, H), dt)
    par = numba.njit(parallel=True, error_model="numpy")(K.fwd_step_after.py_func)
    args = (0, B, 0, 0, B, Gx, gh, b, b, Hp, G, perm, lengths, False, y, h_n,
            dt.type(1), dt.type(np.finfo(dt).tiny))

    def gemm():
        np.matmul(Hp[:B], W_hh.T, out=gh)

    runs = {"GEMM (B,H)x(H,3H)": gemm,
            "gate kernel, serial": lambda: K.fwd_step_after(*args),
            "gate kernel, parallel": lambda: par(*args),
            "GEMM + serial kernel": lambda: (gemm(), K.fwd_step_after(*args)),
            "GEMM + parallel kernel": lambda: (gemm(), par(*args))}
    print(f"one forward step, B={B} H={H} {dt}, {ARGS.threads} threads, "
          f"Numba threading layer {numba.config.THREADING_LAYER!r}")
    for name, fn in runs.items():
        fn()
        ts = [_timed(fn) for _ in range(500)]
        print(f"  {name:24s} min {min(ts) * 1e6:7.1f} us   "
              f"median {statistics.median(ts) * 1e6:7.1f} us")


def breakdown():
    # best of 7: where a training step's time goes
    import gruengine
    B, T, I, H = ARGS.batch, ARGS.steps, ARGS.input, ARGS.hidden
    dt = np.dtype(ARGS.dtype)
    rng = np.random.default_rng(0)
    gru = gruengine.GRU(I, H, dtype=dt, seed=0)
    x = rng.standard_normal((B, T, I)).astype(dt)
    dy = rng.standard_normal((B, T, H)).astype(dt)
    dh_n = rng.standard_normal((1, B, H)).astype(dt)
    X, W = x.reshape(B * T, I), gru.params["weight_ih_l0"]
    dG = rng.standard_normal((B * T, 3 * H)).astype(dt)
    gru.forward(x)
    gru.backward(dy)
    parts = {"forward": lambda: gru.forward(x),
             "backward, dy every step": lambda: gru.backward(dy),
             "backward, dh_n only": lambda: gru.backward(None, dh_n),
             "GEMM X @ W_ih.T": lambda: X @ W.T,
             "GEMM dGx @ W_ih": lambda: dG @ W,
             "GEMM dGx.T @ X": lambda: dG.T @ X}
    print(f"breakdown, B={B} T={T} I={I} H={H} {dt}, {ARGS.threads} threads (best of 7)"
          + (", parallel gate kernels" if ARGS.parallel_gates else ""))
    for name, fn in parts.items():
        print(f"  {name:24s} {min(_timed(fn) for _ in range(7)) * 1e3:7.1f} ms")
    # one more forward + backward with every GEMM and kernel call timed (median of 5 runs)
    from gruengine.kernels.cpu import gru as C, _gru_cells as K
    acc = {}

    def timer(label, fn):
        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0
            return r
        return wrapped

    class _NP:
        def __getattr__(self, name):
            return getattr(np, name)

        def matmul(self, a, b, out=None):
            label = "per-step GEMMs" if a.shape[0] <= B and a.ndim == 2 and a.shape[0] != 3 * H \
                else "big GEMMs"
            return timer(label, np.matmul)(a, b, out=out)

    saved = C.np, {k: getattr(K, k) for k in dir(K) if k.startswith(("fwd_", "bwd_", "sum_"))}
    C.np = _NP()
    for k, fn in saved[1].items():
        setattr(K, k, timer("gate kernels", fn))
    runs = []
    try:
        for _ in range(5):
            acc.clear()
            t0 = time.perf_counter()
            gru.forward(x)
            gru.backward(dy)
            total = time.perf_counter() - t0
            runs.append(dict(acc, total=total))
    finally:
        C.np = saved[0]
        for k, fn in saved[1].items():
            setattr(K, k, fn)
    run = sorted(runs, key=lambda r: r["total"])[2]
    rest = run["total"] - sum(v for k, v in run.items() if k != "total")
    print("  one training step (dy every step), median run:")
    for k, v in list(run.items()) + [("everything else", rest)]:
        print(f"    {k:22s} {v * 1e3:7.1f} ms")


def gemm_peak(dtype):
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(5))
    return 2 * n ** 3 / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def use_parallel_gates():
    import numba
    from gruengine.kernels.cpu import _gru_cells as K
    for name in ("fwd_step_after", "bwd_step_after"):
        serial = getattr(K, name)
        setattr(K, name, numba.njit(parallel=True, error_model="numpy",
                                    fastmath={"contract"})(serial.py_func))


def main():
    if ARGS.parallel_gates:
        use_parallel_gates()
    if ARGS.compile_time:
        compile_times()
        return
    if ARGS.gate_kernels:
        gate_kernels()
        return
    if ARGS.breakdown:
        breakdown()
        return
    import gruengine
    B, T, I, H, L = ARGS.batch, ARGS.steps, ARGS.input, ARGS.hidden, ARGS.layers
    dtype = np.dtype(ARGS.dtype)
    rng = np.random.default_rng(0)
    gru = gruengine.GRU(I, H, num_layers=L, dtype=dtype, seed=0)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh_n = rng.standard_normal((L, B, H)).astype(dtype)

    def engine_tagger():
        gru.forward(x)
        gru.backward(dy)

    def engine_classifier():
        gru.forward(x)
        gru.backward(None, dh_n)

    cases = {"tagger": [("engine", engine_tagger)], "classifier": [("engine", engine_classifier)]}
    torch = None
    if not ARGS.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not importable: timing the engine alone")
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
        tdtype = {"float32": torch.float32, "float64": torch.float64}[ARGS.dtype]
        tg = torch.nn.GRU(I, H, num_layers=L, batch_first=True).to(tdtype)
        with torch.no_grad():
            for k, v in gru.params.items():
                getattr(tg, k).copy_(torch.from_numpy(v))
        xt = torch.from_numpy(x).requires_grad_()       # the engine computes dx too
        dyt, dh_nt = torch.from_numpy(dy), torch.from_numpy(dh_n)

        def torch_step(pattern, ftz):
            def step():
                torch.set_flush_denormal(ftz)
                tg.zero_grad(set_to_none=True)
                xt.grad = None
                y, h = tg(xt)
                (y.backward(dyt) if pattern == "tagger" else h.backward(dh_nt))
                torch.set_flush_denormal(False)
            return step

        for pattern in cases:
            cases[pattern] += [("torch", torch_step(pattern, False)),
                               ("torch+ftz", torch_step(pattern, True))]

    peak = gemm_peak(dtype)
    flops_per_token = 18 * (I + H) * H * L
    ceiling = peak / flops_per_token
    tokens = B * T
    print(f"config: B={B} T={T} I={I} H={H} layers={L} {ARGS.dtype}, {ARGS.threads} threads"
          + (" (parallel gate kernels)" if ARGS.parallel_gates else "") + "; "
          f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else ""))
    print(f"GEMM peak {peak / 1e9:.0f} GFLOP/s -> ceiling {ceiling:,.0f} tokens/s "
          f"({flops_per_token:,} flop/token)")
    for pattern, runs in cases.items():
        for _, fn in runs:                                 # warm up (and compile)
            fn()
        times = {name: [] for name, _ in runs}
        for _ in range(ARGS.rounds):
            for name, fn in runs:
                times[name].append(_timed(fn))
        rate = {name: tokens / statistics.median(ts) for name, ts in times.items()}
        print(f"\n[{pattern}] median of {ARGS.rounds} rounds")
        for name, r in rate.items():
            print(f"  {name:10s} {r:10,.0f} tokens/s  {r * flops_per_token / 1e9:6.1f} GFLOP/s  "
                  f"{r / ceiling:5.1%} of ceiling")
        if torch is not None:
            best = max(rate["torch"], rate["torch+ftz"])
            print(f"  engine / torch default = {rate['engine'] / rate['torch']:.2f}x, "
                  f"engine / torch best = {rate['engine'] / best:.2f}x")


if __name__ == "__main__":
    main()
