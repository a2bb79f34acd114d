"""Every module, file and test the docs name exists: a move that leaves a doc behind fails here.

Checked in docs/*.md and README.md: paths of the package (``grafting/pairing.py``,
``src/torchgraft/engine/setup.py``), of tests and benchmarks (with ``::test_name`` when given),
and dotted names under ``torchgraft`` (a module, or a name a module defines).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "torchgraft"
DOCS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])

#: The first folder of a path the docs may name: the repository's own, or the package's.
OWN_ROOTS = {
    "src",
    "torchgraft",
    "tests",
    "bench",
    *(p.name for p in PACKAGE.iterdir() if p.is_dir()),
}

PATH = re.compile(r"(?<![\w/.-])((?:[a-z_]+/)+[a-z_0-9]+\.py)(?:::(\w+))?")
DOTTED = re.compile(r"(?<![\w.])(torchgraft(?:\.[a-z_][a-z_0-9]*)+)(?![\w/])")


def _file(path: str) -> Path | None:
    for candidate in (ROOT / path, PACKAGE / path, PACKAGE / path.removeprefix("torchgraft/")):
        if candidate.is_file():
            return candidate
    return None


def _module_prefix(parts: list[str]) -> tuple[Path | None, list[str]]:
    """The longest prefix of ``parts`` that is a module of the package, its source, the rest."""
    for end in range(len(parts), 1, -1):
        base = ROOT / "src" / Path(*parts[:end])
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), parts[end:]
        if (base / "__init__.py").is_file():
            return base / "__init__.py", parts[end:]
        if base.is_dir():  # a namespace package (no __init__.py)
            return None, parts[end:] if parts[end:] else []
    return PACKAGE / "__init__.py", parts[1:]


def _defines(source: Path | None, name: str) -> bool:
    if source is None:
        return False
    text = source.read_text()
    pattern = rf"^\s*(def|class) {name}\b|^{name}\s*[:=]|\"{name}\"|import .*\b{name}\b"
    return re.search(pattern, text, re.M) is not None


def _broken(doc: Path) -> list[str]:
    text = doc.read_text()
    broken = []
    for match in PATH.finditer(text):
        path, test = match.groups()
        if path.split("/")[0] not in OWN_ROOTS:
            continue  # another project's file (fastai/callback/schedule.py)
        found = _file(path)
        if found is None:
            broken.append(path)
        elif test and f"def {test}(" not in found.read_text():
            broken.append(f"{path}::{test}")
    for match in DOTTED.finditer(text):
        source, rest = _module_prefix(match.group(1).split("."))
        if rest and not _defines(source, rest[0]):
            broken.append(match.group(1))
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_what_the_docs_name_exists(doc):
    assert not _broken(doc), f"{doc.name} names what does not exist: {_broken(doc)}"


def test_the_check_sees_a_moved_module(tmp_path):
    stale = tmp_path / "stale.md"
    stale.write_text(
        "See `engine/report_files.py`, tests/engine/test_fit.py::test_no_such_test and "
        "`torchgraft.engine.plots.plot_lr`; `grafting/pairing.py` is fine.\n"
    )
    assert _broken(stale) == [
        "engine/report_files.py",
        "tests/engine/test_fit.py::test_no_such_test",
        "torchgraft.engine.plots.plot_lr",
    ]


MOD_ROLE = re.compile(r":mod:`~?([.\w]+)`")


def _module_exists(dotted: str) -> bool:
    base = ROOT / "src" / Path(*dotted.split("."))
    return base.with_suffix(".py").is_file() or base.is_dir()


def test_docstrings_name_modules_that_exist():
    """``:mod:`` references in the package's docstrings, relative ones resolved as imports."""
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT / "src").with_suffix("").parts)
        package = parts[:-1]
        for match in MOD_ROLE.finditer(path.read_text()):
            ref = match.group(1)
            if not ref.startswith("."):
                target = ref
            else:
                level = len(ref) - len(ref.lstrip("."))
                base = package[: len(package) - (level - 1)]
                target = ".".join([*base, ref.lstrip(".")]).rstrip(".")
            if target.startswith("torchgraft") and not _module_exists(target):
                broken.append(f"{path.relative_to(PACKAGE)}: {ref}")
    assert not broken, broken
