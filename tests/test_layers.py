"""The folders follow the data flow: each imports only from the folders below it, and no
module imports itself back through others (no import circles, deferred imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "torchgraft"

#: Bottom to top, as docs/architecture.md draws it. The top-level modules (errors, atomic,
#: _lazy) are the floor every folder may use.
LAYERS = ["", "checkpoint", "model", "grafting", "zoo", "policies", "data", "engine", "cli"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    result = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in skipped or not node.level:
            continue
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        target = ".".join([*base, *([node.module] if node.module else [])])
        for candidate in (target, *(f"{target}.{a.name}".lstrip(".") for a in node.names)):
            candidate = candidate.lstrip(".")
            if candidate in known and candidate != name:
                result.add(candidate)
    return result


#: Top-level modules that belong to a layer other than the floor.
PLACED = {"__main__": "cli"}  # ``python -m torchgraft`` is the command line


def _layer(name: str) -> int:
    if name in PLACED:
        return LAYERS.index(PLACED[name])
    folder = name.split(".")[0] if "." in name else ""
    if folder == "" and name in LAYERS:  # a folder's own __init__
        folder = name
    return LAYERS.index(folder) if folder in LAYERS else 0


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n))
def test_imports_go_down_the_layers(name):
    upward = [t for t in GRAPH[name] if t and _layer(t) > _layer(name)]
    assert not upward, f"{name} imports from a layer above it: {upward}"


def test_no_import_circles():
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import circles: {cycles}"
