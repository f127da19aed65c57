"""Training throughput (tokens/s) of minGRU vs GRU as the sequence length grows.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_mingru_scaling.py --out mingru_scaling.json

Per-step GEMMs are small: on a shared machine set OPENBLAS_NUM_THREADS=1 (and
NUMBA_NUM_THREADS=1) for stable numbers, since spinning BLAS/OpenMP threads of several
processes fight over the cores. The machine's load average is printed with the table.

One training step = forward + backward of one layer (B=32, I=H=128, float32, full lengths,
fresh random inputs; the weight update is the same cheap fused loop for both and left out).
Engines: gruengine.MinGRU (CPU kernels, forward scan in log space -- the default -- and in
linear space, ``gruengine.kernels.cpu.mingru.SCAN``), gruengine.GRU (or, while that class is
not importable, the gruengine CPU GRU op kernels it wraps), and torch.nn.GRU as a peer when
torch is installed.
Each cell is the median of --reps timed steps after one warm-up step (compilation excluded).
Besides tokens/s the table gives the fraction of a FLOP ceiling: per token a GRU training step
costs ~18(I+H)H flops, a minGRU step ~12IH (two input projections: 4IH forward, 8IH backward),
over --gflops (the 2-core development machine's float32 GEMM rate, ~190 GFLOP/s).
"""
import argparse
import json
import os
import platform
import time

import numpy as np

import gruengine


def _median_time(step, reps):
    step()                                           # warm-up (JIT compile, caches)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def mingru_step(B, T, I, H, rng, scan):
    from gruengine.kernels.cpu import mingru as kernels
    m = gruengine.MinGRU(I, H, dtype=np.float32, seed=0)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)

    def step():
        kernels.SCAN = scan
        try:
            m.forward(x)
            m.backward(dy)
        finally:
            kernels.SCAN = "log"
    return step


def gru_step(B, T, I, H, rng):
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    GRU = getattr(gruengine, "GRU", None)
    if GRU is not None:
        g = GRU(I, H, dtype=np.float32, seed=0)

        def step():
            g.forward(x)
            g.backward(dy)
        return step, "gruengine.GRU"
    from gruengine.kernels.cpu import gru_backward, gru_forward
    s = 1 / np.sqrt(H)
    W_ih, W_hh = (rng.uniform(-s, s, (3 * H, n)).astype(np.float32) for n in (I, H))
    b_ih, b_hh = (rng.uniform(-s, s, 3 * H).astype(np.float32) for _ in range(2))
    h0 = np.zeros((B, H), np.float32)
    dh_n = np.zeros((B, H), np.float32)
    lengths = np.full(B, T, np.int64)

    def step():
        _, _, cache = gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths)
        gru_backward(dy, dh_n, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, cache)
    return step, "gruengine.kernels.cpu.gru_* (GRU class not importable)"


def torch_gru_step(B, T, I, H, rng):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count())))
    g = torch.nn.GRU(I, H, batch_first=True)
    x = torch.tensor(rng.standard_normal((B, T, I)).astype(np.float32), requires_grad=True)
    dy = torch.tensor(rng.standard_normal((B, T, H)).astype(np.float32))

    def step():
        y, _ = g(x)
        y.backward(dy)
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--I", type=int, default=128)
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gflops", type=float, default=190.0)
    ap.add_argument("--out", default="mingru_scaling.json")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch.nn.GRU peer")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    flops = {"mingru": 12 * a.I * a.H, "mingru_linear": 12 * a.I * a.H,
             "gru": 18 * (a.I + a.H) * a.H}
    rows, gru_source = [], None
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    threads = os.environ.get("NUMBA_NUM_THREADS", "all")
    print(f"B={a.B} I={a.I} H={a.H} float32, threads={threads}, "
          f"OpenBLAS threads={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    print(f"{'T':>5} {'minGRU log':>11} {'(ceil)':>7} {'minGRU lin':>11} {'(ceil)':>7} "
          f"{'GRU':>9} {'(ceil)':>7} {'torch GRU':>10} {'log/GRU':>8} {'lin/GRU':>8}   [tokens/s]")
    for T in a.T:
        tokens = a.B * T
        row = {"T": T, "tokens": tokens}
        row["mingru_s"] = _median_time(mingru_step(a.B, T, a.I, a.H, rng, "log"), a.reps)
        row["mingru_linear_s"] = _median_time(mingru_step(a.B, T, a.I, a.H, rng, "linear"),
                                              a.reps)
        step, gru_source = gru_step(a.B, T, a.I, a.H, rng)
        row["gru_s"] = _median_time(step, a.reps)
        tstep = None if a.no_torch else torch_gru_step(a.B, T, a.I, a.H, rng)
        row["torch_gru_s"] = _median_time(tstep, a.reps) if tstep else None
        for k in ("mingru", "mingru_linear", "gru", "torch_gru"):
            if row[f"{k}_s"]:
                row[f"{k}_tok_s"] = tokens / row[f"{k}_s"]
        for k in ("mingru", "mingru_linear", "gru"):
            row[f"{k}_ceiling_frac"] = row[f"{k}_tok_s"] * flops[k] / (a.gflops * 1e9)
        rows.append(row)
        torch_txt = f"{row['torch_gru_tok_s']:10.0f}" if row["torch_gru_s"] else f"{'-':>10}"
        print(f"{T:5d} {row['mingru_tok_s']:11.0f} {row['mingru_ceiling_frac']:7.1%} "
              f"{row['mingru_linear_tok_s']:11.0f} {row['mingru_linear_ceiling_frac']:7.1%} "
              f"{row['gru_tok_s']:9.0f} {row['gru_ceiling_frac']:7.1%} {torch_txt} "
              f"{row['mingru_tok_s'] / row['gru_tok_s']:8.2f} "
              f"{row['mingru_linear_tok_s'] / row['gru_tok_s']:8.2f}")
    meta = {"B": a.B, "I": a.I, "H": a.H, "dtype": "float32", "reps": a.reps,
            "gflops_ceiling": a.gflops, "flops_per_token": flops, "gru_engine": gru_source,
            "threads": os.environ.get("NUMBA_NUM_THREADS"),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "machine": platform.processor() or platform.machine(), "numpy": np.__version__}
    meta["loadavg_after"] = os.getloadavg()[0]
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"load average after: {meta['loadavg_after']:.1f}; GRU engine: {gru_source}; "
          f"wrote {a.out}")


if __name__ == "__main__":
    main()
