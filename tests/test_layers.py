"""The folders follow the data flow: each imports only from the folders below it, and no
module imports itself back through others (no import circles, deferred imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "torchgraft"

#: Bottom to top, as docs/architecture.md draws it. The top-level modules (errors, atomic,
#: _lazy) are the floor every folder may use.
LAYERS = [
    "",
    "checkpoint",
    "model",
    "adapters",
    "grafting",
    "zoo",
    "policies",
    "data",
    "engine",
    "cli",
]


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


#: The engine's rooms and what each may not import. The configuration is read by all and reads
#: no other engine module; the run report and the exports read a run's files (and the
#: engine's model files, runtime and run directory) but never the training that wrote them;
#: the LR finder drives a run's session, and nothing in the engine drives the LR finder.
TRAINING = ("engine.fit", "engine.session", "engine.loop", "engine.stages", "engine.inference")
ROOMS = ("engine.config", "engine.report", "engine.export", "engine.lr_find")
MAY_NOT_IMPORT = {
    "engine.config": ("engine",),
    "engine.report": (*TRAINING, "engine.export", "engine.lr_find"),
    "engine.export": (*TRAINING, "engine.report", "engine.lr_find"),
    "engine.lr_find": (),
    "engine": ("engine.lr_find",),
}


def _within(name: str, room: str) -> bool:
    return name == room or name.startswith(f"{room}.")


def _room(name: str) -> str | None:
    if not _within(name, "engine"):
        return None
    return next((room for room in ROOMS if _within(name, room)), "engine")


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _room(n)))
def test_engine_rooms_import_only_what_they_may(name):
    room = _room(name)
    wrong = [
        t
        for t in GRAPH[name]
        if _room(t) != room and any(_within(t, f) for f in MAY_NOT_IMPORT[room])
    ]
    assert not wrong, f"{name} ({room}) imports what its room may not: {wrong}"


#: What a newcomer can hold in their head: a folder is a page of names, a module a sitting.
MAX_MODULES_PER_FOLDER = 20
MAX_MODULE_LINES = 450


def _folders() -> dict[Path, list[Path]]:
    folders: dict[Path, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        folders.setdefault(path.parent, []).append(path)
    return folders


@pytest.mark.parametrize("folder", sorted(_folders()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_folder_is_a_page_of_names(folder):
    modules = _folders()[folder]
    assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder}: {len(modules)} modules"
    prefixes: dict[str, list[str]] = {}
    for path in modules:
        if path.stem != "__init__":
            prefixes.setdefault(path.stem.lstrip("_").split("_")[0], []).append(path.stem)
    # Three modules named alike are a folder waiting to be made.
    crowded = {p: names for p, names in prefixes.items() if len(names) >= 3}
    assert not crowded, f"{folder}: modules sharing a name prefix: {crowded}"


def test_no_module_is_longer_than_a_sitting():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_a_run_reads_its_optimizer_settings_in_one_place():
    """``optim.lr`` walks one way: command line → config (load, sections) → stages → the
    policies' groups → the optimizer. No other module of a run reads the ``optim`` section
    (the LR finder reads ``optim.lr`` as its reference and writes it back with --apply)."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(PACKAGE))
        if name.startswith(("engine/config/", "engine/lr_find/")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            torch_optim = isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.optim"
            if isinstance(node, ast.Attribute) and node.attr == "optim" and not torch_optim:
                readers.add(name)
    assert readers == {"engine/stages.py"}
