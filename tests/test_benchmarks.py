"""The comparison scripts run end to end on a machine without a GPU (tiny sizes): every grid
point gets CPU rows whose outputs agree with the engine's, and CUDA is reported as not run."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_bench_cuda_vs_cpu_quick_grid(tmp_path):
    from gruengine.backend import cuda_available
    out = _run(["-m", "gruengine_cli.main", "bench", "--quick", "--out", str(tmp_path)], tmp_path)
    d = json.load(open(tmp_path / "bench_cuda_vs_cpu.json"))
    cpu = {(r["B"], r["H"], r["T"], r["mode"]) for r in d["rows"] if r["engine"] == "engine-cpu"}
    assert cpu == {(B, H, 20, m) for B in (1, 16) for H in (32, 64) for m in ("train", "infer")}
    assert all(r["agrees"] and r["ms"] > 0 for r in d["rows"])
    if not cuda_available():
        assert any(n.startswith("engine-cuda: not run") for n in d["notes"])
        assert "engine-cuda: not run" in out


def test_bench_model_step_tiny(tmp_path):
    args = ["benchmarks/bench_model_step.py", "--batch", "4", "--steps", "6", "--vocab", "50",
            "--embed", "8", "--hidden", "8", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]
    _run(args, tmp_path)
    rows = {r["engine"]: r for r in json.load(open(tmp_path / "model_step.json"))["rows"]}
    assert rows["engine-cpu"]["ms_per_step"] > 0
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("torch not importable: no peer row to check")
    # the same weights and batch give the same first step in both frameworks
    assert rows["torch-cpu"]["first_step_rel_diff"] < 1e-5


def test_bench_click_options_reach_the_script_unchanged():
    # gruengine bench's click options become the script's argparse arguments: the defaults
    # agree, and every given value arrives as the script would parse it
    from gruengine_cli.bench import ENGINES, bench, load_script, script_args
    script = load_script()
    assert ENGINES == script.ENGINES
    # contexts made as the app makes them (click keeps the first help option it builds)
    hopts = {"help_option_names": ["-h", "--help"]}
    ctx = bench.make_context("bench", [], **hopts)
    assert vars(script.parse_args(script_args(ctx.params))) == vars(script.parse_args([]))
    ctx = bench.make_context("bench", ["--quick", "--batch", "2,5", "--engines",
                                       "engine-cpu,torch-cpu", "--modes", "infer", "--budget",
                                       "9", "--tol", "0.01", "--out", "o", "--seed", "4"], **hopts)
    got = vars(script.parse_args(script_args(ctx.params)))
    want = vars(script.parse_args(["--quick", "--batch", "2", "5", "--engines", "engine-cpu",
                                   "torch-cpu", "--modes", "infer", "--budget", "9", "--tol",
                                   "0.01", "--out", "o", "--seed", "4"]))
    assert got == want and got["batch"] == [2, 5] and got["hidden"] == [32, 64]
