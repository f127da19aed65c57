"""Entry point of the ``gruengine`` command.

Every command module registers itself on ``app``. ``main`` turns usage errors and the engine's
errors into one line on stderr (``error: ...``) and exit status 2 (bad input) or 1 (a run that
failed), never a traceback or click's three-line usage block.

Under MPI (``mpiexec -n N gruengine ...``) an error every rank raised is printed once, by rank
0, and every rank exits with its status; an error of one rank is printed with its rank
(``error: rank 1: ...``) and ends every rank of the job (MPI_Abort).
"""
import re
import signal
import sys
import threading
import time
import traceback

import click

from gruengine._launch import launch_rank, launch_size
from gruengine.distributed import current_world, describe
from gruengine.errors import GruengineError, Interrupted, TrainingDivergedError

# the options that set how much memory a command asks for (named when an allocation fails)
SIZE_OPTIONS = ("--hidden-size", "--num-layers", "--embed-dim", "--vocab-size", "--seq-len",
                "--n-train", "--n-test", "--max-len", "--batch-size", "--eval-batch-size",
                "--max-text-bytes", "--max-data-bytes", "--units")


class ByteSize(click.ParamType):
    """A number of bytes: 1000000, 64K, 16M, 4G (binary multiples)."""

    name = "BYTES"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
            if m is None:
                self.fail(f"expected a size in bytes such as 1000000, 64K, 16M or 4G, got "
                          f"{value!r}", param, ctx)
            n = int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))
        if n < 1:
            self.fail(f"expected a size of at least 1 byte, got {value!r}", param, ctx)
        return n


# the commands that run on several MPI ranks (docs/distributed.md)
DISTRIBUTED = ("train", "evaluate", "predict")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gruengine")
@click.pass_context
def app(ctx):
    """gruengine: train and inspect GRU/LSTM sequence models on the CPU or an NVIDIA GPU.

    \b
    Example:
      gruengine train                  # the embedded adding-problem task, no download
    """
    if ctx.invoked_subcommand not in DISTRIBUTED and launch_size() > 1:
        raise click.UsageError(f"gruengine {ctx.invoked_subcommand} runs in one process: start "
                               f"it without mpiexec (only {', '.join(DISTRIBUTED)} run on "
                               f"several ranks)")


def _register():
    # one import per command module; each adds its commands to ``app``
    from . import data  # noqa: F401
    from . import train, plot  # noqa: F401
    from . import inspect  # noqa: F401
    from . import bench  # noqa: F401
    from . import exchange  # noqa: F401


def _terminate(signum, frame):
    raise Interrupted(signum)


def _quiet_unraisable(default):
    """``sys.unraisablehook`` for a command: a Ctrl-C whose KeyboardInterrupt lands where Python
    cannot raise it (a finalizer, a callback from C such as llvmlite's object cache while
    Numba compiles) is not printed as a traceback; the stop it asks for is recorded by the
    training loop's handler, or the command is already exiting. Anything else: ``default``."""
    def hook(unraisable):
        if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
            default(unraisable)
    return hook


def main(argv=None):
    _register()
    old = None
    old_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(old_hook)
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # SIGTERM outside a training loop (which saves first): a message and 143, not silence
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app.main(args=argv, prog_name="gruengine", standalone_mode=False)
    except click.exceptions.Abort as e:
        _signal_exit(e.__cause__)
    except click.UsageError as e:
        _fail(f"error: {usage_line(e)}", 2, e)
    except MemoryError as e:
        _fail(f"error: {_memory_message(e, argv)}", 2, e)
    except SystemError as e:
        # Ctrl-C inside a call into compiled code (a Numba dispatcher): the KeyboardInterrupt
        # comes back as the cause of a SystemError
        if not isinstance(e.__cause__, KeyboardInterrupt):
            _crash(e)
        _signal_exit(e.__cause__)
    except click.ClickException as e:
        if _ranks() > 1:
            _fail(f"error: {_one_line(e.format_message())}", e.exit_code, e)
        e.show()
        sys.exit(e.exit_code)
    except TrainingDivergedError as e:
        _fail(f"error: {e}", 1, e)
    except (GruengineError, ValueError, OSError) as e:
        _fail(f"error: {_one_line(e)}", 2, e)
    except KeyboardInterrupt as e:
        _ignore_signals()
        _fail("interrupted", 130, e)
    except Exception as e:
        _crash(e)
    finally:
        if argv is not None:
            sys.unraisablehook = old_hook
        # called from Python (argv given): leave the caller's handlers as they were; from the
        # command line the process is exiting, and a late Ctrl-C stays ignored until it has
        if old is not None and (argv is not None or signal.getsignal(signal.SIGTERM) is _terminate):
            for sig, handler in old.items():
                signal.signal(sig, handler)
    sys.exit(0)


def _ignore_signals():
    # the decision to exit is taken: a further Ctrl-C must not cut the exit short (it would
    # end the process by the signal, mid-message, instead of with the status below)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _signal_exit(cause):
    # a stop by signal: one word for the user, and the shell's 128 + signal number
    _ignore_signals()
    signum = getattr(cause, "signum", signal.SIGINT)
    word = ("terminated (SIGTERM)" if signum == signal.SIGTERM else "aborted"
            if signum == signal.SIGINT else f"stopped ({signal.Signals(signum).name})")
    _fail(word, 128 + signum, cause)


def _ranks():
    w = current_world()
    return 1 if w is None else w.size


def _fail(line, code, e=None):
    """Print ``line`` on stderr and exit with ``code`` (under MPI: see the module docstring)."""
    w = current_world()
    if w is not None and w.size > 1:
        if getattr(e, "all_ranks", False):
            if w.rank == 0:
                click.echo(line, err=True)
            sys.exit(code)
        head, sep, rest = line.partition("error: ")
        click.echo(f"error: rank {w.rank}: {rest}" if sep and not head else
                   f"rank {w.rank}: {line}", err=True)
        w.abort(code)
    if isinstance(e, click.UsageError) and launch_rank() != 0:
        # launched ranks parse the same command line: rank 0 says it, before mpiexec ends the
        # job on the first non-zero exit
        time.sleep(2)
        sys.exit(code)
    click.echo(line, err=True)
    sys.exit(code)


def _crash(e):
    # an error the command does not expect: its traceback; under MPI the job ends with it
    if _ranks() == 1:
        raise e
    traceback.print_exception(e)
    _fail(f"error: {describe(e, typed=True)}", 1, e)


def usage_line(e):
    """A click usage error as one line: the message and where the command's help is."""
    where = e.ctx.command_path if e.ctx is not None else "gruengine"
    return f"{_one_line(e.format_message())} (see {where} --help)"


def _memory_message(e, argv):
    """What failed to fit, and the options given that drive the size."""
    args = list(sys.argv[1:] if argv is None else argv)
    given = []
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag in SIZE_OPTIONS:
            given.append(f"{flag} {value if eq else (args[i + 1] if i + 1 < len(args) else '')}")
    if args and args[0] == "inspect":
        given.append("the length of INPUT")
    what = " ".join(str(e).split()) or "an allocation failed"
    drive = (f"the sizes given: {', '.join(given)}" if given else
             "nothing given on the command line sets the size; lower --max-len, --batch-size "
             "or --hidden-size")
    return f"out of memory: {what}; {drive}"


def _one_line(e):
    msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
    return " ".join(msg.split()) or type(e).__name__


if __name__ == "__main__":
    # ``python -m gruengine_cli.main``: command modules register on ``gruengine_cli.main.app``,
    # not on this ``__main__`` copy, so run the imported module's entry point
    from .main import main as _main
    _main()
