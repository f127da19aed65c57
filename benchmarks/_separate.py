"""Separate-process timing shared by the CPU benchmarks.

Two libraries' thread pools in one process disturb each other (torch's GRU step measured at
half speed when interleaved with the engine's), and a user runs one or the other; so every
implementation runs in a fresh process of its own, the processes alternate (A B A B ...),
and each reports the times of its steps after warm-up as one JSON line on stdout. The GEMM
ceiling is measured the same way, in its own process, in the same run.
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the environment as the user started the benchmark: importing gruengine in the driver sets
# thread-pool defaults (gruengine.threads) that a torch worker must not inherit
BASE_ENV = dict(os.environ)


def thread_env(threads):
    """Environment of a worker: every pool sized to ``threads`` before anything loads."""
    env = dict(BASE_ENV)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_worker(argv, threads, timeout=900):
    """Run ``python argv...`` in a fresh process; return the dict of its last JSON line."""
    r = subprocess.run([sys.executable] + list(argv), env=thread_env(threads), cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"worker {argv} failed (exit {r.returncode}):\n"
                           f"{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def alternate(workers, rounds, threads):
    """workers: {name: argv}. Runs the workers in turn ``rounds`` times (A B A B ...).
    -> {name: {"times": every timed step of every round, "medians": one per round}}"""
    out = {name: {"times": [], "medians": []} for name in workers}
    for _ in range(rounds):
        for name, argv in workers.items():
            times = run_worker(argv, threads)["times"]
            out[name]["times"] += times
            out[name]["medians"].append(statistics.median(times))
    return out


def median(res):
    """The median step time of one worker's results (over all timed steps of all rounds)."""
    return statistics.median(res["times"])


GEMM_WORKER = r"""
import json, sys, time
import numpy as np
n, dtype, engine = int(sys.argv[1]), np.dtype(sys.argv[2]), sys.argv[3] == "1"
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
c = np.empty((n, n), dtype)

def best(fn, k=5):
    fn()
    ts = []
    for _ in range(k):
        t0 = clock(); fn(); ts.append(clock() - t0)
    return min(ts)

out = {"numpy": 2 * n ** 3 / best(lambda: np.matmul(a, b, out=c))}
if engine:
    from gruengine.kernels.cpu._gemm import gemm
    out["engine"] = 2 * n ** 3 / best(lambda: gemm(n, n, n, a, 0, n, 1, b, 0, n, c, 0, n, False))
print(json.dumps(out))
"""


def gemm_peaks(threads, dtype="float32", n=2048, engine=True, clock="wall"):
    """GEMM speed (flop/s) of NumPy's BLAS (the ceiling) and of the engine's own GEMM, each
    an n^3 product, best of 5, in a fresh process with ``threads`` threads; ``clock='cpu'``
    times with the process's CPU time (meaningful with one thread)."""
    return run_worker(["-c", GEMM_WORKER, str(n), dtype, "1" if engine else "0", clock],
                      threads)


def load_line():
    """The load averages, for the record of how quiet the machine was."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average: unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
