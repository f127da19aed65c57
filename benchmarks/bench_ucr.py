"""UCR/UEA time-series classification with the defaults: ``gruengine train --task ucr --data
DIR`` and nothing else, on several sets x seeds, against 1-nearest-neighbour DTW.

    python benchmarks/bench_ucr.py --root DATA_DIR                 # the four dev sets x 3 seeds
    python benchmarks/bench_ucr.py --root DATA_DIR --sets OSULeaf --seeds 0
    python benchmarks/bench_ucr.py --root DIR --sets GunPoint --dtw GunPoint=0.907
    python benchmarks/bench_ucr.py --root DIR --sets BasicMotions --measure-dtw
    python benchmarks/bench_ucr.py --root DATA_DIR --label no-aug -- --no-augment   # ablation

Each run is one ``gruengine train`` process (so its time is the whole command: start-up,
data, Numba's cached kernels, training, test), in OUT/runs/<label>/<set>-s<seed>. Its result
(test accuracy from the run's metrics.jsonl, wall and CPU seconds, the load average around
it) is appended to OUT/results.jsonl; a run already there is not repeated. The table: mean
+- standard deviation over seeds, mean and max wall time, the DTW column and whether the
mean beats it. Arguments after ``--`` go to every ``gruengine train`` command.

``--root`` defaults to $UCR_DEV, else ../shared/data/ucr_dev beside the repository.
Threads: NUMBA_NUM_THREADS (default 2 here); the environment passes through (on a machine
shared with other work, NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 wastes less time waiting).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEV_SETS = ("PickupGestureWiimoteZ", "OSULeaf", "ACSF1", "PLAID")
# 1-NN full-window DTW accuracy on the published test splits (measured on the 2-core
# development machine; see docs/benchmarks.md)
DTW = {"PickupGestureWiimoteZ": 0.700, "OSULeaf": 0.591, "ACSF1": 0.640, "PLAID": 0.931}


def dtw_distances(train, test):
    """(n_test, n_train) full-window DTW distances (dependent: squared Euclidean distance
    between the multivariate points) between the series of two Datasets, as read (variable
    lengths as they are)."""
    import numpy as np
    from numba import njit, prange

    @njit(cache=True)
    def dtw(a, b):
        n, m = a.shape[0], b.shape[0]
        D = np.full((n + 1, m + 1), np.inf)
        D[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                c = 0.0
                for f in range(a.shape[1]):
                    d = a[i - 1, f] - b[j - 1, f]
                    c += d * d
                D[i, j] = c + min(D[i - 1, j], D[i, j - 1], D[i - 1, j - 1])
        return D[n, m]

    @njit(parallel=True, cache=True)
    def all_pairs(X, LX, Y, LY):
        out = np.empty((Y.shape[0], X.shape[0]))
        for q in prange(Y.shape[0]):
            for r in range(X.shape[0]):
                out[q, r] = dtw(X[r, :LX[r]], Y[q, :LY[q]])
        return out

    return all_pairs(train.inputs.astype(np.float64), train.lengths,
                     test.inputs.astype(np.float64), test.lengths)


def dtw_1nn_accuracy(path):
    """1-NN accuracy under full-window DTW on the test split of a UCR/UEA set."""
    from gruengine.data import load_dataset
    d = load_dataset("ucr", path)
    tr, te = d["train"], d["test"]
    nn = dtw_distances(tr, te).argmin(axis=1)
    return float((tr.targets[nn] == te.targets).mean())


def _default_root():
    return os.environ.get("UCR_DEV") or os.path.normpath(
        os.path.join(REPO, "..", "shared", "data", "ucr_dev"))


def _test_accuracy(run_dir):
    """(test accuracy, [each ensemble member's own] or None for one model)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        tests = [json.loads(line) for line in f if '"event": "test"' in line]
    members = tests[-1].get("members")
    return tests[-1]["test_acc"], None if members is None else [m["test_acc"] for m in members]


def run_one(root, name, seed, label, out, extra):
    run_dir = os.path.join(out, "runs", label, f"{name}-s{seed}")
    cmd = [sys.executable, "-m", "gruengine_cli", "train", "--task", "ucr", "--data",
           os.path.join(root, name), "--seed", str(seed), "--out", run_dir, "--quiet", *extra]
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", "2")
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    plan = next((ln for ln in p.stderr.splitlines() if ln.startswith("plan:")), None)
    acc, members = _test_accuracy(run_dir)
    return {"set": name, "seed": seed, "label": label, "acc": acc, "members": members,
            "wall_s": wall, "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "load_before": load0, "load_after": os.getloadavg()[0], "extra": extra,
            "threads": env["NUMBA_NUM_THREADS"], "plan": plan, "time": time.strftime("%F %T")}


def table(rows, sets, dtw):
    import statistics as st
    lines = ["| set | 1NN-DTW | accuracy (mean ± std) | seeds | beats DTW | one model (member 1) "
             "| time mean (max) | load avg |",
             "| --- | ---: | ---: | ---: | :---: | ---: | ---: | ---: |"]
    for name in sets:
        rs = [r for r in rows if r["set"] == name]
        if not rs:
            continue
        accs = [r["acc"] for r in rs]
        m = st.mean(accs)
        sd = st.stdev(accs) if len(accs) > 1 else 0.0
        walls = [r["wall_s"] for r in rs]
        ref = dtw.get(name)
        beats = "?" if ref is None else ("yes" if m > ref else "no")
        loads = [(r["load_before"] + r["load_after"]) / 2 for r in rs]
        # member 1 of an ensemble trained with seed s is the one model of seed s
        ones = [r["members"][0] for r in rs if r.get("members")]
        one = (f"{st.mean(ones):.3f} ± {st.stdev(ones) if len(ones) > 1 else 0.0:.3f}"
               if ones else "")
        lines.append(f"| {name} | {'' if ref is None else f'{ref:.3f}'} | {m:.3f} ± {sd:.3f} | "
                     f"{len(rs)} | {beats} | {one} | {st.mean(walls):.0f} s ({max(walls):.0f} s) | "
                     f"{st.mean(loads):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=_default_root(), help="folder of <Name>/<Name>_TRAIN.ts ...")
    ap.add_argument("--sets", default=",".join(DEV_SETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--label", default="default", help="name of this configuration")
    ap.add_argument("--out", default=os.path.join("runs", "bench_ucr"))
    ap.add_argument("--dtw", action="append", default=[], metavar="NAME=ACC",
                    help="1NN-DTW accuracy of a set not in the built-in list")
    ap.add_argument("--measure-dtw", action="store_true",
                    help="measure 1NN-DTW (full window) for the sets not in the built-in list")
    a = ap.parse_args(argv)
    sets = [s for s in a.sets.split(",") if s]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    dtw = dict(DTW)
    for kv in a.dtw:
        k, _, v = kv.partition("=")
        dtw[k] = float(v)
    if not os.path.isdir(a.root):
        raise SystemExit(f"--root: {a.root} is not a folder (set --root or $UCR_DEV)")
    if a.measure_dtw:
        for name in sets:
            if name not in dtw:
                dtw[name] = dtw_1nn_accuracy(os.path.join(a.root, name))
                print(f"{name}: 1NN-DTW {dtw[name]:.3f} (measured here)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    results = os.path.join(a.out, "results.jsonl")
    done = []
    if os.path.exists(results):
        with open(results) as f:
            done = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in done if r["label"] == a.label and r["set"] in sets and r["seed"] in seeds]
    for name in sets:
        for seed in seeds:
            if any(r["set"] == name and r["seed"] == seed for r in rows):
                continue
            r = run_one(a.root, name, seed, a.label, a.out, extra)
            rows.append(r)
            with open(results, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{name} seed {seed}: acc {r['acc']:.3f}, {r['wall_s']:.0f} s wall, "
                  f"{r['cpu_s']:.0f} s cpu, load {r['load_before']:.1f}", flush=True)
    print(f"\n{a.label}{' (' + ' '.join(extra) + ')' if extra else ''}")
    print(table(rows, sets, dtw))


if __name__ == "__main__":
    main()
