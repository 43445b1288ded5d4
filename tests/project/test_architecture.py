"""Static guards of the layout: what the device runtime may import, and no import cycles.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency: it runs
on the device the day that code path runs). Read from the source with :mod:`ast`, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = ("edge", "train_export")
#: Never imported by the device runtime, directly or through another module of ours.
FORBIDDEN_IN_RUNTIME = ("edge.tools", "edge.cli", "train_export", "tensorflow", "keras", "jax", "torch", "matplotlib")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports: ours by full dotted name (``from a import b`` is module ``a.b`` when that
    is one of ours), third-party ones by their top-level name."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for alias in node.names:
                if f"{mod}.{alias.name}" in known:
                    out.add(f"{mod}.{alias.name}")
    return {m for m in out if m and m != "__future__"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from ``start`` -> the module that imports it (for the error message)."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        cur = todo.pop()
        for dep in graph.get(cur, ()):
            if dep not in seen:
                seen[dep] = cur
                todo.append(dep)
    return seen


def _chain(seen: dict[str, str], mod: str) -> str:
    path = [mod]
    while seen.get(path[-1]):
        path.append(seen[path[-1]])
    return " <- ".join(path)


def test_the_device_runtime_never_imports_tools_training_or_heavy_libraries(graph):
    runtime = [m for m in graph if m == "edge.runtime" or m.startswith("edge.runtime.")]
    assert len(runtime) > 20, runtime
    problems = []
    for start in runtime:
        seen = _reachable(graph, start)
        for mod in seen:
            if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN_IN_RUNTIME):
                problems.append(_chain(seen, mod))
    assert not problems, "\n".join(sorted(set(problems)))


def test_edge_as_a_whole_never_imports_tensorflow_or_train_export(graph):
    for mod, deps in graph.items():
        if mod.split(".")[0] == "edge":
            bad = {d for d in deps if d.split(".")[0] in ("tensorflow", "keras", "train_export", "jax", "torch")}
            assert not bad, (mod, bad)


def test_the_guard_sees_lazy_imports(tmp_path):
    """The import reader counts an import inside a function, and resolves ``from pkg import module``."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from edge.tools import modelctl\n    import matplotlib.pyplot\n")
    found = _imports("edge.runtime.x", src, {"edge.tools.modelctl"})
    assert {"edge.tools", "edge.tools.modelctl", "matplotlib.pyplot"} <= found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), among our modules only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles(graph):
    # A package's __init__ that its own submodules import is not a cycle in the sense that matters (Python
    # imports the parent first); only explicit import statements are edges here, and none may loop.
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_much_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
