"""The command line is the installed package ``gruengine_cli`` (the ``cli/`` folder): it runs as
``python -m gruengine_cli`` from anywhere, imports itself relatively, and setup.cfg's explicit
package list holds every package of the source tree."""
import ast
import configparser
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_python_m_gruengine_cli_outside_the_source_tree(tmp_path):
    import gruengine_cli.main
    gruengine_cli.main._register()
    commands = sorted(gruengine_cli.main.app.commands)
    assert {"train", "evaluate", "predict", "plot", "inspect", "data", "bench"} <= set(commands)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("PYTHONPATH", None)
    # cwd outside the repository: only the installed name can resolve, never a folder named cli
    for module in ("gruengine_cli", "gruengine_cli.main"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage: gruengine [OPTIONS] COMMAND"), r.stdout[:200]
        listed = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines()
                  if line.strip()]
        assert sorted(listed) == commands, (module, listed)
    r = subprocess.run([sys.executable, "-m", "gruengine_cli", "inspect", "nope.npz", "adding:1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: checkpoint nope.npz: no such file\n", r.stderr


def test_cli_modules_import_only_relatively():
    # an absolute ``cli`` import works in a source checkout and fails in an installed copy
    folder = os.path.join(ROOT, "cli")
    bad = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            bad += [f"{name}:{node.lineno} {m}" for m in mods
                    if m.split(".")[0] in ("cli", "gruengine_cli")]
    assert not bad, bad


def test_setup_cfg_lists_every_package():
    # find: cannot install cli/ under another name, so the list is explicit; a package missing
    # from it would be silently left out of a regular (non-editable) install
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(cfg["options"]["packages"].split())
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    on_disk = set()
    for top in ("gruengine", "cli"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
                on_disk.add(rel)
    installed = set()
    for pkg in listed:
        head, _, tail = pkg.partition(".")
        installed.add(mapping.get(head, head) + ("." + tail if tail else ""))
    assert installed == on_disk, (sorted(installed ^ on_disk))
