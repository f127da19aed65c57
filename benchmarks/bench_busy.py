"""How a training run shares the machine: ``gruengine train`` alone, beside CPU-bound processes,
and two trainings at once.

    python benchmarks/bench_busy.py                     # the default task, every scenario, once
    python benchmarks/bench_busy.py --repeats 3         # median of three per scenario
    python benchmarks/bench_busy.py --env OPENBLAS_NUM_THREADS=1 --env OMP_WAIT_POLICY=ACTIVE
    python benchmarks/bench_busy.py -- --config adding_t200     # arguments after -- go to train
    python benchmarks/bench_busy.py --tree /path/to/older/checkout  # time another source tree

Scenarios (each a fresh ``gruengine train --quiet`` process, default settings unless --env):

* ``alone``: nothing else started by this script;
* ``beside 1 busy`` / ``beside 2 busy``: one or two ``python -c "while True: pass"`` burners
  running for the whole training;
* ``two at once``: two trainings started together (the wall time of each is reported).

A fair share of 2 cores gives a training beside one burner 2/3 of them (1.5x its time alone)
and beside two burners half (2x: each of its 2 threads shares a core with a burner); the issue
this answers asked for at most 2.5x and 4x. The load average before and after is printed: the
script measures the machine as it is, so run it when nothing else is running.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _separate import ROOT, load_line  # noqa: E402

BURNER = "while True: pass"


def train_cmd(out, extra):
    return [sys.executable, "-m", "gruengine_cli.main", "train", "--quiet", "--out", out] + extra


def start_train(tmp, tag, extra, env):
    out = os.path.join(tmp, tag)
    return subprocess.Popen(train_cmd(out, extra), cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait(proc, t0):
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"gruengine train failed (exit {proc.returncode}):\n{out[-3000:]}")
    return time.perf_counter() - t0


def scenario(name, tmp, extra, env, k):
    burners = {"beside 1 busy": 1, "beside 2 busy": 2}.get(name, 0)
    procs = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(burners)]
    try:
        if burners:
            time.sleep(0.5)                        # the burners are running before training starts
        t0 = time.perf_counter()
        if name == "two at once":
            a = start_train(tmp, f"{k}-a", extra, env)
            b = start_train(tmp, f"{k}-b", extra, env)
            return [wait(a, t0), wait(b, t0)]
        return [wait(start_train(tmp, f"{k}-{name.replace(' ', '_')}", extra, env), t0)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1, help="runs per scenario (median reported)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set in the trainings' environment (e.g. OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--tree", default=ROOT,
                   help="source tree whose gruengine/ and cli/ run (default: this one)")
    p.add_argument("--scenarios", nargs="+",
                   default=["alone", "beside 1 busy", "beside 2 busy", "two at once"])
    a = p.parse_args(argv)
    env = dict(os.environ)
    for item in a.env:
        k, _, v = item.partition("=")
        env[k] = v
    print(load_line() + " (start)")
    print("command: gruengine train --quiet " + " ".join(extra)
          + (f"   env: {' '.join(a.env)}" if a.env else ""))
    times = {s: [] for s in a.scenarios}
    with tempfile.TemporaryDirectory() as tmp:
        # the tree's cli/ is importable as gruengine_cli, its gruengine/ ahead of any installed
        os.symlink(os.path.join(os.path.abspath(a.tree), "cli"), os.path.join(tmp, "gruengine_cli"))
        env["PYTHONPATH"] = os.pathsep.join([tmp, os.path.abspath(a.tree),
                                             env.get("PYTHONPATH", "")])
        # one untimed run first: the Numba cache is warm for every timed one
        wait(start_train(tmp, "warm", extra, env), time.perf_counter())
        for k in range(a.repeats):
            for s in a.scenarios:                  # scenarios alternate within each repeat
                got = scenario(s, tmp, extra, env, k)
                times[s] += got
                print(f"  {s:14s} run {k + 1}: " + ", ".join(f"{t:.1f} s" for t in got),
                      flush=True)
    print(load_line() + " (end)")
    base = statistics.median(times["alone"]) if times.get("alone") else None
    print(f"\n| scenario | wall time (s), median of {a.repeats} | vs alone |")
    print("|---|---:|---:|")
    for s, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"| {s} | {med:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
