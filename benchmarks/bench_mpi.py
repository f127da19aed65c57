"""Data-parallel training on MPI: the IMDB-shaped training step on 1 rank x 2 threads and on
2 ranks x 1 thread, the gradient allreduce over shared memory and over TCP only, and a
projection of the throughput on 2, 4, 8 and 16 machines.

    python benchmarks/bench_mpi.py                 # everything; prints the tables (~2 minutes, quiet 2 cores)
    python benchmarks/bench_mpi.py --json out.json # and keeps the measurements

The step is what ``gruengine train --config imdb`` runs per batch (``Trainer`` with the
model of data/configs/imdb.toml: Embedding 25,000 x 128 -> bidirectional GRU 128 -> max
pooling -> Linear 2, dropout 0.3, AdamW, clipping), on random token ids: global batch 64,
every review 200 tokens. Times are medians over the timed steps, after warm-up steps (JIT
compilation excluded), then the median over ``--rounds`` alternating repetitions of every
run; under MPI they are rank 0's, from the end of one step to the end of
the next (the allreduce and any wait for the slower rank included). The allreduce alone is
the median of ``--reps`` in-place float32 SUM Allreduces of the flat gradient, each after a
barrier. ``--mca btl self,tcp`` keeps Open MPI off shared memory: the stand-in for two
machines (over the loopback interface, so faster than a real network).

Projection (no measurement): a step on M machines = the 1-machine compute of its share of the
batch (measured here at 64, 32, 16, 8, 4 rows on 1 rank x 2 threads) + a ring allreduce of the
gradient, 2 (M - 1) / M * S / bandwidth + 2 (M - 1) * latency, with no overlap of the two (the
engine reduces after the whole backward). S is the whole flat gradient: the embedding's rows
go over the network dense, touched or not.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMDB = dict(task="imdb", vocab_size=25000, embed_dim=128, hidden_size=128, bidirectional=True,
            pooling="max", dropout=0.3, optimizer="adamw", lr=2e-3, weight_decay=0.01,
            clip=1.0, schedule="none", warmup=0, val_fraction=0.0, seed=0, epochs=1)
T = 200
BATCHES = (64, 32, 16, 8, 4)
NETWORKS = (("1 GbE", 0.125e9, 50e-6), ("10 GbE", 1.25e9, 25e-6),
            ("100 Gb/s InfiniBand", 12.5e9, 2e-6))
MACHINES = (1, 2, 4, 8, 16)


# ---------------------------------------------------------------------- one rank's measurement
def worker(a):
    import gruengine  # noqa: F401  (before NumPy: thread settings)
    import numba
    import numpy as np
    from gruengine.data import Dataset
    from gruengine.distributed import MPIWorld, world
    from gruengine.train import Trainer

    w = world()
    reduce_s = []
    if w.size > 1:
        plain = MPIWorld.allreduce

        def timed(self, arr):
            t0 = time.perf_counter()
            out = plain(self, arr)
            if arr.size > 1000:          # the gradient, not the metric sums
                reduce_s.append(time.perf_counter() - t0)
            return out
        MPIWorld.allreduce = timed
    rng = np.random.default_rng(0)
    n = a.batch * (a.warmup + a.steps)
    ids = rng.integers(1, IMDB["vocab_size"], (n, T))
    ids[0, 0] = IMDB["vocab_size"] - 1          # the vocabulary size follows the largest id
    train = Dataset(ids, np.full(n, T), rng.integers(0, 2, n), "classify", num_classes=2)
    test = Dataset(ids[:2], np.full(2, T), train.targets[:2], "classify", num_classes=2)
    ends = []
    out = tempfile.mkdtemp(prefix="bench_mpi_") if w.rank == 0 else "unused"
    out = w.bcast(out)
    t = Trainer(dict(IMDB, batch_size=a.batch, bucket=1), os.path.join(out, "run"), quiet=True,
                datasets={"train": train, "test": test}, world=w,
                hooks={"step": lambda tr, info: ends.append(time.perf_counter())})
    try:
        t.fit()
    finally:
        if w.rank == 0:
            shutil.rmtree(out, ignore_errors=True)
    steps = [b - e for e, b in zip(ends[a.warmup - 1:], ends[a.warmup:])]
    grad = t.model.params.grad
    alone = []
    if w.size > 1:
        MPIWorld.allreduce = plain
        for _ in range(a.reps):
            w.barrier()
            t0 = time.perf_counter()
            w.allreduce(grad)
            alone.append(time.perf_counter() - t0)
    res = {"ranks": w.size, "threads": numba.get_num_threads(), "batch": a.batch,
           "params": int(grad.size), "grad_bytes": int(grad.nbytes),
           "step_s": statistics.median(steps), "steps": len(steps),
           "step_reduce_s": statistics.median(reduce_s[a.warmup:]) if reduce_s else None,
           "allreduce_s": statistics.median(alone) if alone else None}
    if w.rank == 0:
        with open(a.worker, "w") as f:
            json.dump(res, f)


# ---------------------------------------------------------------------- the driver
def _run(cmd, env, what):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{what} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    print(f"  {what}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def measure(a):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--warmup",
          str(a.warmup), "--reps", str(a.reps)]
    two_threads = dict(env, NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    runs = [("1 rank x 2 threads", b, [], two_threads) for b in BATCHES]
    runs += [("2 ranks x 1 thread, shared memory", 64, [mpiexec, "-n", "2"], env),
             ("2 ranks x 1 thread, TCP only", 64,
              [mpiexec, "-n", "2", "--mca", "btl", "self,tcp"], env)]
    tmp = tempfile.mkdtemp(prefix="bench_mpi_")
    got = {}
    try:
        for r in range(a.rounds):          # the runs alternate: a busy minute hits all of them
            for mode, b, launcher, e in runs:
                f = os.path.join(tmp, "out.json")
                _run(launcher + me + ["--batch", str(b), "--worker", f], e,
                     f"round {r + 1}/{a.rounds}: {mode}, batch {b}")
                got.setdefault((mode, b), []).append(json.load(open(f)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (mode, b), results in got.items():     # the median of the rounds' medians
        row = dict(results[0], mode=mode, rounds=len(results))
        for k in ("step_s", "step_reduce_s", "allreduce_s"):
            vals = [x[k] for x in results if x[k] is not None]
            row[k] = statistics.median(vals) if vals else None
            row[k + "_rounds"] = vals
        rows.append(row)
    return rows


def project(rows):
    compute = {r["batch"]: r["step_s"] for r in rows if r["ranks"] == 1}
    S = rows[0]["grad_bytes"]
    out = []
    for name, bw, lat in NETWORKS:
        for m in MACHINES:
            share = math.ceil(64 / m)
            b = min((x for x in compute if x >= share), default=64)   # measured batch >= share
            ring = 0.0 if m == 1 else 2 * (m - 1) / m * S / bw + 2 * (m - 1) * lat
            strong = compute[b] + ring
            weak = compute[64] + ring
            out.append({"network": name, "machines": m, "rows_per_machine": share,
                        "compute_s": compute[b], "allreduce_s": ring,
                        "strong_tok_s": 64 * T / strong, "weak_tok_s": m * 64 * T / weak})
    return out


def report(rows, proj, load):
    S = rows[0]["grad_bytes"]
    print(f"\nIMDB-shaped step: {rows[0]['params']:,} parameters, gradient {S / 2**20:.1f} MiB "
          f"float32, T={T}; load average before: {load}")
    print("\n| run | batch per rank | ms/step | tokens/s | allreduce alone ms | in the step ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        per_rank = r["batch"] // r["ranks"] if r["ranks"] > 1 else r["batch"]
        tok = r["batch"] * T / r["step_s"]
        al = "" if r["allreduce_s"] is None else f"{1e3 * r['allreduce_s']:.1f}"
        ins = "" if r["step_reduce_s"] is None else f"{1e3 * r['step_reduce_s']:.1f}"
        print(f"| {r['mode']} | {per_rank} | {1e3 * r['step_s']:.1f} | {tok:,.0f} | {al} | {ins} |")
    tcp = next((r for r in rows if "TCP" in r["mode"]), None)
    if tcp and tcp["allreduce_s"]:
        print(f"\nTCP only, 2 ranks: {S / tcp['allreduce_s'] / 1e9:.2f} GB/s effective "
              f"(gradient bytes / allreduce time)")
    print("\nProjection, global batch 64 (strong: the same training) and 64 per machine (weak):")
    print("\n| network | machines | rows per machine | compute ms | allreduce ms | "
          "tokens/s (global 64) | speed-up | tokens/s (64 per machine) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in proj:
        base = next(q for q in proj if q["network"] == p["network"] and q["machines"] == 1)
        print(f"| {p['network']} | {p['machines']} | {p['rows_per_machine']} | "
              f"{1e3 * p['compute_s']:.1f} | {1e3 * p['allreduce_s']:.1f} | "
              f"{p['strong_tok_s']:,.0f} | {p['strong_tok_s'] / base['strong_tok_s']:.2f}x | "
              f"{p['weak_tok_s']:,.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--reps", type=int, default=20, help="allreduces timed alone")
    p.add_argument("--rounds", type=int, default=5, help="times every run is repeated, alternating")
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the measurements and projection here")
    a = p.parse_args()
    if a.worker:
        return worker(a)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = measure(a)
    proj = project(rows)
    report(rows, proj, load)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load_average": load, "runs": rows, "projection": proj}, f, indent=1)


if __name__ == "__main__":
    main()
