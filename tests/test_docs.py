"""The python code blocks of docs/tutorial.md run, in order, in one namespace."""
import importlib.util
import os
import re

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return _BLOCK.findall(f.read())


def test_tutorial_blocks_run(capsys):
    blocks = python_blocks("tutorial.md")
    assert len(blocks) >= 8
    have_torch = importlib.util.find_spec("torch") is not None
    ns = {"__name__": "tutorial"}
    ran = 0
    for k, code in enumerate(blocks):
        if "import torch" in code and not have_torch:
            continue                       # the PyTorch round trip needs the optional peer
        exec(compile(code, f"docs/tutorial.md block {k}", "exec"), ns)
        ran += 1
    out = capsys.readouterr().out
    # printed claims in the text match what the code prints
    assert "x: expected dtype float32, got float64" in out
    assert "('gru', 1, False, 2, 32)" in out
    assert "[(2, 96), (32, 96), (2, 96)]" in out
    assert "(1, 96, 2) 1" in out
    assert ran == len(blocks) - (0 if have_torch else 1)
    # the ParamBuffer size the text states: GRU(2, 32) + Linear(32, 1), counted by hand
    text = open(os.path.join(DOCS, "tutorial.md"), encoding="utf-8").read()
    claimed = int(re.search(r"# (\d+) \(\d+,\) \['gru.bias_hh_l0'", text).group(1))
    H, I = 32, 2
    assert claimed == ns["buf"].size == 3 * H * I + 3 * H * H + 6 * H + H + 1
    assert f"{claimed} ({claimed},)" in out


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "plot", "inspect",
                                 "data download", "data info", "bench"])
def test_cli_md_lists_every_option(cmd):
    from click.testing import CliRunner
    from gruengine_cli.main import app, _register
    _register()
    res = CliRunner().invoke(app, cmd.split() + ["--help"])
    assert res.exit_code == 0, res.output
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", res.output))
    assert flags, res.output
    text = open(os.path.join(DOCS, "cli.md"), encoding="utf-8").read()
    section = text.split(f"## gruengine {cmd}\n", 1)
    assert len(section) == 2, f"docs/cli.md has no section for gruengine {cmd}"
    body = section[1].split("\n## ", 1)[0]
    missing = sorted(f for f in flags if f not in body)
    assert not missing, f"docs/cli.md, gruengine {cmd}: options missing {missing}"


def _documented_signatures(name):
    """(dotted name, parameter text) of every 'gruengine.x.y(...)' line in the code blocks."""
    text = open(os.path.join(DOCS, name), encoding="utf-8").read()
    out = []
    for block in re.findall(r"^```\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            m = re.match(r"(gruengine(?:\.\w+)+)\(", line)
            if not m:
                continue
            depth, start = 0, m.end() - 1
            for i in range(start, len(line)):   # the matching parenthesis
                depth += {"(": 1, ")": -1}.get(line[i], 0)
                if depth == 0:
                    out.append((m.group(1), line[start + 1:i]))
                    break
    return out


def _resolve(dotted):
    import importlib
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for p in parts[k:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(dotted)


def test_api_md_signatures_match_the_code():
    import inspect
    sigs = _documented_signatures("api.md")
    assert len(sigs) >= 60
    wrong = []
    for dotted, documented in sigs:
        obj = _resolve(dotted)
        sig = inspect.signature(obj)
        params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()
                  if p.name != "self"]
        actual = str(sig.replace(parameters=params,
                                 return_annotation=inspect.Signature.empty))[1:-1]
        norm = lambda s: re.sub(r"<class 'numpy\.(\w+)'>", r"np.\1", s).replace(" ", "")  # noqa: E731
        if norm(actual) != norm(documented):
            wrong.append(f"{dotted}({documented})  !=  ({actual})")
    assert not wrong, "docs/api.md signatures out of date:\n" + "\n".join(wrong)


def _leaf_commands(group, path="gruengine"):
    import click
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _leaf_commands(cmd, f"{path} {name}")
        else:
            out.append(f"{path} {name}")
    return out


def test_cli_md_help_blocks_are_the_commands_help():
    # every command has a block in docs/cli.md, and each block is that command's --help
    # (python docs/cli_help.py rewrites them)
    from gruengine_cli.main import app, _register
    _register()
    spec = importlib.util.spec_from_file_location("cli_help", os.path.join(DOCS, "cli_help.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = open(os.path.join(DOCS, "cli.md"), encoding="utf-8").read()
    blocks = [m.group(2) for m in tool.BLOCK.finditer(text)]
    assert sorted(blocks) == sorted(["gruengine"] + _leaf_commands(app))
    assert tool.stale_blocks(text) == [], "docs/cli.md is stale: run python docs/cli_help.py"
    # and the check sees a change
    assert tool.stale_blocks(text.replace("Usage: gruengine plot", "Usage: gruengine plo", 1)) \
        == ["gruengine plot"]
