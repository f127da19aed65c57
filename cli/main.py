"""Entry point of the ``gruengine`` command.

Every command module registers itself on ``app``. ``main`` turns usage errors and the engine's
errors into one line on stderr (``error: ...``) and exit status 2 (bad input) or 1 (a run that
failed), never a traceback or click's three-line usage block.
"""
import re
import signal
import sys
import threading

import click

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gruengine")
def app():
    """gruengine: train and inspect GRU/LSTM sequence models on the CPU or an NVIDIA GPU.

    \b
    Example:
      gruengine train                  # the embedded adding-problem task, no download
    """


def _register():
    # one import per command module; each adds its commands to ``app``
    from . import data  # noqa: F401
    from . import train, plot  # noqa: F401
    from . import inspect  # noqa: F401
    from . import bench  # noqa: F401
    from . import exchange  # noqa: F401


def _terminate(signum, frame):
    raise Interrupted(signum)


def main(argv=None):
    _register()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # SIGTERM outside a training loop (which saves first): a message and 143, not silence
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app.main(args=argv, prog_name="gruengine", standalone_mode=False)
    except click.exceptions.Abort as e:
        _signal_exit(e.__cause__)
    except click.UsageError as e:
        click.echo(f"error: {usage_line(e)}", err=True)
        sys.exit(2)
    except MemoryError as e:
        click.echo(f"error: {_memory_message(e, argv)}", err=True)
        sys.exit(2)
    except SystemError as e:
        # Ctrl-C inside a call into compiled code (a Numba dispatcher): the KeyboardInterrupt
        # comes back as the cause of a SystemError
        if not isinstance(e.__cause__, KeyboardInterrupt):
            raise
        _signal_exit(e.__cause__)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except TrainingDivergedError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (GruengineError, ValueError, OSError) as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _ignore_signals()
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
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
    click.echo("terminated (SIGTERM)" if signum == signal.SIGTERM else "aborted", err=True)
    sys.exit(128 + signum)


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
