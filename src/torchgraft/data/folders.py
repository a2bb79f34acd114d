"""Which files a data folder holds: class folders, walked with a rule for links.

The walk is what turns ``photos/`` into samples, and a data folder is someone else's tree:
a class folder can be a link to ``/`` (the walk would enter ``/proc`` and ``/sys``), a link
can lead back to a folder above it (a loop), a folder can be unreadable, a name can be a FIFO
or a device. The rules:

* **Links to files are followed**, wherever they lead: the file is then opened as an image
  is, a regular file only (:mod:`.images`).
* **Links to folders are followed only inside the data folder** (the folder given, its own
  links resolved): a linked folder whose target is outside it is a ``DataError`` naming the
  link and its target. A dataset that gathers folders from elsewhere is listed in a CSV, or
  its folders are copied or bind-mounted in.
* **A folder is never entered twice on one path**: a link back to a folder the walk is
  already inside (a loop) is a ``DataError`` naming both.
* **An unreadable folder is a ``DataError``** naming it (never skipped in silence).
* **Every other entry is a sample**, except stray files (:mod:`.strays`): a regular file
  whose name has no image suffix and whose content is no image (``README.txt``,
  ``Thumbs.db``) is set aside and named, and so is every file beside the class folders.
  FIFOs, sockets, devices and broken links stay samples, so that the scan reports each by
  path as a bad file rather than leaving it out unseen. Hidden entries (``.git``,
  ``.DS_Store``) are ignored, at any depth.
* **The walk is bounded**: each file and folder counts towards the index's memory
  (:class:`~.limits.IndexBudget`), so a tree of millions of entries stops with a
  ``DataError`` at the limit instead of exhausting memory.

Samples are listed in the order ``sorted(Path)`` gives: classes by name, then each class's
files component by component.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..text import printable
from .limits import IndexBudget
from .sample_paths import SamplePaths
from .strays import StrayFiles, has_image_name, holds_image, needs_a_look, sort_by_content

__all__ = ["ClassListing", "class_folders", "list_class_folders"]


@dataclass(frozen=True)
class ClassListing:
    """Class names (sorted), every sample's name below ``root`` with its label, and the
    files left out (:class:`~.strays.StrayFiles`, names below ``root``, sorted)."""

    classes: tuple[str, ...]
    paths: SamplePaths
    labels: list[int]
    strays: StrayFiles = field(default_factory=StrayFiles)


def list_class_folders(
    folder: Path,
    *,
    root: Path | None = None,
    allow_single: bool = False,
    budget: IndexBudget | None = None,
) -> ClassListing:
    """The class subfolders of ``folder`` and their files, walked by the module's rules.

    Args:
        folder: holds one subfolder per class.
        root: the data folder that links may not leave, and that names are relative to;
            default ``folder``.
        allow_single: accept a single class (an evaluation split may hold one).
        budget: the index's memory budget, shared by every split of a dataset.

    Raises:
        DataError: no class folders, an empty one, only one (unless ``allow_single``), a
            linked folder leading outside ``root``, a loop, an unreadable folder, or more
            entries than the budget allows.
    """
    root = Path(root or folder)
    walk = _Walk(Path(os.path.realpath(root)), budget or IndexBudget())
    prefix = _relative(folder, root)
    entries = walk.entries(folder)
    subfolders = [e for e in entries if walk.enters(e)]
    if not subfolders:
        _no_class_folders(folder, walk)
    classes = tuple(sorted(e.name for e in subfolders))
    by_name = {e.name: e for e in subfolders}
    names: list[str] = []
    labels: list[int] = []
    strays = _beside_classes(root, prefix, [e for e in entries if e not in subfolders])
    for label, name in enumerate(classes):
        entry = by_name[name]
        found, unnamed = walk.files_below(entry, _join(prefix, name), walk.ancestors_of(folder))
        images, not_images = sort_by_content(root, unnamed)
        found += images
        if not found:
            _no_images(entry, name, not_images)
        found.sort(key=_components)  # the order sorted(Path) gives
        names += found
        labels += [label] * len(found)
        strays += StrayFiles(tuple(sorted(not_images, key=_components)))
    if len(classes) < 2 and not allow_single:
        raise DataError(
            f"{folder}: only one class ('{classes[0]}'); a classifier needs at least two "
            "class folders"
        )
    return ClassListing(classes, SamplePaths(root, names), labels, strays)


def class_folders(folder: Path, allow_single: bool = False, **options):
    """``(classes, [(path, label)])`` from the class subfolders of ``folder`` (see
    :func:`list_class_folders` for the rules, ``options`` and errors)."""
    listing = list_class_folders(Path(folder), allow_single=allow_single, **options)
    return listing.classes, list(zip(listing.paths, listing.labels, strict=True))


class _Walk:
    """One walk below a data root: lists folders, decides which to enter, bounds the count."""

    def __init__(self, root_real: Path, budget: IndexBudget):
        self.root_real, self.budget = root_real, budget

    def entries(self, folder: Path | str) -> list[os.DirEntry]:
        """The visible entries of ``folder``."""
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if not e.name.startswith(".")]
        except OSError as exc:
            raise DataError(
                f"{folder}: cannot list this folder ({exc.strerror or exc}); make it "
                "readable (chmod a+rx) or move it out of the data folder"
            ) from None
        # Each entry costs an index slot (a file, or a folder walked): bounded either way.
        self.budget.add(folder, len(entries) + 1, sum(len(e.name) + 1 for e in entries))
        return entries

    def enters(self, entry: os.DirEntry) -> bool:
        """Whether ``entry`` is a folder to walk (a linked one only inside the root)."""
        try:
            if not entry.is_dir():  # links followed; a broken link is a (bad) file
                return False
        except OSError:
            return False
        if entry.is_symlink():
            target = Path(os.path.realpath(entry.path))
            if not target.is_relative_to(self.root_real):
                raise DataError(
                    f"{printable(entry.path)}: a link to the folder "
                    f"{printable(str(target))}, outside the data folder "
                    f"{printable(str(self.root_real))}; linked folders are followed only "
                    "inside it. Copy the folder in, or list its files in a CSV "
                    "(path,label)"
                )
        return True

    def ancestors_of(self, folder: Path) -> frozenset[tuple[int, int]]:
        info = os.stat(folder)
        return frozenset({(info.st_dev, info.st_ino)})

    def files_below(
        self, top: os.DirEntry, name: str, above: frozenset
    ) -> tuple[list[str], list[str]]:
        """Names (below the root) of every file under the folder ``top``: the samples, and
        the files whose content decides (:func:`~.strays.needs_a_look`)."""
        found: list[str] = []
        unnamed: list[str] = []
        stack = [(top.path, name, above | {_identity(top)})]
        while stack:
            folder, prefix, ancestors = stack.pop()
            for entry in self.entries(folder):
                child = _join(prefix, entry.name)
                if not self.enters(entry):
                    (unnamed if needs_a_look(entry) else found).append(child)
                    continue
                identity = _identity(entry)
                if identity in ancestors:
                    raise DataError(
                        f"{printable(entry.path)}: a link back to "
                        f"{printable(os.path.realpath(entry.path))}, a folder it is inside "
                        "(a loop); remove the link"
                    )
                stack.append((entry.path, child, ancestors | {identity}))
        return found, unnamed


def _identity(entry: os.DirEntry) -> tuple[int, int]:
    info = entry.stat()  # follows links: the folder itself
    return info.st_dev, info.st_ino


def _beside_classes(root: Path, prefix: str, loose: list[os.DirEntry]) -> StrayFiles:
    """The entries beside the class folders, in no class: images (by name or content)
    and the rest, names below ``root``, sorted."""
    images: list[str] = []
    others: list[str] = []
    for entry in sorted(loose, key=lambda e: e.name):
        is_image = has_image_name(entry.name) or (needs_a_look(entry) and holds_image(entry.path))
        (images if is_image else others).append(_join(prefix, entry.name))
    return StrayFiles(tuple(others), tuple(images))


def _no_images(entry: os.DirEntry, name: str, not_images: list[str]) -> None:
    """A class folder without a sample: say so, and what it holds instead."""
    held = ""
    if not_images:
        shown = ", ".join(printable(n) for n in sorted(not_images, key=_components)[:3])
        held = f" (only {len(not_images)} file(s) that are not images: {shown})"
    raise DataError(
        f"{printable(entry.path)}: the class folder '{printable(name)}' holds no images{held}; "
        "put the class's images in it, or remove the folder"
    )


def _components(name: str) -> list[str]:
    return name.split("/")


def _no_class_folders(folder: Path, walk: _Walk) -> None:
    loose = sorted(e.name for e in walk.entries(folder))[:3]
    hint = f" (found files such as {', '.join(repr(n) for n in loose)})" if loose else ""
    raise DataError(
        f"{folder}: no class folders{hint}; put each class's images in a subfolder "
        "named after the class (cat/, dog/, …)"
    )


def _relative(folder: Path, root: Path) -> str:
    return "" if folder == root else Path(folder).relative_to(root).as_posix()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name
