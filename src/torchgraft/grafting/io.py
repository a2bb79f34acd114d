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

Every failure (missing, empty, truncated, corrupt, not a checkpoint) is one
:class:`CheckpointError` that names the file and the reason.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import CONTAINER_KEYS, EMA_KEYS, Checkpoint, from_object
from .pickles import short_reason, torch_load

__all__ = ["CONTAINER_KEYS", "EMA_KEYS", "Checkpoint", "read_checkpoint", "sniff_format"]

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
) -> Checkpoint:
    """Read ``source`` into a :class:`Checkpoint`.

    Args:
        source: a file, an HF-style folder, a state_dict (nested dicts are flattened with
            ``.``), or a module.
        ema: take the EMA weights (``state_dict_ema``, ``model_ema``, …) instead of the
            regular ones; an error if there are none.
        allow_globals: ``"module.Name"`` globals the pickle may construct: imported (which
            runs that module's import-time code) and allowed for this one load only.
        trust: load the pickle with ``weights_only=False``: this can run code from the file,
            so it warns; use it only for files you made yourself.
        mmap: memory-map torch zip files and safetensors (copy-on-write) instead of reading
            them into memory. The file must then not be truncated or rewritten in place while
            the tensors live (atomic replacement, as torchgraft writes, is fine).

    Returns:
        the tensors, plus what was unwrapped, set aside and which files were read.

    Raises:
        UnsafeCheckpointError: the pickle wants globals outside the allow-list (named in
            ``globals_wanted``).
        CheckpointError: anything else that stops the source from being read.

    Example:
        >>> ckpt = read_checkpoint("colleague.ckpt")
        >>> ckpt.format, ckpt.container, len(ckpt.tensors)
        ('lightning', 'state_dict', 322)
    """
    if isinstance(source, nn.Module):
        return from_object(source, "module", type(source).__name__, ema)
    if isinstance(source, Mapping):
        return from_object(source, "state_dict", "in-memory state_dict", ema)
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, ema, allow_globals, trust, mmap)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket?)")
    kind = sniff_format(path)
    if kind == "safetensors":
        if ema:
            raise CheckpointError(f"{path}: a safetensors file holds no separate EMA weights")
        tensors, metadata = _read_safetensors(path, mmap)
        return Checkpoint(tensors, kind, str(path), metadata=metadata, files=(str(path),))
    obj = torch_load(path, kind, allow_globals, trust, mmap)
    checkpoint = from_object(obj, kind, str(path), ema)
    checkpoint.files = (str(path),)
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        checkpoint.format = "lightning"
        checkpoint.metadata["pytorch-lightning_version"] = str(obj["pytorch-lightning_version"])
    return checkpoint


def sniff_format(path: Path) -> str:
    """``torch`` (zip), ``torch-legacy`` (raw pickle) or ``safetensors``, from the bytes.

    Args:
        path: a regular file; only its first 64 bytes and its size are read.

    Raises:
        CheckpointError: an unreadable or empty file, or bytes that are none of these (the
            message says what the file looks like instead, when it can tell).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(64)
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
                f"{path}: a truncated safetensors file (its header alone claims {header_len} "
                f"bytes, the file has {size}); re-download or re-save it"
            )
        return "safetensors"
    guess = next((what for magic, what in _NOT_A_CHECKPOINT if head.startswith(magic)), None)
    if guess is None and head.isascii():
        guess = "a text file"
    raise CheckpointError(
        f"{path}: not a checkpoint ({guess or 'neither a torch file nor a safetensors file'}; "
        f"starts with {head[:8]!r})"
    )


# ---- safetensors and folders --------------------------------------------------------------


def _read_safetensors(path: Path, mmap: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    # safe_open maps the file MAP_PRIVATE and get_tensor returns views into that mapping
    # (measured: +0 MB anonymous memory for a 512 MB file), so no copy is needed for memory;
    # mmap=False clones, for callers that must not keep the file mapped.
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: a damaged safetensors file: {short_reason(exc)}") from None
    except BaseException as exc:  # a Rust panic surfaces as PanicException(BaseException)
        if type(exc).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path}: a damaged safetensors file: {short_reason(exc)}") from None
    if not tensors:
        raise CheckpointError(f"{path}: a safetensors file with no tensors in it")
    if not mmap:
        tensors = {key: tensor.clone() for key, tensor in tensors.items()}
    return tensors, metadata


def _read_folder(
    path: Path, ema: bool, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> Checkpoint:
    names = [name for name in HF_WEIGHT_FILES if (path / name).is_file()]
    if not names:  # no HF names: accept a folder holding exactly one weights file
        names = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(names) != 1:
            found = f"it holds {', '.join(names)}; pass one of them" if names else "none found"
            raise CheckpointError(
                f"{path}: a folder without a single weights file ({found}); expected one of "
                f"{', '.join(HF_WEIGHT_FILES)}"
            )
    name = names[0]
    if name.endswith(".index.json"):
        if ema:
            raise CheckpointError(f"{path / name}: sharded weights hold no separate EMA weights")
        tensors, files = _read_sharded(path / name, allow_globals, trust, mmap)
        inner = Checkpoint(tensors, "sharded", str(path), files=files)
    else:
        inner = read_checkpoint(
            path / name, ema=ema, allow_globals=allow_globals, trust=trust, mmap=mmap
        )
    metadata = {**inner.metadata, "file": name, "file_format": inner.format}
    return Checkpoint(
        inner.tensors, "hf-folder", str(path), inner.container, inner.set_aside, metadata,
        inner.files,
    )  # fmt: skip


def _read_sharded(
    index: Path, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON and UTF-8 errors: ValueError
        raise CheckpointError(f"{index}: not a valid shard index ({short_reason(exc)})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' should map tensor names to shard files")
    folder = index.parent.resolve()
    shards: dict[str, dict[str, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, shard in weight_map.items():
        if shard not in shards:
            shard_path = (index.parent / str(shard)).resolve()
            if shard_path.parent != folder:  # a crafted index must not reach other folders
                raise CheckpointError(f"{index}: shard '{shard}' is outside the folder")
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: shard '{shard}' (holding '{key}') is missing")
            shards[shard] = read_checkpoint(
                shard_path, allow_globals=allow_globals, trust=trust, mmap=mmap
            ).tensors
        if key not in shards[shard]:
            raise CheckpointError(f"{index}: '{key}' is not in its shard '{shard}'")
        tensors[key] = shards[shard][key]
    files = (str(index), *(str(index.parent / s) for s in shards))
    return tensors, files
