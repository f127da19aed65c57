"""``gruengine bench``: the CUDA-vs-CPU GRU throughput sweep (benchmarks/bench_cuda_vs_cpu.py).

The options are click's, like every other command's; they are handed to the script as its own
argument list. The script lives in the source tree's ``benchmarks/`` folder, next to this package.
"""
import importlib.util
import os

import click

from .main import app

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "bench_cuda_vs_cpu.py")
ENGINES = ("engine-cpu", "engine-cuda", "engine-cuda-tiled", "torch-cpu", "torch-cuda")
MODES = ("train", "infer")


def load_script(path=SCRIPT):
    """Import the benchmark script as a module (it is not part of the installed package)."""
    if not os.path.isfile(path):
        raise ValueError(f"bench: expected the benchmark script at {path} (a source checkout "
                         "of gruengine), got no such file")
    spec = importlib.util.spec_from_file_location("bench_cuda_vs_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class CommaList(click.ParamType):
    """'1,16,64' -> [1, 16, 64] (integers >= 1), or names out of ``choices``."""

    def __init__(self, choices=None):
        self.choices = choices
        self.name = "NAME,..." if choices else "N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        if self.choices:
            bad = [v for v in items if v not in self.choices]
            if bad:
                self.fail(f"expected names out of {', '.join(self.choices)}, got {bad}", param, ctx)
            return items
        try:
            ints = [int(v) for v in items]
        except ValueError:
            self.fail(f"expected integers such as 1,16,64, got {value!r}", param, ctx)
        if min(ints) < 1:
            self.fail(f"expected integers >= 1, got {value!r}", param, ctx)
        return ints


@app.command("bench")
@click.option("--quick", is_flag=True,
              help="tiny grid: B 1,16  H 32,64  T 20 (seconds on a CPU)")
@click.option("--batch", type=CommaList(), help="batch sizes B [default: 1,16,64,128]")
@click.option("--hidden", type=CommaList(), help="hidden sizes H (= input size I) "
              "[default: 64,128,256,512]")
@click.option("--steps", type=CommaList(), help="sequence lengths T [default: 50,200]")
@click.option("--engines", type=CommaList(ENGINES),
              help=f"engines to time, out of {', '.join(ENGINES)} [default: every one "
                   "that is available here]")
@click.option("--modes", type=CommaList(MODES), help="train (forward + backward) and/or infer "
              "(forward) [default: train,infer]")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True,
              help="untimed calls first (JIT compilation)")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="timed calls per point (the median is reported)")
@click.option("--max-seconds", type=click.FloatRange(0, min_open=True), default=3.0,
              show_default=True, help="stop repeating one timing after this long")
@click.option("--cpu-max-gflop", type=click.FloatRange(0, min_open=True), default=None,
              help="skip the CPU engines where a training step costs more GFLOP [default: no limit]")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=None,
              help="total seconds; points not started by then are skipped and listed "
                   "[default: no limit]")
@click.option("--tol", type=click.FloatRange(0, min_open=True), default=2e-3, show_default=True,
              help="largest relative difference allowed between engines in the agreement check")
@click.option("--out", type=click.Path(file_okay=False), default="bench_out", show_default=True,
              help="folder for bench_cuda_vs_cpu.json and the PNG")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="seed of the random inputs and weights")
def bench(**opts):
    """Time the GRU layer on the CPU engine, the CUDA engine and PyTorch.

    Each point (B, H, T) is checked for agreement between the engines first, then timed;
    a table goes to stdout, JSON (and with matplotlib a PNG) to --out. Engines that cannot
    run here (no GPU, no torch) are listed as not run. Needs a source checkout (the script
    is benchmarks/bench_cuda_vs_cpu.py).

    \b
    Examples:
      gruengine bench --quick --out bench_out
      gruengine bench --batch 1,64 --hidden 128,512 --steps 50 --engines engine-cpu,torch-cpu
    """
    status = load_script().main(script_args(opts))
    if status:
        raise _Failed(int(status))


def script_args(opts):
    """The script's argument list for the click options ``opts`` (None: the script's default)."""
    argv = ["--quick"] if opts.get("quick") else []
    for key, value in opts.items():
        if key == "quick" or value is None:
            continue
        argv.append("--" + key.replace("_", "-"))
        argv.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return argv


class _Failed(click.ClickException):
    """A non-zero status from the script, which has printed its own message already."""

    def __init__(self, code):
        super().__init__(f"bench exited with status {code}")
        self.exit_code = code

    def show(self, file=None):
        pass
