"""The package's layout: imports flow one way (no circle between modules or between rooms), nothing
below the command line and the service imports them, and modules stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nas_bert"
# The supernet's forward pass is the one long module: every elastic operator and its slicing live
# together so that an extracted student is provably its sub-path.
LONG_OK = {"nas_bert.supernet.elastic"}
MAX_LINES = 450
TOP = ("cli", "service")  # what users run; nothing else may import them


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports, at the top or inside a function."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import nas_bert.x.y` names a module; drop attribute parts
                    t = t.rpartition(".")[0]
                if t.startswith("nas_bert") and t != name and t != "nas_bert":
                    graph[name].add(t)
    return graph


def room(module: str) -> str:
    """A subpackage (nas_bert.search) or a top-level module (nas_bert.pipeline) is one room."""
    return ".".join(module.split(".")[:2])


def _room_word(module: str) -> str:
    return (module.split(".") + [""])[1]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle_between_modules():
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()) or [])


def test_no_import_circle_between_rooms():
    rooms: dict[str, set[str]] = {}
    for m, deps in import_graph().items():
        rooms.setdefault(room(m), set()).update(room(d) for d in deps if room(d) != room(m))
    assert _cycle(rooms) is None, " -> ".join(_cycle(rooms) or [])


def test_nothing_below_imports_the_command_line_or_the_service():
    bad = {m: sorted(d for d in deps if _room_word(d) in TOP)
           for m, deps in import_graph().items() if _room_word(m) not in TOP + ("__main__",)}
    assert not {m: d for m, d in bad.items() if d}


def test_modules_stay_short():
    long = {m: n for m, p in ((_module_name(p), p) for p in PKG.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES and m not in LONG_OK}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("case", ["module", "room"])
def test_the_walk_finds_a_circle(case):
    """The checks above would see a circle: one made by hand is found."""
    graph = {"nas_bert.a.x": {"nas_bert.b.y"}, "nas_bert.b.y": {"nas_bert.a.x"}}
    if case == "room":
        graph = {"nas_bert.a": {"nas_bert.b"}, "nas_bert.b": {"nas_bert.c"}, "nas_bert.c": {"nas_bert.a"}}
    assert _cycle(graph) is not None
