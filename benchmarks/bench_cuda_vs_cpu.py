"""GRU throughput: the engine on the CPU vs the engine on CUDA, with PyTorch as the peer.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_cuda_vs_cpu.py --quick --out bench_out
    python benchmarks/bench_cuda_vs_cpu.py --batch 1 64 --hidden 128 512 --steps 50
    gruengine bench --quick                      # the same script through the CLI

One point of the sweep is (B, H, T) with I = H, one layer, one direction, reset_after=True,
full lengths, float32. For each point and each engine it times

* train: one forward + backward (BPTT) of the layer (``gru_forward`` + ``gru_backward``),
* infer: one forward,

on ``engine-cpu`` (gruengine.kernels.cpu, NumPy arrays), ``engine-cuda``
(gruengine.kernels.cuda with inputs, weights and gradients resident on the GPU: the
host<->device copies of a NumPy caller are left out), ``engine-cuda-tiled`` (the same forced
onto the tiled per-step kernels, only where ``engine-cuda`` takes the one-block persistent
path: it checks that threshold), ``torch-cpu`` (torch.nn.GRU, with flushed denormals: its best) and
``torch-cuda`` (cuDNN) where importable. Before timing, the engine's devices (and torch)
are checked to agree on y, h_n and every gradient. Timings synchronise the device before
reading the clock, run warm-up calls first (JIT compilation excluded) and report the
median of the timed calls. Results: a table on stdout, JSON and (with matplotlib) a PNG.
"""
import argparse
import json
import os
import platform
import signal
import sys
import time

import numpy as np

FULL_GRID = dict(batch=[1, 16, 64, 128], hidden=[64, 128, 256, 512], steps=[50, 200])
QUICK_GRID = dict(batch=[1, 16], hidden=[32, 64], steps=[20])
ENGINES = ("engine-cpu", "engine-cuda", "engine-cuda-tiled", "torch-cpu", "torch-cuda")


def flops_per_token(I, H, mode):
    # forward ~6(I+H)H, backward about twice that (docs: DESIGN.md "Performance")
    return (18 if mode == "train" else 6) * (I + H) * H


# ----------------------------------------------------------------------------- engines

def cuda_status():
    """(usable, why-not) for the engine's CUDA backend."""
    try:
        from numba import cuda
    except Exception as e:                                   # pragma: no cover
        return False, f"numba.cuda not importable ({e})"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1 (the simulator is not timed)"
    try:
        if not cuda.is_available():
            return False, "no usable CUDA GPU"
        return True, cuda.get_current_device().name.decode() if isinstance(
            cuda.get_current_device().name, bytes) else str(cuda.get_current_device().name)
    except Exception as e:
        return False, f"CUDA unavailable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


def torch_status():
    try:
        import torch
    except ImportError:
        return None, False
    return torch, bool(torch.cuda.is_available())


def make_problem(B, T, H, seed):
    rng = np.random.default_rng(seed)
    I = H
    s = 1.0 / np.sqrt(H)
    f = np.float32
    return dict(
        x=rng.standard_normal((B, T, I)).astype(f), h0=rng.standard_normal((B, H)).astype(f) * 0.5,
        W_ih=rng.uniform(-s, s, (3 * H, I)).astype(f), W_hh=rng.uniform(-s, s, (3 * H, H)).astype(f),
        b_ih=rng.uniform(-s, s, 3 * H).astype(f), b_hh=rng.uniform(-s, s, 3 * H).astype(f),
        lengths=np.full(B, T, dtype=np.int64),
        dy=rng.standard_normal((B, T, H)).astype(f), dh_n=rng.standard_normal((B, H)).astype(f))


ARGS = ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh", "lengths")


class EngineCPU:
    name = "engine-cpu"

    def __init__(self, p):
        from gruengine.kernels import cpu
        self.k, self.p = cpu, p
        self.args = tuple(p[a] for a in ARGS)

    def infer(self):
        return self.k.gru_forward(*self.args)

    def train(self):
        y, h_n, cache = self.k.gru_forward(*self.args)
        grads = self.k.gru_backward(self.p["dy"], self.p["dh_n"], *self.args, cache)
        return (y, h_n) + tuple(grads)

    def sync(self):
        pass

    def host(self, out):
        return out


