"""The import graph of the gruengine package has no cycle.

The graph is built from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement of every module, at module level or inside a function, with
relative imports resolved. An import of ``a.b.c`` also runs the ``__init__`` of each package
on the way (``a.b``), except the packages that enclose the importing module itself, which
are already initialised (or initialising) when it runs.

Run: python -m pytest tests/test_imports.py -q
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def module_names(package_dir, package):
    """module name -> source path, for every .py file under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package] + parts)] = path
    return out


def _ancestors(name):
    # "a.b.c" -> ["a", "a.b"]
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(module, is_package, node):
    """Absolute names a statement imports, submodules named in ``from x import y`` included."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        if node.module:
            base = base + node.module.split(".")
        base = ".".join(base)
    else:
        base = node.module
    return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]


def import_graph(package_dir, package):
    """module -> sorted list of the package's modules whose code its imports run."""
    modules = module_names(package_dir, package)
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        own = set(_ancestors(module)) | {module}
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, is_package, node):
                for target in _ancestors(name) + [name]:
                    if target in modules and target not in own:
                        edges.add(target)
        graph[module] = sorted(edges)
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None (iterative depth-first search)."""
    state = {}                      # module -> 1 on the current path, 2 finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(graph[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    return None


def test_gruengine_import_graph_has_no_cycle():
    graph = import_graph(ROOT / "gruengine", "gruengine")
    # the graph is not vacuous: it sees module-level, relative and in-function imports
    assert "gruengine.arrays" in graph["gruengine.optim"]
    assert "gruengine._checks" in graph["gruengine.kernels.cuda.launch"]
    assert "gruengine.kernels.cuda.arrays" in graph["gruengine.arrays"]       # inside a function
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycle_finder_sees_relative_and_function_level_cycles(tmp_path):
    # pkg.a -> pkg.sub.b (relative, inside a function) -> pkg.sub (its __init__) -> pkg.c -> pkg.a
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from .sub import b\n",
        "pkg/sub/__init__.py": "from .. import c\n",
        "pkg/sub/b.py": "from . import helper\n",          # own package: no edge to pkg.sub
        "pkg/sub/helper.py": "import os\n",
        "pkg/c.py": "import pkg.a\n",
    })
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg.a"] == ["pkg.sub", "pkg.sub.b"]
    assert graph["pkg.sub.b"] == ["pkg.sub.helper"]
    assert graph["pkg.sub"] == ["pkg.c"]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"pkg.a", "pkg.sub", "pkg.c"}
    for u, v in zip(cycle, cycle[1:]):
        assert v in graph[u]


@pytest.mark.parametrize("edges,has_cycle", [
    ({"a": ["b"], "b": ["c"], "c": []}, False),
    ({"a": ["b", "c"], "b": ["c"], "c": []}, False),               # a diamond is no cycle
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, True),
    ({"a": ["a"]}, True),
])
def test_find_cycle_on_small_graphs(edges, has_cycle):
    cycle = find_cycle(edges)
    assert (cycle is not None) == has_cycle
    if cycle:
        for u, v in zip(cycle, cycle[1:]):
            assert v in edges[u]
