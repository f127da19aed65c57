"""Entry point of the ``gruengine`` command.

Every command module registers itself on ``app``. ``main`` turns usage errors and the engine's
errors into one line on stderr (``error: ...``) and exit status 2 (bad input) or 1 (a run that
failed), never a traceback or click's three-line usage block.
"""
import sys

import click

from gruengine.errors import GruengineError, TrainingDivergedError


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


def main(argv=None):
    _register()
    try:
        app.main(args=argv, prog_name="gruengine", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        click.echo(f"error: {usage_line(e)}", err=True)
        sys.exit(2)
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
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


def usage_line(e):
    """A click usage error as one line: the message and where the command's help is."""
    where = e.ctx.command_path if e.ctx is not None else "gruengine"
    return f"{_one_line(e.format_message())} (see {where} --help)"


def _one_line(e):
    msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
    return " ".join(msg.split()) or type(e).__name__


if __name__ == "__main__":
    # ``python -m gruengine_cli.main``: command modules register on ``gruengine_cli.main.app``,
    # not on this ``__main__`` copy, so run the imported module's entry point
    from .main import main as _main
    _main()
