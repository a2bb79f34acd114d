"""Files in a data folder that are not samples: told apart from images, skipped, and named.

A folder of photographs collects other files: ``Thumbs.db`` and ``desktop.ini`` from
Windows, a ``README.txt``, ``notes.md``, a ``labels.csv``. None of them is a damaged image,
and one of them must not stop a run; nor may a damaged photograph be dropped in silence. So a
file of a class folder is judged by its name first, then by its content:

* **an image suffix** (:data:`IMAGE_NAMES`), whatever it holds: a sample. A damaged one is a
  bad file and follows ``data.on_bad_image`` (stop, or skip and list);
* **no image suffix, an image inside** (a format torchgraft decodes): a sample — a photo
  saved without its extension is still a photo;
* **no image suffix, no image inside**: a **stray**, left out and named in one line.

"Content" is what Pillow identifies from the file's first bytes among the formats torchgraft
decodes (:data:`~.images.IMAGE_FORMATS`); nothing is decoded. A file that cannot be opened
to look (permission denied) is kept as a sample, so that the scan names what is wrong with it.
:data:`IMAGE_NAMES` also holds photo formats torchgraft does not decode (HEIC, AVIF, camera
raw): such a file is somebody's picture, so it is reported as an image that cannot be read
rather than skipped as a stray. Names that are not regular files (a FIFO, a device, a broken
link) are never opened to look: they stay samples, and the scan reports them.

Files beside the class folders (in the data folder, or in ``train/``, ``val/``, ``test/``)
belong to no class: they are skipped and named too, the images among them apart
("outside the class folders"), since an image there was most likely meant to be used.
Hidden names (``.DS_Store``, ``.git``) are ignored without a word (:mod:`.folders`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from PIL import Image

from ..checkpoint.regular_files import open_regular
from ..text import printable
from .images import IMAGE_FORMATS, IMAGE_SUFFIXES, bomb_warnings_as_errors
from .threads import map_in_threads

__all__ = [
    "IMAGE_NAMES",
    "StrayFiles",
    "has_image_name",
    "holds_image",
    "needs_a_look",
    "sort_by_content",
]

#: Suffixes that make a file an image whatever its content: the formats torchgraft decodes,
#: and photo formats it does not (named in the scan as unreadable, never skipped unseen).
IMAGE_NAMES = frozenset(
    {*IMAGE_SUFFIXES, ".avif", ".heic", ".heif", ".jxl", ".jp2", ".dng", ".cr2", ".nef", ".arw"}
)
#: Threads that look at files' first bytes (the work is waiting on the disk).
LOOKERS = 4
#: How many names one line shows; the rest are counted.
SHOWN = 5


@dataclass(frozen=True)
class StrayFiles:
    """The files of a data folder left out of every split, names relative to the folder.

    Attributes:
        not_images: files whose name and content are no image's (``cat/README.txt``).
        outside: images beside the class folders, in no class (``IMG_0001.jpg``).
    """

    not_images: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.not_images or self.outside)

    def __add__(self, other: StrayFiles) -> StrayFiles:
        return StrayFiles(self.not_images + other.not_images, self.outside + other.outside)

    def lines(self) -> list[str]:
        """What a run says about them: one line per kind, a few names each (escaped).

        Example:
            >>> StrayFiles(("cat/README.txt", "Thumbs.db")).lines()
            ['skipped 2 files that are not images: cat/README.txt, Thumbs.db']
        """
        said = []
        if self.not_images:
            said.append(
                _line(self.not_images, "file that is not an image", "files that are not images")
            )
        if self.outside:
            kinds = ("image outside the class folders", "images outside the class folders")
            said.append(
                _line(self.outside, *kinds) + " (only images inside a class folder are used)"
            )
        return said


def has_image_name(name: str) -> bool:
    """Whether ``name`` ends in a suffix of :data:`IMAGE_NAMES` (any case)."""
    return PurePath(name).suffix.lower() in IMAGE_NAMES


def needs_a_look(entry: os.DirEntry) -> bool:
    """Whether the content of ``entry`` decides what it is: a regular file (links followed)
    whose name is no image's. A FIFO, device or broken link is never opened to look."""
    if has_image_name(entry.name):
        return False
    try:
        return entry.is_file()
    except OSError:
        return False


def holds_image(path: str | os.PathLike) -> bool:
    """Whether the file's first bytes are those of a format torchgraft decodes.

    Only Pillow's identification runs (no pixel is decoded). ``False`` only when no such
    format is identified; a file that cannot be opened, or an image that is too large or
    broken in its header, is ``True``: it stays a sample and the scan says what is wrong.
    """
    try:
        with open_regular(path) as (handle, _), bomb_warnings_as_errors():
            Image.open(handle, formats=IMAGE_FORMATS).close()
    except Image.UnidentifiedImageError:
        return False
    except Exception:  # unreadable, a bomb, a header Pillow refuses: the scan will say
        return True
    return True


def sort_by_content(root: Path, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(images, others)`` of ``names`` (below ``root``), by :func:`holds_image`, each in
    the order given; the files are looked at in a few threads."""
    if not names:
        return [], []
    images: list[str] = []
    others: list[str] = []
    looked = map_in_threads(
        lambda name: holds_image(os.path.join(root, name)), names, LOOKERS, name="strays"
    )
    for name, is_image in looked:
        (images if is_image else others).append(name)
    return images, others


def _line(names: Sequence[str], one: str, many: str) -> str:
    shown = ", ".join(printable(name) for name in names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"skipped {len(names)} {one if len(names) == 1 else many}: {shown}{more}"
