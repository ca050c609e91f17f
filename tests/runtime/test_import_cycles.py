"""No import cycles among the runtime's modules.

Module-level imports are read with `ast` (those under `if TYPE_CHECKING:` included: a type-only
cycle still ties two modules together); imports inside functions are deliberate late bindings
and are not counted. A package's `__init__` importing its own submodules is not a cycle with
them unless a submodule imports the package back."""
from __future__ import annotations

import ast
from pathlib import Path

import dae_py.runtime

ROOT = Path(dae_py.runtime.__file__).parent
PREFIX = "dae_py.runtime"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PREFIX, *parts])


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports in the module body and in its top-level if/try blocks, not in functions."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append(stmt)
        elif isinstance(stmt, (ast.If, ast.Try)):
            todo.extend(stmt.body)
            todo.extend(stmt.orelse)
            if isinstance(stmt, ast.Try):
                todo.extend(stmt.finalbody)
                for handler in stmt.handlers:
                    todo.extend(handler.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the runtime modules it imports at module level."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports pkg.mod when that is a module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for target in targets:
                while target and target not in files:  # a name inside a module
                    target = target.rpartition(".")[0]
                if target.startswith(PREFIX) and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_import_graph_reads_relative_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "dae_py.runtime.net.sockets" in graph["dae_py.runtime.net.stream"]  # from .sockets
    assert "dae_py.runtime.proxy.registry" in graph["dae_py.runtime.proxy.base"]


def test_runtime_has_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles among runtime modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)
