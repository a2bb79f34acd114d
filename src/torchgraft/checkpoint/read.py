"""Read any checkpoint safely into one flat ``{name: tensor}`` mapping.

One reader for ``.pt/.pth/.bin`` (torch zip or legacy), ``.ckpt`` (Lightning), ``.safetensors``,
Hugging Face-style folders (single or sharded), in-memory state_dicts and ``nn.Module``s.
Formats are recognised by content, never by file extension.

Safety: torch pickles are always read with ``torch.load(..., weights_only=True)`` passed
explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn the unsafe path on. A pickle
that needs globals outside torch's allow-list raises :class:`UnsafeCheckpointError` naming
them; loading it takes an explicit opt-in (``allow_globals=[...]`` or ``trust=True``) and is
never retried unsafely on its own.

Memory: torch zip files and safetensors are memory-mapped copy-on-write (``MAP_PRIVATE``):
tensors cost page cache, not anonymous memory, and writing into one never reaches the file.
Legacy (non-zip) torch files cannot be mapped and are read whole.

Hostile files: everything a file can choose (tensor count, nesting, sizes it claims, header
and pickle lengths) is checked against the reader's limits (:mod:`.limits`) before the work is
done, torch pickles are scanned before torch runs them (:mod:`.pickles`), and what was
unpickled is made plain before any of its methods is called (:mod:`.untrusted`). A shard
index names files only inside its folder (or, in a Hugging Face cache, inside the model's
cache folder that its ``snapshots/`` links point into).

Every failure (missing, empty, truncated, corrupt, hostile, not a checkpoint) is one
:class:`CheckpointError` that names the file and the reason; names read from a file are
quoted escaped.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .containers import CONTAINER_KEYS, EMA_KEYS, Checkpoint, from_object
from .limits import ReaderLimits, limit_error, resolve_limits
from .pickles import torch_load
from .reasons import short_reason
from .safetensors_file import read_safetensors
from .untrusted import plain

__all__ = [
    "CONTAINER_KEYS",
    "EMA_KEYS",
    "Checkpoint",
    "ReaderLimits",
    "read_checkpoint",
    "read_torch_data",
    "sniff_format",
]

#: Weight files of a Hugging Face-style folder, by preference (safetensors first: no pickle).
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: torch.save's legacy format opens with this integer pickled as LONG1 (torch.serialization).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: What a file that is not a checkpoint usually is, by its first bytes, with what to do.
_NOT_A_CHECKPOINT = (
    (b"version https://git-lfs", "a Git LFS pointer, not the weights: run `git lfs pull`"),
    (b"\x80", "a Python pickle but not a torch.save file: re-save it with torch.save"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow weights?)"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first"),
    (b"<", "an HTML/XML page (a failed download?)"),
)


def read_checkpoint(
    source: str | os.PathLike | Mapping[str, Any] | nn.Module,
    *,
    ema: bool = False,
    allow_globals: Sequence[str] = (),
    trust: bool = False,
    mmap: bool = True,
    limits: ReaderLimits | None = None,
) -> Checkpoint:
    """Read ``source`` into a :class:`Checkpoint`.

    Args:
        source: a file, an HF-style folder, a state_dict (nested dicts are flattened with
            ``.``), or a module.
        ema: take the EMA weights (``state_dict_ema``, ``model_ema``, …) instead of the
            regular ones; an error if there are none.
        allow_globals: ``"module.Name"`` globals the pickle may construct: imported (which
            runs that module's import-time code) and allowed for this one load only. Each must
            be the object's own name (``__module__.__qualname__``), and names that can run
            commands or load code are refused whatever they are called
            (:mod:`.allowed_globals`).
        trust: load the pickle with ``weights_only=False``: this can run code from the file,
            so it warns; use it only for files you made yourself. The pickle is not scanned.
        mmap: memory-map torch zip files and safetensors (copy-on-write) instead of reading
            them into memory. The file must then not be truncated or rewritten in place while
            the tensors live (atomic replacement, as torchgraft writes, is fine).
        limits: what one read may cost (:class:`~torchgraft.checkpoint.limits.ReaderLimits`);
            default: the defaults, with any ``TORCHGRAFT_MAX_*`` environment variable applied.

    Returns:
        the tensors, plus what was unwrapped, set aside and which files were read.

    Raises:
        UnsafeCheckpointError: the pickle wants globals outside the allow-list (named in
            ``globals_wanted``).
        CheckpointError: anything else that stops the source from being read, a file over one
            of the reader's limits included (the message names the limit and how to raise it).

    Example:
        >>> ckpt = read_checkpoint("colleague.ckpt")
        >>> ckpt.format, ckpt.container, len(ckpt.tensors)
        ('lightning', 'state_dict', 322)
    """
    if isinstance(source, nn.Module):
        return from_object(source, "module", type(source).__name__, ema)
    if isinstance(source, Mapping):
        return from_object(source, "state_dict", "in-memory state_dict", ema)
    limits = resolve_limits(limits)
    path = Path(source)
    try:
        checkpoint = _read_path(path, ema, allow_globals, trust, mmap, limits)
    except OSError as exc:  # permission denied, a folder that vanished, a name too long …
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(checkpoint.tensors) > limits.max_tensors:
        raise limit_error(str(path), "max_tensors", f"{len(checkpoint.tensors):,} tensors", limits)
    return checkpoint


def read_torch_data(path: str | os.PathLike, *, limits: ReaderLimits | None = None) -> Any:
    """The plain data of a torch file that is not a checkpoint of weights (a resume state:
    tensors, numbers, strings and containers), read as every torch file is: a regular file,
    checked and scanned within the reader's limits, then ``torch.load(weights_only=True)``
    with no opt-ins, and made plain (:mod:`.untrusted`).

    Raises:
        CheckpointError: naming the file: not a torch file, damaged, hostile or over a limit
            (an :class:`UnsafeCheckpointError` when it wants globals outside torch's safe list).
    """
    limits = resolve_limits(limits)
    path = Path(path)
    try:
        mode = _mode(path)
        if mode is None or not stat.S_ISREG(mode):
            raise CheckpointError(
                f"{path}: {'no such file' if mode is None else 'not a regular file'}"
            )
        kind = sniff_format(path)
        if kind == "safetensors":
            raise CheckpointError(f"{path}: a safetensors file, not a torch file of data")
        return plain(torch_load(path, kind, (), False, False, limits))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_path(
    path: Path,
    ema: bool,
    allow_globals: Sequence[str],
    trust: bool,
    mmap: bool,
    limits: ReaderLimits,
) -> Checkpoint:
    mode = _mode(path)
    if mode is None:
        raise CheckpointError(f"{path}: no such file or folder")
    if stat.S_ISDIR(mode):
        return _read_folder(path, ema, allow_globals, trust, mmap, limits)
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket?)")
    kind = sniff_format(path)
    if kind == "safetensors":
        if ema:
            raise CheckpointError(f"{path}: a safetensors file holds no separate EMA weights")
        tensors, metadata = read_safetensors(path, mmap, limits)
        return Checkpoint(tensors, kind, str(path), metadata=metadata, files=(str(path),))
    obj = plain(torch_load(path, kind, allow_globals, trust, mmap, limits))
    checkpoint = from_object(obj, kind, str(path), ema)
    checkpoint.files = (str(path),)
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        version = obj["pytorch-lightning_version"]
        checkpoint.format = "lightning"
        checkpoint.metadata["pytorch-lightning_version"] = (
            version[:40] if isinstance(version, str) else type(version).__name__
        )
    return checkpoint


def _mode(path: Path) -> int | None:
    """The file type and mode bits of ``path`` (links followed), or None when it is absent."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # a NUL byte in the name
        raise CheckpointError(f"{str(path)!a}: not a valid file name") from None


def sniff_format(path: Path) -> str:
    """``torch`` (zip), ``torch-legacy`` (raw pickle) or ``safetensors``, from the bytes.

    Args:
        path: a regular file; only its first 64 bytes and its size are read. It is opened
            without blocking and checked again once open, so that a pipe or device put in its
            place cannot hang the reader.

    Raises:
        CheckpointError: an unreadable or empty file, or bytes that are none of these (the
            message says what the file looks like instead, when it can tell).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket?)")
            size, head = info.st_size, handle.read(64)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); was the save interrupted?")
    if head.startswith(b"PK"):
        return "torch"
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: a truncated safetensors file (its header alone claims {header_len:,} "
                f"bytes, the file has {size:,}); re-download or re-save it"
            )
        return "safetensors"
    guess = next((what for magic, what in _NOT_A_CHECKPOINT if head.startswith(magic)), None)
    if guess is None and head.isascii():
        guess = "a text file"
    raise CheckpointError(
        f"{path}: not a checkpoint ({guess or 'neither a torch file nor a safetensors file'}; "
        f"starts with {head[:8]!r})"
    )


# ---- folders ------------------------------------------------------------------------------

#: The longest file name most file systems accept.
_MAX_NAME = 255


def _read_folder(
    path: Path,
    ema: bool,
    allow_globals: Sequence[str],
    trust: bool,
    mmap: bool,
    limits: ReaderLimits,
) -> Checkpoint:
    names = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
    if not names:  # no HF names: accept a folder holding exactly one weights file
        names = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(names) != 1:
            found = (
                f"it holds {', '.join(map(_listed, names[:10]))}; pass one of them"
                if names
                else "none found"
            )
            raise CheckpointError(
                f"{path}: a folder without a single weights file ({found}); expected one of "
                f"{', '.join(HF_WEIGHT_FILES)}"
            )
    name = names[0]
    options = {"allow_globals": allow_globals, "trust": trust, "mmap": mmap, "limits": limits}
    if name.endswith(".index.json"):
        if ema:
            raise CheckpointError(f"{path / name}: sharded weights hold no separate EMA weights")
        tensors, files = _read_sharded(path / name, limits, options)
        inner = Checkpoint(tensors, "sharded", str(path), files=files)
    else:
        inner = read_checkpoint(path / name, ema=ema, **options)
    metadata = {**inner.metadata, "file": name, "file_format": inner.format}
    return Checkpoint(
        inner.tensors, "hf-folder", str(path), inner.container, inner.set_aside, metadata,
        inner.files,
    )  # fmt: skip


def _read_sharded(
    index: Path, limits: ReaderLimits, options: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    weight_map = _weight_map(index, limits)
    root = _shard_root(index.parent)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, shard in weight_map.items():
        if shard not in shards:
            shard_path = _shard_path(index, shard, root)
            if not shard_path.is_file():
                raise CheckpointError(
                    f"{index}: shard {_quoted(shard)} (holding {_quoted(key)}) is missing"
                )
            shards[shard] = read_checkpoint(shard_path, **options).tensors
            if sum(map(len, shards.values())) > limits.max_tensors:
                raise limit_error(
                    str(index), "max_tensors", f"shards of more than {limits.max_tensors:,} "
                    "tensors", limits,
                )  # fmt: skip
        if key not in shards[shard]:
            raise CheckpointError(f"{index}: {_quoted(key)} is not in its shard {_quoted(shard)}")
        tensors[key] = shards[shard][key]
    files = (str(index), *(str(index.parent / s) for s in shards))
    return tensors, files


def _weight_map(index: Path, limits: ReaderLimits) -> dict[str, str]:
    """The index's ``weight_map``: tensor names to shard file names, all strings."""
    size = index.stat().st_size
    if size > limits.max_metadata_bytes:
        raise limit_error(
            str(index), "max_metadata_bytes", f"a shard index of {size:,} bytes", limits
        )
    try:
        document = json.loads(index.read_bytes())
        weight_map = document["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # JSON, UTF-8: ValueError
        raise CheckpointError(
            f"{index}: not a valid shard index ({type(exc).__name__}: {short_reason(exc)[:80]})"
        ) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' should map tensor names to shard files")
    if len(weight_map) > limits.max_tensors:
        raise limit_error(str(index), "max_tensors", f"{len(weight_map):,} tensors", limits)
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{index}: 'weight_map' should map tensor names to shard files; "
                f"{_quoted(key)} maps to a {type(shard).__name__}"
            )
    return weight_map


def _shard_root(folder: Path) -> Path:
    """Where a shard may resolve to: the folder, or for a Hugging Face cache snapshot
    (``<repo>/snapshots/<revision>/``, files linked into ``<repo>/blobs/``), the repo folder."""
    real = _resolved(folder)
    repo = real.parent.parent
    if real.parent.name == "snapshots" and (repo / "blobs").is_dir():
        return repo
    return real


def _shard_path(index: Path, shard: str, root: Path) -> Path:
    """The shard's path: a plain file name in the index's folder, resolving inside ``root``."""
    plain_name = (
        0 < len(shard) <= _MAX_NAME
        and shard not in (".", "..")
        and not any(c in shard for c in "/\\\0")
        and shard.isprintable()
    )
    if not plain_name:
        raise CheckpointError(
            f"{index}: shard {_quoted(shard)} is outside the folder (a shard must be a file "
            "name in the index's folder)"
        )
    path = index.parent / shard
    if not _resolved(path).is_relative_to(root):
        raise CheckpointError(
            f"{index}: shard {_quoted(shard)} is outside the folder (it links to a file "
            f"outside {root})"
        )
    return path


def _resolved(path: Path) -> Path:
    """``path`` with its links followed; a loop of links is a damaged folder."""
    try:
        return path.resolve()
    except RuntimeError:  # "Symlink loop" (Python < 3.13)
        raise CheckpointError(f"{path}: a loop of symbolic links") from None


def _quoted(name: Any) -> str:
    """A name read from a file, as a message shows it: quoted, escaped, cut."""
    text = name if isinstance(name, str) else type(name).__name__
    return ascii(text[:120]) + ("…" if len(text) > 120 else "")


def _listed(name: str) -> str:
    """A file name from a folder listing: as it is when plain, else escaped."""
    return name if name.isascii() and name.isprintable() else ascii(name)
