"""Atomic file writes: a file is either its old content or its complete new content.

Every file torchgraft writes (run-directory files, grafted weights, sidecars) goes through
here. The recipe is the classic one: write a temporary file in the destination's own folder
(so the final rename never crosses a filesystem), ``fsync`` it, ``os.replace`` it over the
destination (atomic on POSIX and Windows), then ``fsync`` the folder so the rename itself
survives a power loss. A process killed at any point (SIGKILL included) leaves the
destination untouched; at worst a hidden ``.NAME.*.tmp`` file stays behind in the folder.

This module imports only the standard library, on purpose: it is cheap to import from
anywhere (subprocesses, the CLI's first lines) and has nothing to go wrong.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_paths", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


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
        OSError: a temporary file cannot be created, flushed or renamed. Whatever the body
            raises is re-raised after the temporary files are removed.

    Example:
        >>> with atomic_paths("model.safetensors", "model.json") as (weights, sidecar):
        ...     save_file(tensors, weights)
        ...     sidecar.write_text(json.dumps(info))
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(name))
        yield tuple(temps)
        for temp, target in zip(temps, targets, strict=True):
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