class EngineCUDA(EngineCPU):
    name = "engine-cuda"

    def __init__(self, p):
        from numba import cuda
        from gruengine.kernels import cuda as kcuda
        self.k, self.cuda = kcuda, cuda
        self.args = tuple(cuda.to_device(p[a]) for a in ARGS)       # resident on the GPU
        self.p = {"dy": cuda.to_device(p["dy"]), "dh_n": cuda.to_device(p["dh_n"])}

    def sync(self):
        self.cuda.synchronize()

    def host(self, out):
        return tuple(a.copy_to_host() for a in out)


class EngineCUDATiled(EngineCUDA):
    """The CUDA engine forced onto the tiled per-step path (launch.PERSISTENT_MAX_BH = 0):
    run only at points where ``engine-cuda`` takes the one-block persistent path, to check
    that threshold."""
    name = "engine-cuda-tiled"

    def _tiled(self, fn):
        from gruengine.kernels.cuda import launch
        saved = launch.PERSISTENT_MAX_BH
        launch.PERSISTENT_MAX_BH = 0
        try:
            return fn()
        finally:
            launch.PERSISTENT_MAX_BH = saved

    def infer(self):
        return self._tiled(super().infer)

    def train(self):
        return self._tiled(super().train)


class EngineTorch:
    def __init__(self, p, torch, device):
        self.torch, self.device = torch, device
        self.name = "torch-cuda" if device == "cuda" else "torch-cpu"
        B, T, I = p["x"].shape
        H = p["h0"].shape[1]
        g = torch.nn.GRU(I, H, batch_first=True).to(device)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                key = {"weight_ih_l0": "W_ih", "weight_hh_l0": "W_hh",
                       "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh"}[name]
                getattr(g, name).copy_(torch.from_numpy(p[key]))
        self.gru = g
        t = lambda a: torch.from_numpy(a).to(device)               # noqa: E731
        self.x = t(p["x"]).requires_grad_(True)
        self.h0 = t(p["h0"])[None].contiguous().requires_grad_(True)
        self.dy, self.dh_n = t(p["dy"]), t(p["dh_n"])[None]

    def infer(self):
        with self.torch.no_grad():
            return self.gru(self.x, self.h0)

    def train(self):
        for q in (self.x, self.h0, *self.gru.parameters()):
            q.grad = None
        y, h_n = self.gru(self.x, self.h0)
        self.torch.autograd.backward((y, h_n), (self.dy, self.dh_n))
        g = self.gru
        return (y, h_n[0], self.x.grad, self.h0.grad[0], g.weight_ih_l0.grad, g.weight_hh_l0.grad,
                g.bias_ih_l0.grad, g.bias_hh_l0.grad)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def host(self, out):
        return tuple(a.detach().cpu().numpy() for a in out)


# ----------------------------------------------------------------------------- checks, timing

