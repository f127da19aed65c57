"""Write the ``--help`` blocks of docs/cli.md from the commands themselves.

    python docs/cli_help.py            # rewrite the blocks in docs/cli.md
    python docs/cli_help.py --check    # exit 1 and name the blocks that differ

A block is a ```text fence right after a marker line ``<!-- help: gruengine data info -->``;
its content is that command's ``--help`` at a width of 80 columns. tests/test_docs.py fails
when a block and the command disagree.
"""
import os
import re
import sys

CLI_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.md")
BLOCK = re.compile(r"(<!-- help: (gruengine[a-z -]*?) -->\n```text\n)(.*?)(```)", re.S)
WIDTH = 78        # what click uses in an 80-column terminal


def help_text(command):
    """The ``--help`` output of ``command`` ('gruengine', 'gruengine data info', ...)."""
    from click.testing import CliRunner
    from gruengine_cli.main import _register, app
    _register()
    args = command.split()[1:] + ["--help"]
    res = CliRunner().invoke(app, args, prog_name="gruengine", terminal_width=WIDTH)
    if res.exit_code != 0:
        raise RuntimeError(f"{command} --help exited {res.exit_code}: {res.output}")
    return res.output


def render(text):
    """``text`` with every marked block replaced by its command's help; and the commands."""
    commands = []

    def repl(m):
        commands.append(m.group(2))
        return m.group(1) + help_text(m.group(2)) + m.group(4)
    return BLOCK.sub(repl, text), commands


def stale_blocks(text):
    """The commands whose block in ``text`` differs from their ``--help``."""
    return [m.group(2) for m in BLOCK.finditer(text) if m.group(3) != help_text(m.group(2))]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(CLI_MD, encoding="utf-8") as f:
        text = f.read()
    if "--check" in argv:
        stale = stale_blocks(text)
        for c in stale:
            print(f"docs/cli.md: the block of '{c}' differs from '{c} --help'")
        return 1 if stale else 0
    new, commands = render(text)
    with open(CLI_MD, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"docs/cli.md: {len(commands)} help blocks written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
