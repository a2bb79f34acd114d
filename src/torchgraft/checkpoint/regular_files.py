"""Opening a file torchgraft reads: a regular file, without blocking, within a size bound.

Every file torchgraft opens may be someone else's: a run directory copied from a stranger,
a data folder, a config. A name can stand for a FIFO (opening it for reading blocks until a
writer comes, forever), a device (``/dev/zero`` never ends), a socket or a folder. So a file
is opened with ``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a writer) and
``O_NOCTTY``, checked with ``fstat`` *after* opening (the name cannot be swapped between the
check and the read), refused unless it is a regular file, and read at most ``max_bytes``
(+1, to tell "too long" from "exactly that long") — whatever size it claims.

This module imports only the standard library: the CLI and the data workers use it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["FileProblem", "open_regular", "read_regular"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


class FileProblem(OSError):
    """Why a file cannot be read, in words that follow its name (``"not a regular file (a
    FIFO)"``); an ``OSError``, so code that handles unreadable files handles these. Callers
    that speak to a user re-raise it as their own typed error
    (:class:`~torchgraft.errors.ConfigError`, :class:`~torchgraft.errors.CheckpointError`,
    :class:`~torchgraft.errors.DataError`) naming the file."""


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int]]:
    """``(handle, size)`` of a regular file, opened without blocking.

    Raises:
        FileProblem: missing, unreadable (permission, a loop of links), or not a regular
            file (folder, FIFO, device, socket).
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise FileProblem("no such file") from None
    except IsADirectoryError:
        raise FileProblem("a folder, not a file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise FileProblem(f"cannot be opened ({_reason(exc)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"not a regular file ({_kind(info.st_mode)})")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        # The open was non-blocking only so that a FIFO could not hang it; reads of a
        # regular file never block, but clear the flag so no read ever sees EAGAIN.
        os.set_blocking(fd, True)
        yield handle, info.st_size


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    Raises:
        FileProblem: as :func:`open_regular`, or longer than ``max_bytes`` (said with both
            figures), or a read error.
    """
    try:
        with open_regular(path) as (handle, _):
            data = handle.read(max_bytes + 1)
    except FileProblem:
        raise
    except OSError as exc:
        raise FileProblem(f"cannot be read ({_reason(exc)})") from None
    if len(data) > max_bytes:
        raise FileProblem(f"longer than the {max_bytes:,} bytes such a file may have")
    return data


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