OUT_NAMES = ("y", "h_n", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def max_rel_err(a, b):
    """max|a-b| / max|b| over each output, the worst of them."""
    worst = 0.0
    for x, y in zip(a, b):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    return worst


def time_call(fn, sync, warmup, repeats, max_seconds):
    """Median seconds of ``fn`` after ``warmup`` calls; fewer repeats past ``max_seconds``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < repeats:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 1:
            break
    return float(np.median(times)), len(times)


# ----------------------------------------------------------------------------- the sweep

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench_cuda_vs_cpu",
                                 description=__doc__.split("\n\n")[0] + " See the module docstring.")
    ap.add_argument("--batch", type=int, nargs="+", help=f"B values (default {FULL_GRID['batch']})")
    ap.add_argument("--hidden", type=int, nargs="+", help=f"H values (default {FULL_GRID['hidden']})")
    ap.add_argument("--steps", type=int, nargs="+", help=f"T values (default {FULL_GRID['steps']})")
    ap.add_argument("--quick", action="store_true", help=f"tiny grid {QUICK_GRID}")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                    help="engines to run (default: every one that is available)")
    ap.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=3.0,
                    help="stop repeating a timing after this long (median of what ran)")
    ap.add_argument("--cpu-max-gflop", type=float, default=float("inf"),
                    help="skip the CPU engines at points whose training step costs more GFLOP")
    ap.add_argument("--budget", type=float, default=float("inf"),
                    help="total seconds: points not started by then are skipped (and listed)")
    ap.add_argument("--tol", type=float, default=2e-3,
                    help="max relative error allowed between engines in the agreement check")
    ap.add_argument("--out", default="bench_out", help="folder for the JSON and PNG")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    grid = QUICK_GRID if a.quick else FULL_GRID
    a.batch = a.batch or grid["batch"]
    a.hidden = a.hidden or grid["hidden"]
    a.steps = a.steps or grid["steps"]
    for name in ("batch", "hidden", "steps"):
        bad = [v for v in getattr(a, name) if v < 1]
        if bad:
            ap.error(f"--{name}: expected integers >= 1, got {bad}")
    return a


def run(a, result=None):
    """Run the sweep; ``result`` (a dict) is filled as points finish, so an interrupted run
    still has every finished row."""
    t_start = time.perf_counter()
    result = {} if result is None else result
    cuda_ok, cuda_info = cuda_status()
    torch, torch_cuda = torch_status()
    notes = []
    if not cuda_ok:
        notes.append(f"engine-cuda: not run: {cuda_info}")
    if torch is None:
        notes.append("torch-cpu, torch-cuda: not run: torch is not installed")
    elif not torch_cuda:
        notes.append("torch-cuda: not run: torch sees no CUDA GPU")
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "numba_num_threads": os.environ.get("NUMBA_NUM_THREADS"),
           "gpu": cuda_info if cuda_ok else None,
           "torch": getattr(torch, "__version__", None)}
    if torch is not None:
        # the same number of CPU threads for both CPU engines
        import numba
        torch.set_num_threads(int(numba.config.NUMBA_NUM_THREADS))
        env["torch_threads"] = torch.get_num_threads()
        # torch's best CPU setting: without it the CPU GRU's backward hits the subnormal slow
        # path (10x slower at some points, docs/benchmarks.md); the engine flushes on its own
        torch.set_flush_denormal(True)
        env["torch_flush_denormal"] = True
    rows, skipped = [], []
    result.update(env=env, args=dict(vars(a)), rows=rows, skipped=skipped, notes=notes)
    points = [(B, H, T) for T in a.steps for H in a.hidden for B in a.batch]
    for B, H, T in points:
        if time.perf_counter() - t_start > a.budget:
            skipped.append(dict(B=B, H=H, T=T, why="time budget"))
            continue
        p = make_problem(B, T, H, a.seed)
        gflop = flops_per_token(H, H, "train") * B * T / 1e9
        engines = []
        wanted = set(a.engines)
        cpu_ok = gflop <= a.cpu_max_gflop
        try:
            if "engine-cpu" in wanted and cpu_ok:
                engines.append(EngineCPU(p))
            if "engine-cuda" in wanted and cuda_ok:
                engines.append(EngineCUDA(p))
            if "engine-cuda-tiled" in wanted and cuda_ok and _cuda_path(B, H) == "persistent":
                engines.append(EngineCUDATiled(p))
            if torch is not None and "torch-cpu" in wanted and cpu_ok:
                engines.append(EngineTorch(p, torch, "cpu"))
            if torch is not None and torch_cuda and "torch-cuda" in wanted:
                engines.append(EngineTorch(p, torch, "cuda"))
        except Exception as e:
            notes.append(f"B={B} H={H} T={T}: setup failed: {type(e).__name__}: {e}")
        if not cpu_ok:
            skipped.append(dict(B=B, H=H, T=T, why=f"CPU engines skipped ({gflop:.0f} GFLOP/step "
                                                    f"> --cpu-max-gflop)"))
        # agreement before timing: every engine against the first one (and each other by proxy)
        outs = {}
        for e in engines:
            try:
                outs[e.name] = e.host(e.train())
            except Exception as exc:
                notes.append(f"B={B} H={H} T={T} {e.name}: failed: {type(exc).__name__}: {exc}")
        ref_name = next(iter(outs), None)
        agree = {n: max_rel_err(o, outs[ref_name]) for n, o in outs.items() if n != ref_name}
        for e in engines:
            if e.name not in outs:
                continue
            for mode in a.modes:
                fn = e.train if mode == "train" else e.infer
                try:
                    sec, n = time_call(fn, e.sync, a.warmup, a.repeats, a.max_seconds)
                except Exception as exc:
                    notes.append(f"B={B} H={H} T={T} {e.name} {mode}: failed: {exc}")
                    continue
                path = {"engine-cuda": _cuda_path(B, H), "engine-cuda-tiled": "tiled"}.get(e.name)
                rows.append(dict(B=B, H=H, T=T, I=H, engine=e.name, mode=mode, ms=sec * 1e3,
                                 cuda_path=path,
                                 tokens_per_s=B * T / sec, timed_calls=n,
                                 gflops=flops_per_token(H, H, mode) * B * T / sec / 1e9,
                                 agree_ref=ref_name, max_rel_err=agree.get(e.name, 0.0),
                                 agrees=agree.get(e.name, 0.0) <= a.tol))
        _print_point(rows, B, H, T, a.tol)
    result["seconds"] = time.perf_counter() - t_start
    return result


def add_speedups(rows):
    for r in rows:
        base = next((q for q in rows if (q["B"], q["H"], q["T"], q["mode"]) ==
                     (r["B"], r["H"], r["T"], r["mode"]) and q["engine"] == "engine-cpu"), None)
        r["speedup_vs_engine_cpu"] = base["ms"] / r["ms"] if base else None


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _cuda_path(B, H):
    from gruengine.kernels.cuda import gru as cuda_gru
    return "persistent" if cuda_gru._persistent(B, H) else "tiled"


def _print_point(rows, B, H, T, tol):
    mine = [r for r in rows if (r["B"], r["H"], r["T"]) == (B, H, T)]
    for r in mine:
        base = next((q for q in mine if q["mode"] == r["mode"] and q["engine"] == "engine-cpu"), None)
        speed = f"{base['ms'] / r['ms']:8.2f}x" if base else "       - "
        ok = "ok" if r["agrees"] else f"DISAGREES (>{tol:g})"
        print(f"B={B:4d} H={H:4d} T={T:4d}  {r['engine']:<17} {r['mode']:<5} {r['ms']:10.3f} ms "
              f"{r['tokens_per_s']:12.0f} tok/s {r['gflops']:8.1f} GFLOP/s {speed}  "
              f"err {r['max_rel_err']:.1e} vs {r['agree_ref']} {ok}", flush=True)


def write_outputs(result, out):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "bench_cuda_vs_cpu.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=lambda o: None if o == float("inf") else str(o))
    print(f"wrote {path}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'gruengine[plot]')")
        return
    rows = result["rows"]
    if not rows:
        print("plot skipped: no timings")
        return
    Ts = sorted({r["T"] for r in rows})
    Bs = sorted({r["B"] for r in rows})
    fig, axes = plt.subplots(len(Ts) * 2, len(Bs), figsize=(3.2 * len(Bs), 2.8 * 2 * len(Ts)),
                             squeeze=False)
    for i, T in enumerate(Ts):
        for k, mode in enumerate(("train", "infer")):
            for j, B in enumerate(Bs):
                ax = axes[2 * i + k][j]
                for eng in ENGINES:
                    pts = sorted((r["H"], r["tokens_per_s"]) for r in rows
                                 if (r["T"], r["B"], r["mode"], r["engine"]) == (T, B, mode, eng))
                    if pts:
                        ax.plot(*zip(*pts), "-o", label=eng, markersize=3)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{mode} B={B} T={T}", fontsize=9)
                ax.set_xlabel("H (= I)", fontsize=8)
                ax.set_ylabel("tokens/s", fontsize=8)
                ax.tick_params(labelsize=7)
    labelled = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(lab, h)
    fig.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=len(labelled),
               fontsize=8)
    gpu = result["env"].get("gpu") or "no GPU"
    fig.suptitle(f"GRU layer throughput, float32 ({gpu}; {result['env']['cpu_count']} CPUs)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    png = os.path.join(out, "bench_cuda_vs_cpu.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"wrote {png}")


def main(argv=None):
    a = parse_args(argv)
    print(f"grid: B={a.batch} H={a.hidden} T={a.steps} engines={a.engines} modes={a.modes}",
          flush=True)
    result = {}
    signal.signal(signal.SIGTERM, _interrupt)       # a timeout kills politely: keep the rows
    try:
        run(a, result)
    except KeyboardInterrupt as e:
        result.setdefault("notes", []).append(f"interrupted ({e or 'Ctrl-C'}): partial results")
    result.setdefault("rows", [])
    result.setdefault("skipped", [])
    add_speedups(result["rows"])
    for n in result.get("notes", []):
        print("note:", n)
    for s in result["skipped"]:
        print(f"skipped: B={s['B']} H={s['H']} T={s['T']}: {s['why']}")
    write_outputs(result, a.out)
    bad = [r for r in result["rows"] if not r["agrees"]]
    if bad:
        print(f"error: {len(bad)} timings come from engines that disagree beyond --tol {a.tol:g}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
