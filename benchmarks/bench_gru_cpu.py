"""GRU layer on the CPU: gruengine against torch.nn.GRU, each in its own process.

A training step is forward + backward (input gradient included); ``--inference`` times the
forward alone (the engine in eval mode, torch under ``torch.no_grad()``). Every
implementation runs in fresh processes of its own, alternating (engine, torch, engine, ...)
``--rounds`` times; each process warms up, then times ``--repeats`` steps, and the median of
all timed steps is reported as tokens/s, GFLOP/s and as a fraction of the ceiling set by this
machine's float32 GEMM (NumPy's BLAS on an n^3 product, measured in its own process in the
same run; a step costs 18 * (I + H) * H flops per token, layer and direction, a forward 6),
and as a fraction of the engine's own GEMM on the same product (it runs AVX-512 micro-kernels
where OpenBLAS picks AVX2 ones, so the first fraction can pass 100%).
Torch runs with ``torch.set_flush_denormal(True)`` (its best: without it the classifier
pattern falls into subnormal floats); ``--torch-default`` adds torch with its defaults.
Gradient patterns: ``tagger`` (dy at every step), ``classifier`` (only dh_n).

    python benchmarks/bench_gru_cpu.py                        # B=64 T=200 I=H=128, both patterns
    python benchmarks/bench_gru_cpu.py --table                # the six shapes of docs/benchmarks.md
    python benchmarks/bench_gru_cpu.py --table --inference    # forward only, the first shape
    python benchmarks/bench_gru_cpu.py --dtype float64 --pattern classifier
    python benchmarks/bench_gru_cpu.py --table --threads 1 --clock cpu   # busy machine: CPU time
    python benchmarks/bench_gru_cpu.py --breakdown            # the engine's step, in parts
    python benchmarks/bench_gru_cpu.py --compile-time         # Numba: empty cache vs warm cache
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _separate import alternate, gemm_peaks, load_line, median  # noqa: E402

SCRIPT = os.path.abspath(__file__)

# the table of the issue "CPU speed": (B, T, I, H, layers, bidirectional, pattern)
TABLE = [(64, 200, 128, 128, 1, False, "classifier"),
         (64, 200, 128, 128, 1, False, "tagger"),
         (32, 100, 64, 64, 1, False, "tagger"),
         (128, 50, 256, 256, 1, False, "tagger"),
         (16, 500, 32, 128, 1, False, "classifier"),
         (64, 100, 128, 128, 2, True, "tagger")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--input", type=int, default=128, help="input size I")
    p.add_argument("--hidden", type=int, default=128, help="hidden size H")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--pattern", choices=["tagger", "classifier", "both", "inference"],
                   default="both", help="gradient pattern (inference: set by --inference)")
    p.add_argument("--table", action="store_true", help="the six shapes of the issue")
    p.add_argument("--inference", action="store_true", help="forward only, no gradient")
    p.add_argument("--threads", type=int, default=2, help="threads of every pool")
    p.add_argument("--rounds", type=int, default=3, help="processes per implementation")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU time per step (with --threads 1: a ratio that "
                        "other processes on the machine barely change)")
    p.add_argument("--torch-default", action="store_true",
                   help="also time torch without flush_denormal")
    p.add_argument("--no-torch", action="store_true", help="time the engine alone")
    p.add_argument("--json", default=None, help="write every result to this file")
    p.add_argument("--breakdown", action="store_true",
                   help="time the parts of the engine's step in this process, and exit")
    p.add_argument("--compile-time", action="store_true",
                   help="time to the first forward+backward with an empty and a warm Numba "
                        "cache (two fresh processes), and exit")
    p.add_argument("--worker", choices=["engine", "torch", "torch+ftz"], default=None,
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- one process, one implementation

def worker(a):
    import numpy as np
    B, T, I, H, L = a.batch, a.steps, a.input, a.hidden, a.layers
    D = 2 if a.bidirectional else 1
    dt = np.dtype(a.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(dt)
    dy = rng.standard_normal((B, T, D * H)).astype(dt)
    dh_n = rng.standard_normal((L * D, B, H)).astype(dt)
    if a.worker == "engine":
        import gruengine
        gru = gruengine.GRU(I, H, num_layers=L, bidirectional=a.bidirectional, dtype=dt, seed=0)
        if a.inference:
            gru.eval()
            step = lambda: gru.forward(x)                                   # noqa: E731
        elif a.pattern == "tagger":
            step = lambda: (gru.forward(x), gru.backward(dy))               # noqa: E731
        else:
            step = lambda: (gru.forward(x), gru.backward(None, dh_n))       # noqa: E731
    else:
        import torch
        torch.set_num_threads(a.threads)
        torch.set_flush_denormal(a.worker == "torch+ftz")
        tdt = {"float32": torch.float32, "float64": torch.float64}[a.dtype]
        tg = torch.nn.GRU(I, H, num_layers=L, bidirectional=a.bidirectional,
                          batch_first=True).to(tdt)
        xt = torch.from_numpy(x)
        dyt, dh_nt = torch.from_numpy(dy), torch.from_numpy(dh_n)
        if a.inference:
            def step():
                with torch.no_grad():
                    tg(xt)
        else:
            xt.requires_grad_()                      # the engine computes dx too

            def step():
                tg.zero_grad(set_to_none=True)
                xt.grad = None
                y, h = tg(xt)
                (y.backward(dyt) if a.pattern == "tagger" else h.backward(dh_nt))
    for _ in range(a.warmup):
        step()
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    times = []
    for _ in range(a.repeats):
        t0 = clock()
        step()
        times.append(clock() - t0)
    print(json.dumps({"times": times}))


# ---------------------------------------------------------------- the driver

def flops_per_token(I, H, L, D, inference):
    # per layer and direction: 6 (in + H) H forward, 18 (in + H) H for forward + backward
    per = 6 if inference else 18
    return sum(per * ((I if k == 0 else D * H) + H) * H * D for k in range(L))


def shape_args(a, shape):
    B, T, I, H, L, bi, pattern = shape
    args = [SCRIPT, "--batch", B, "--steps", T, "--input", I, "--hidden", H, "--layers", L,
            "--pattern", pattern, "--threads", a.threads, "--repeats", a.repeats,
            "--warmup", a.warmup, "--dtype", a.dtype, "--clock", a.clock]
    args += ["--bidirectional"] if bi else []
    args += ["--inference"] if a.inference else []
    return [str(v) for v in args]


def run_shape(a, shape, peaks):
    B, T, I, H, L, bi, pattern = shape
    impls = ["engine"] + ([] if a.no_torch else ["torch+ftz"] + (["torch"] if a.torch_default
                                                                    else []))
    base = shape_args(a, shape)
    res = alternate({n: base + ["--worker", n] for n in impls}, a.rounds, a.threads)
    fpt = flops_per_token(I, H, L, 2 if bi else 1, a.inference)
    row = {"shape": dict(B=B, T=T, I=I, H=H, layers=L, bidirectional=bi, pattern=pattern),
           "flops_per_token": fpt}
    own_peak = peaks["engine"]
    for n in impls:
        rate = B * T / median(res[n])
        row[n] = {"tokens_per_s": rate, "gflops": rate * fpt / 1e9,
                  "ceiling_fraction": rate * fpt / peaks["numpy"],
                  "own_peak_fraction": rate * fpt / own_peak, "round_medians": res[n]["medians"]}
    if "torch+ftz" in row:
        best = max(row[n]["tokens_per_s"] for n in impls if n != "engine")
        row["ratio"] = row["engine"]["tokens_per_s"] / best
    return row


def print_row(row, impls):
    s = row["shape"]
    label = (f"{s['B']}, {s['T']}, {s['I']}, {s['H']}, {s['layers']}, "
             f"{'yes' if s['bidirectional'] else 'no'}, {s['pattern']}")
    cells = [f"{row[n]['tokens_per_s']:,.0f}" for n in impls]
    ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
    print(f"| {label} | " + " | ".join(cells) + f" | {ratio} | "
          f"{row['engine']['ceiling_fraction']:.0%} | {row['engine']['own_peak_fraction']:.0%} |",
          flush=True)


def driver(a):
    import numpy as np
    if a.table:
        # inference has no gradient pattern: the first two rows are then one shape
        shapes = [TABLE[0][:6] + ("inference",)] if a.inference else TABLE
    else:
        patterns = ["tagger", "classifier"] if a.pattern == "both" else [a.pattern]
        if a.inference:
            patterns = ["inference"]
        shapes = [(a.batch, a.steps, a.input, a.hidden, a.layers, a.bidirectional, p)
                  for p in patterns]
    print(f"{load_line()} (start)")
    peaks = gemm_peaks(a.threads, a.dtype, clock=a.clock)
    what = "forward only" if a.inference else "forward + backward"
    print(f"{a.dtype}, {a.threads} threads, {what}"
          f", {a.rounds} rounds x {a.repeats} steps per implementation, separate processes, "
          f"{'CPU time' if a.clock == 'cpu' else 'wall time'} per step; numpy {np.__version__}")
    print(f"GEMM ceiling (NumPy BLAS, 2048^3): {peaks['numpy'] / 1e9:.0f} GFLOP/s; "
          f"the engine's own GEMM: {peaks['engine'] / 1e9:.0f} GFLOP/s")
    impls = ["engine"] + ([] if a.no_torch else ["torch+ftz"] + (["torch"] if a.torch_default
                                                                    else []))
    names = {"engine": "engine tokens/s", "torch+ftz": "torch best", "torch": "torch default"}
    print("\n| B, T, I, H, layers, bidirectional, gradient | "
          + " | ".join(names[n] for n in impls) + " | engine / torch best | engine, of ceiling "
          "| engine, of its own GEMM |")
    print("|---|" + "---:|" * (len(impls) + 3))
    rows = []
    for shape in shapes:
        row = run_shape(a, shape, peaks)
        rows.append(row)
        print_row(row, impls)
    print(f"{load_line()} (end)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gemm_peaks": peaks, "args": vars(a), "rows": rows}, f, indent=1)


# ---------------------------------------------------------------- engine-only diagnostics

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


def _best(fn, k=7):
    fn()
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def breakdown(a):
    # best of 7 of each part of one layer's training step (reset_after, dy every step), in
    # this process: the op's own calls, in the order gru_forward / gru_backward make them
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import numpy as np
    import gruengine  # noqa: F401
    from gruengine.kernels.cpu import gru as C, _gru_loop as Lp
    from gruengine.kernels.cpu._gemm import gemm
    from gruengine.kernels.cpu._packed import gate_panels, gather, row_blocks, scatter
    B, T, I, H = a.batch, a.steps, a.input, a.hidden
    dt = np.dtype(a.dtype)
    rng = np.random.default_rng(0)
    u = lambda *s: rng.uniform(-0.3, 0.3, s).astype(dt)          # noqa: E731
    x, dy, h0 = u(B, T, I), u(B, T, H), u(B, H)
    W_ih, W_hh, b_ih, b_hh = u(3 * H, I), u(3 * H, H), u(3 * H), u(3 * H)
    lengths = np.full(B, T)
    args = (x, h0, W_ih, W_hh, b_ih, b_hh, lengths)
    y, h_n, cache = C.gru_forward(*args)
    pk, Xp, Hp, G = cache["pack"], cache["Xp"], cache["Hp"], cache["G"]
    N = pk.N
    one, tiny = C._scalars(dt)
    bounds = row_blocks(B, Lp.MR)
    Wx, Wh = gate_panels(W_ih, (0, 1, 2), H), gate_panels(W_hh, (2, 0, 1), H)
    bias = C._bias(b_ih, b_hh, H, True)
    dA, dXp = np.empty((N, 4 * H), dt), np.empty((N, I), dt)
    dhz, dhg, db = np.empty((B, H), dt), np.empty((B, H), dt), np.zeros((B, 4 * H), dt)
    dW = np.empty((3 * H, max(I, H)), dt)
    parts = {
        "forward (gru_forward)": lambda: C.gru_forward(*args),
        "inference (gru_infer)": lambda: C.gru_infer(*args),
        "backward (gru_backward)": lambda: C.gru_backward(dy, h_n, *args, cache),
        "  gather x into packed rows": lambda: gather(x, pk, False),
        "  forward recurrence (x and h products, gates)": lambda: Lp.fwd_after(
            bounds, pk.nb, pk.off, Xp, Wx, Wh, bias, Hp, G, True, pk.perm, pk.lengths, False,
            y, h_n, one, tiny),
        "  backward recurrence (gates, dh and dX products)": lambda: Lp.bwd_after(
            bounds, pk.nb, pk.off, dy, h_n, Hp, G, W_hh, W_ih, pk.perm, pk.lengths, False,
            dhz, dhg, dA, dXp, db, one, tiny),
        "  scatter dX": lambda: scatter(dXp, pk, False, T),
        "  dW_ih = dA.T @ Xp": lambda: gemm(3 * H, I, N, dA, 0, 1, 4 * H, Xp, 0, I, dW, 0,
                                            dW.shape[1], False),
        "  dW_hh = dA.T @ H_prev": lambda: gemm(3 * H, H, N, dA, 0, 1, 4 * H, Hp, 0, H, dW, 0,
                                                dW.shape[1], False),
    }
    flops = {"  forward recurrence (x and h products, gates)": 6 * N * (I + H) * H,
             "  backward recurrence (gates, dh and dX products)": 6 * N * (I + H) * H,
             "  dW_ih = dA.T @ Xp": 6 * N * I * H, "  dW_hh = dA.T @ H_prev": 6 * N * H * H}
    print(f"breakdown, B={B} T={T} I={I} H={H} {dt}, {a.threads} threads, best of 7 "
          f"({load_line()})")
    for name, fn in parts.items():
        t = _best(fn)
        note = f"  {flops[name] / t / 1e9:6.1f} GFLOP/s" if name in flops else ""
        print(f"  {name:50s} {t * 1e3:7.2f} ms{note}")
    print(f"  (a training step is {18 * N * (I + H) * H / 1e9:.2f} GFLOP)")


def main():
    a = parse_args()
    if a.worker:
        worker(a)
    elif a.compile_time:
        compile_times()
    elif a.breakdown:
        breakdown(a)
    else:
        driver(a)


if __name__ == "__main__":
    main()
