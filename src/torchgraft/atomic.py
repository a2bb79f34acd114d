"""Atomic file writes: a file is either its old content or its complete new content.

Every file torchgraft writes (run-directory files, grafted weights, sidecars) goes through
here. The recipe is the classic one: write a temporary file in the destination's own folder
(so the final rename never crosses a filesystem), ``fsync`` it, ``os.replace`` it over the
destination (atomic on POSIX and Windows), then ``fsync`` the folder so the rename itself
survives a power loss. A process killed at any point (SIGKILL included) leaves the
destination untouched; at worst a hidden ``.NAME.*.tmp`` file stays behind in the folder.

Where a write lands, and what it never replaces:

* **Only a regular file, or a new name.** Renaming over a character device (``/dev/null``),
  a FIFO, a socket or a folder would replace it with a regular file (as root, the machine's
  own ``/dev/null``). Every write first checks the destination, following a symbolic link,
  and refuses anything else with an :class:`~torchgraft.errors.OutputError` naming it; it
  checks again just before the rename.
* **A symbolic link is replaced, never written through.** A destination that is a link to a
  regular file (or a dangling link) becomes the new file; the file it pointed to is left as
  it was. Writing through it would let whoever can put a link in an output folder choose
  which file we replace (as root: any file), and the temporary file could not be renamed
  across filesystems anyway; ``sed -i`` and ``rsync`` make the same choice. :func:`landing`
  is the path that is really replaced, for callers that must not replace a given file.

This module imports only the standard library and torchgraft's own standard-library-only
modules (errors, text), on purpose: it is cheap to import from anywhere (subprocesses, the
CLI's first lines) and has nothing to go wrong.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError
from .text import printable

__all__ = [
    "atomic_path",
    "atomic_paths",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_destination",
    "fsync_dir",
    "landing",
    "same_file",
    "unwritable_kind",
    "within",
]


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Temporary paths that replace ``paths`` together, in order, only if the block succeeds.

    Use it for files that belong together (weights and their sidecar): nothing is renamed
    until every file is written and flushed, so a failure while writing leaves all of the
    destinations as they were. The renames themselves happen one after another; a crash
    between two of them can leave the first file new and the second old, so write the file
    that vouches for the others (a sidecar holding their sha256) last.

    Args:
        paths: destinations; their folders must exist.

    Yields:
        one temporary path per destination, in the same folder, already created (empty).
        Write to them by name (``save_file(t, tmp)``, ``tmp.write_bytes(...)``).

    Raises:
        OutputError: a destination exists and is not a regular file (checked before the
            block runs, and again before the renames); nothing is replaced.
        OSError: a temporary file cannot be created, flushed or renamed. Whatever the body
            raises is re-raised after the temporary files are removed.

    Example:
        >>> with atomic_paths("model.safetensors", "model.json") as (weights, sidecar):
        ...     save_file(tensors, weights)
        ...     sidecar.write_text(json.dumps(info))
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        check_destination(target)  # before the caller's (maybe long) work, not after it
    temps: list[Path] = []
    try:
        for target in targets:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(name))
        yield tuple(temps)
        for temp, target in zip(temps, targets, strict=True):
            check_destination(target)  # something may have appeared there meanwhile
            _prepare(temp, target)
        for index, (temp, target) in enumerate(zip(temps, targets, strict=True)):
            os.replace(temp, target)
            temps[index] = target  # renamed: no longer ours to clean up
    except BaseException:
        # BaseException: a KeyboardInterrupt must not leave temporary files either.
        for temp in temps:
            if temp not in targets:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
        raise
    for folder in dict.fromkeys(t.parent for t in targets):
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed over ``path`` only if the block succeeds.

    Args:
        path: the destination; its folder must exist.

    Yields:
        the temporary path (already created, empty); write the new content there.

    Raises:
        OSError: the temporary file cannot be created, flushed or renamed. Whatever the body
            raises is re-raised after the temporary file is removed; ``path`` is untouched.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    with atomic_paths(path) as (temp,):
        yield temp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed; ``path`` keeps its old content (or stays absent).
    """
    with atomic_path(path) as temp, temp.open("wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, byte for byte (no newline translation).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed; ``path`` keeps its old content (or stays absent).
        UnicodeEncodeError: ``text`` cannot be encoded; nothing is written.
    """
    return atomic_write_bytes(path, text.encode(encoding))


#: What a destination may be instead of a regular file, as messages name it.
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def unwritable_kind(path: str | os.PathLike) -> str | None:
    """What is at ``path`` if an atomic write must not replace it, or None.

    Returns:
        ``"a folder"``, ``"a character device"``, ``"a block device"``, ``"a FIFO (named
        pipe)"``, ``"a socket"`` (with ``" (through a symbolic link)"`` when ``path`` is a
        link to one), or None for a regular file, a link to one, a dangling link or nothing.
    """
    try:
        mode = os.stat(path).st_mode  # follows a link: what the name leads to
    except OSError:  # nothing there, a dangling link or a loop: the write makes a new file
        return None
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return kind + (" (through a symbolic link)" if os.path.islink(path) else "")


def check_destination(path: str | os.PathLike) -> None:
    """Refuse a destination that an atomic write would destroy instead of writing.

    Raises:
        OutputError: ``path`` is a folder, a device, a FIFO or a socket, or a link to one;
            renaming a file over it would replace it with a regular file.
    """
    kind = unwritable_kind(path)
    if kind is not None:
        raise OutputError(
            f"{printable(path)} is {kind}, not a regular file: torchgraft writes a file whole "
            "and renames it into place, which would replace it; give the path of a file "
            "(a new name, or a regular file to replace)"
        )


def landing(path: str | os.PathLike) -> Path:
    """The absolute path an atomic write to ``path`` replaces: its folder with every link
    resolved, and its own name as it is (a link there is replaced, not followed)."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def same_file(path: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Would an atomic write to ``path`` replace ``other`` (the name, or the file it leads to)?

    Compares where the write lands with ``other``'s own entry and, when ``other`` is a link,
    with its target; by path and, for files that exist, by device and inode, so ``..``, links
    in folders, hard links and a case-insensitive filesystem all count as the same file.
    """
    where, other = landing(path), Path(other).absolute()
    if where in (landing(other), other.resolve()):
        return True
    try:
        mine = os.lstat(where)
    except OSError:
        return False
    return any(_same_inode(mine, look, other) for look in (os.lstat, os.stat))


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Does an atomic write to ``path`` land inside ``folder`` (at any depth)?"""
    where = landing(path)
    if where.is_relative_to(Path(folder).resolve()):
        return True
    try:
        wanted = os.stat(folder)
    except OSError:
        return False
    for parent in where.parents:  # the same folder under another name (case, bind mount)
        with contextlib.suppress(OSError):
            found = os.stat(parent)
            if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
                return True
    return False


def _same_inode(mine: os.stat_result, look, other: Path) -> bool:
    try:
        found = look(other)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # Windows cannot open folders; its renames are journaled anyway.
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (network, FUSE) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _prepare(temp: Path, target: Path) -> None:
    """Give ``temp`` the permissions the final file should have, and flush it to disk."""
    # mkstemp creates 0600 files; a replaced file keeps its mode, a new one gets the usual
    # 0666 & ~umask, as if it had been opened directly.
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    os.chmod(temp, mode)
