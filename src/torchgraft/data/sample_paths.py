"""The files of a split, one short string each: a dataset's index in bounded memory.

A :class:`pathlib.Path` costs about 400 bytes in CPython (the object, a list of parts, a
string per part); a split of a million files held as paths took 560 MB before a pixel was
decoded. :class:`SamplePaths` keeps a root and, per sample, only its name below the root (the
CSV row or the file's place in the folder, as given), and makes the ``Path`` when asked for
one, so a sample costs its name's string and one list slot (about 70 bytes for
``cat/img_000123.jpg``). It is a read-only sequence of ``Path``: ``paths[i]``, ``len``,
iteration and ``==`` with a list of paths behave as the list would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePath

__all__ = ["SamplePaths", "locations_of", "names_of", "relative_name"]


class SamplePaths(Sequence[Path]):
    """``root / name`` for each name, made on demand.

    Args:
        root: the folder the names are relative to (a name may also be absolute: then it is
            the path itself, as ``root / name`` gives).
        names: one name per sample, e.g. ``"cat/001.jpg"``.
    """

    __slots__ = ("names", "root")

    def __init__(self, root: Path, names: list[str]):
        self.root = Path(root)
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SamplePaths(self.root, self.names[index])
        return self.root / self.names[index]

    def __iter__(self) -> Iterator[Path]:
        root = self.root
        return (root / name for name in self.names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SamplePaths):
            return list(self) == list(other)
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # mutable-sequence semantics, like the list it stands for

    def __repr__(self) -> str:
        shown = ", ".join(repr(n) for n in self.names[:3])
        more = f", … ({len(self.names):,} in all)" if len(self.names) > 3 else ""
        return f"SamplePaths({str(self.root)!r}, [{shown}{more}])"

    def select(self, indices: Iterable[int]) -> SamplePaths:
        """The samples at ``indices``, in that order."""
        names = self.names
        return SamplePaths(self.root, [names[i] for i in indices])

    def locations(self) -> Iterator[str]:
        """Each sample's file as a string (no ``Path`` made: ten times faster)."""
        root = os.fspath(self.root)
        return (os.path.join(root, name) for name in self.names)


def locations_of(paths: Sequence[Path] | SamplePaths) -> Iterable[str]:
    """Each sample's file as a string."""
    return paths.locations() if isinstance(paths, SamplePaths) else map(os.fspath, paths)


def names_of(paths: Sequence[Path] | SamplePaths) -> Sequence[str]:
    """One string per sample that identifies its file as given (duplicates compare equal)."""
    if isinstance(paths, SamplePaths):
        return paths.names
    return [str(p) for p in paths]


def relative_name(name: str, root: Path | None) -> str:
    """``name`` as a path relative to ``root`` in POSIX form (``"./a//b.png"`` ->
    ``"a/b.png"``), or the absolute path when it lies outside ``root``."""
    if os.sep == "/" and _plain(name):
        return name  # what PurePath(name).as_posix() would give, a hundred times faster
    path = PurePath(name)
    if not path.is_absolute():
        return path.as_posix()
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _plain(name: str) -> bool:
    """A relative POSIX name that ``PurePath`` leaves as it is (no ``.`` parts, no ``//``)."""
    return (
        bool(name)
        and not name.startswith(("/", "./"))
        and not name.endswith(("/", "/."))
        and "//" not in name
        and "/./" not in name
        and name != "."
    )
