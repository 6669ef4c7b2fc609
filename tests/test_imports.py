"""The package's import graph: no cycle, no lower layer reaching up, no method importing another.

Every ``import`` statement of every module is read from the source (function-local ones too, which
is where cycles hide), so the test needs no import to succeed and sees what a run may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zeroseg

ROOT = Path(zeroseg.__file__).parent

# The layers that the application modules build on: none of them imports anything above.
LOWER = (
    "zeroseg.engine",
    "zeroseg.data",
    "zeroseg.models",
    "zeroseg.text",
    "zeroseg.metrics",
    "zeroseg.foundation",
    "zeroseg.generators",
    "zeroseg.shape",
    "zeroseg.pretrain",
)
UPPER = (
    "zeroseg.methods",
    "zeroseg.runner",
    "zeroseg.demo",
    "zeroseg.cli",
    "zeroseg.bench",
    "zeroseg.serve",
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from a import b`` counts ``a.b`` when ``b`` is a
    module, else ``a``; relative imports resolved)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} imports {b}"
        for a, deps in graph.items()
        if _in(a, LOWER)
        for b in deps
        if _in(b, UPPER)
    )


def method_cross_imports(graph: dict[str, set[str]]) -> list[str]:
    """A method module (one that defines registered methods) importing another one."""
    from zeroseg.methods import METHODS

    method_modules = {cls.__module__ for cls in METHODS.values()}
    return sorted(
        f"{a} imports {b}"
        for a in method_modules
        for b in graph[a]
        if b in method_modules and b != a
    )


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_lower_layer_imports_an_upper_one():
    assert layer_violations(import_graph()) == []


def test_no_method_module_imports_another():
    assert method_cross_imports(import_graph()) == []


def test_the_checks_fail_on_a_cycle_and_a_layer_violation(tmp_path):
    pkg = tmp_path / "zeroseg"
    for sub in ("engine", "methods"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    # a cycle through a function-local import, and engine reaching up into methods
    (pkg / "engine" / "a.py").write_text("def f():\n    from zeroseg.methods import b\n")
    (pkg / "methods" / "b.py").write_text("from zeroseg.engine.a import f\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["zeroseg.engine.a", "zeroseg.methods.b"]]
    assert layer_violations(graph) == ["zeroseg.engine.a imports zeroseg.methods.b"]


@pytest.mark.parametrize("relative", ["from .b import g", "from . import b"])
def test_relative_imports_are_resolved(tmp_path, relative):
    pkg = tmp_path / "zeroseg"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text(relative + "\n")
    (pkg / "engine" / "b.py").write_text("def g():\n    pass\n")
    assert import_graph(pkg)["zeroseg.engine.a"] == {"zeroseg.engine.b"}
