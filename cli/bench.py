"""``gruengine bench``: the CUDA-vs-CPU GRU throughput sweep (benchmarks/bench_cuda_vs_cpu.py).

Every argument goes to the script unchanged (``gruengine bench --help`` lists them); the
script lives in the source tree's ``benchmarks/`` folder, next to this package.
"""
import importlib.util
import os

import click

from .main import app

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "bench_cuda_vs_cpu.py")


def load_script(path=SCRIPT):
    """Import the benchmark script as a module (it is not part of the installed package)."""
    if not os.path.isfile(path):
        raise ValueError(f"bench: expected the benchmark script at {path} (a source checkout "
                         "of gruengine), got no such file")
    spec = importlib.util.spec_from_file_location("bench_cuda_vs_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@app.command("bench", add_help_option=False,
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Time the GRU layer on the CPU engine, the CUDA engine and PyTorch (--help for options).

    \b
    Example:
      gruengine bench --quick --out bench_out
    """
    try:
        status = load_script().main(list(args))
    except SystemExit as e:                 # argparse: --help (0) or a usage error (2)
        status = e.code
    if status:
        raise _Failed(int(status))


class _Failed(click.ClickException):
    """A non-zero status from the script, which has printed its own message already."""

    def __init__(self, code):
        super().__init__(f"bench exited with status {code}")
        self.exit_code = code

    def show(self, file=None):
        pass
