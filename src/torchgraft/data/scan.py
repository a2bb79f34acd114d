"""Find the image files that cannot be decoded, before training starts.

:func:`scan_images` fully decodes every file with :func:`~torchgraft.data.images.load_image`
(only a full decode finds a truncated JPEG; its header alone reads fine) and returns the
bad ones, sorted by path. A bad file is a result, never an exception: the point is to list
all of them at once rather than fail on the first one an hour into an epoch.

File names are data, not markup: :func:`describe_bad` and :func:`write_bad_list` escape
control characters, so a file named with an ANSI escape sequence cannot clear the terminal
or forge lines in the report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DataError
from ..text import printable
from .images import UnreadableImageError, load_image
from .threads import map_in_threads

__all__ = ["BadImage", "describe_bad", "find_bad", "printable", "scan_images", "write_bad_list"]


@dataclass(frozen=True)
class BadImage:
    """An image file that cannot be decoded.

    Attributes:
        path: the file, as it was given to :func:`scan_images`.
        reason: one line saying what was found, e.g. ``"truncated file"`` or
            ``"not an image (cannot identify image file)"``; not yet escaped for display.
    """

    path: Path
    reason: str


def scan_images(
    paths: Iterable[str | os.PathLike],
    channels: int = 3,
    *,
    workers: int = 2,
    draft_size: tuple[int, int] | None = (64, 64),
) -> list[BadImage]:
    """Decode every file and return the ones that fail, sorted by path.

    The decodes run in a thread pool: Pillow releases the GIL while it decodes, so threads
    use several cores without the cost of processes.

    Args:
        paths: the image files; a path given twice is decoded and reported once. A name
            that is not a regular file (a FIFO, a device, a folder) is a bad file, found
            without waiting on it (see :func:`~torchgraft.data.images.load_image`).
        channels: 1 or 3, as the dataset will load them (a mode that cannot be converted
            is a bad file too).
        workers: how many files to decode at once.
        draft_size: passed to :func:`load_image`: JPEGs decode at a reduced scale that
            still reads every byte of the file, so truncation is still found, faster.
            ``None`` decodes at full size.

    Returns:
        the bad files, sorted by path; empty when every file decodes.

    Raises:
        DataError: ``channels`` is not 1 or 3, ``draft_size`` is not two positive integers,
            or ``workers`` is below 1 (never for a bad file).
    """
    if channels not in (1, 3):
        raise DataError(
            f"scan_images: channels={channels!r} cannot be read from image files; they give "
            "1 (greyscale) or 3 (RGB) channels; use channels=1 or channels=3"
        )
    if workers < 1:
        raise DataError(f"scan_images: workers={workers!r}; use at least 1 worker thread")
    found = find_bad(paths, channels, workers=workers, draft_size=draft_size)
    return sorted((BadImage(Path(p), reason) for p, reason in found.items()), key=_by_path)


def find_bad(
    paths: Iterable[str | os.PathLike],
    channels: int = 3,
    *,
    workers: int = 2,
    draft_size: tuple[int, int] | None = (64, 64),
) -> dict[str, str]:
    """``{path: reason}`` of the files that fail, keyed by the path as given (a string): what
    :func:`scan_images` finds, without a ``Path`` per file (a million files are listed in
    a few hundred MB less)."""
    unique = list(dict.fromkeys(map(os.fspath, paths)))
    check = partial(_check_one, channels=channels, draft_size=draft_size)
    found = map_in_threads(check, unique, workers, name="scan_images")
    return {path: reason for path, reason in found if reason is not None}


def _by_path(item: BadImage) -> Path:
    return item.path


def _check_one(path: str, *, channels: int, draft_size: tuple[int, int] | None) -> str | None:
    """``None`` when ``path`` decodes, else what is wrong with it."""
    try:
        load_image(path, channels, draft_size=draft_size).close()
    except UnreadableImageError as exc:
        # Only the file's faults: a bad argument (another DataError) propagates to the caller.
        return exc.reason
    return None


def describe_bad(bad: Sequence[BadImage], limit: int = 10) -> str:
    """One readable block listing the bad files, at most ``limit`` of them.

    Args:
        bad: the result of :func:`scan_images`.
        limit: how many files to list; the rest are counted (``... and 7 more``).

    Returns:
        ``"3 unreadable image files:\\n  a/b.jpg: truncated file\\n  ..."``, paths and
        reasons escaped with :func:`printable`; ``"no unreadable image files"`` when empty.
    """
    if not bad:
        return "no unreadable image files"
    noun = "file" if len(bad) == 1 else "files"
    shown = list(bad[: max(limit, 0)])
    lines = [f"{len(bad)} unreadable image {noun}:"]
    lines += [f"  {printable(str(item.path))}: {printable(item.reason)}" for item in shown]
    if len(bad) > len(shown):
        lines.append(f"  ... and {len(bad) - len(shown)} more")
    return "\n".join(lines)


def write_bad_list(bad: Sequence[BadImage], path: Path) -> Path:
    """Write the bad files to ``path``, one ``path<TAB>reason`` line each, atomically.

    Paths and reasons are escaped with :func:`printable`, so a tab or newline in a file
    name cannot break the one-line-per-file format.

    Args:
        bad: the result of :func:`scan_images`.
        path: the text file to write (UTF-8); its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: the file cannot be written; an existing file keeps its old content.
    """
    text = "".join(f"{printable(str(item.path))}\t{printable(item.reason)}\n" for item in bad)
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise DataError(
            f"{path}: cannot write the list of unreadable images ({exc}); "
            "check that the folder exists and is writable"
        ) from exc
