"""What each zoo library lists, and at which version — read without importing it where possible.

The architecture index (:mod:`.arch_index`) and the shipped tables (:mod:`.shipped_tables`)
are kept per library version; finding that version must not import timm or torchvision
(seconds each), so it is read from the library's ``version.py`` as a literal when the library
is not imported yet.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["LIBRARIES", "all_names", "library_version"]

LIBRARIES = ("torchvision", "timm")


def library_version(library: str) -> str:
    """``__version__`` of ``library``, the key of its index file.

    Read from the imported module when the library is imported; otherwise from the literal
    in its ``version.py`` (what timm's and torchvision's ``__init__`` re-export), so that
    finding the index does not import the library; imported when there is no such literal.
    """
    module = sys.modules.get(library)
    if module is None:
        declared = _declared_version(library)
        if declared is not None:
            return declared
        module = importlib.import_module(library)
    return str(module.__version__)


def _declared_version(library: str) -> str | None:
    """The string literal assigned to ``__version__`` in ``library/version.py``, read
    without importing the package (none of its code runs); None when there is no single
    such assignment."""
    try:
        spec = importlib.util.find_spec(library)
        folders = [f for f in (spec.submodule_search_locations or []) if f] if spec else []
        if not folders:
            return None
        tree = ast.parse(Path(folders[0], "version.py").read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError, SyntaxError, UnicodeDecodeError):
        return None
    values = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        and any(
            isinstance(name, ast.Name) and name.id == "__version__"
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            for name in ast.walk(target)
        )
    ]
    if len(values) == 1 and isinstance(values[0], ast.Constant):
        value = values[0].value
        return value if isinstance(value, str) else None
    return None


def all_names(library: str) -> list[str]:
    """Every architecture ``library`` lists (timm: without pretrained tags)."""
    return list(_all_names(library, library_version(library)))


@functools.lru_cache(maxsize=8)
def _all_names(library: str, version: str) -> tuple[str, ...]:
    # Per version: timm sorts its 1,400 names with a regex key on every call (~20 ms).
    return tuple(_list_names(library))


def _list_names(library: str) -> list[str]:
    if library == "torchvision":
        import torchvision

        return torchvision.models.list_models(module=torchvision.models)
    import timm

    return timm.list_models()
