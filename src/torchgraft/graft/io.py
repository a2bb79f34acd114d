"""Read any checkpoint safely into one flat ``{name: tensor}`` mapping.

One reader for ``.pt/.pth/.bin`` (torch), ``.ckpt`` (Lightning), ``.safetensors``, Hugging
Face-style folders (single or sharded), in-memory state_dicts and ``nn.Module``s. Formats are
recognised by content, not by file extension.

Safety: torch pickles are always read with ``torch.load(..., weights_only=True)`` passed
explicitly, so the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``-style environment switches cannot
turn the unsafe path on. A pickle that needs globals outside torch's allow-list raises
:class:`UnsafeCheckpointError` naming them; loading it takes an explicit opt-in
(``allow_globals=[...]`` or ``trust=True``) and is never retried unsafely on its own.

Every failure (missing, empty, truncated, corrupt, not a checkpoint) is one
:class:`CheckpointError` that names the file and the reason.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CONTAINER_KEYS",
    "EMA_KEYS",
    "Checkpoint",
    "read_checkpoint",
    "sniff_format",
]

#: Keys that wrap a state_dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")
#: Keys that wrap an exponential-moving-average copy of the weights.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema", "model_ema_state_dict")

HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class Checkpoint:
    """A checkpoint read into memory (tensors possibly memory-mapped).

    Attributes:
        tensors: flat ``{name: tensor}`` in stored order.
        format: ``torch``, ``torch-legacy``, ``lightning``, ``safetensors``, ``hf-folder``,
            ``state_dict`` (in memory) or ``module`` (an ``nn.Module``).
        origin: the file or folder read, or a description of the in-memory object.
        container: the key path unwrapped to reach the tensors (``"state_dict"``,
            ``"model.state_dict"``), or None.
        set_aside: non-tensor entries found beside the tensors, with their type names.
        metadata: format metadata (safetensors header metadata, Lightning versions, …).
    """

    tensors: dict[str, torch.Tensor]
    format: str
    origin: str
    container: str | None = None
    set_aside: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_elements(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


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
        source: a file, an HF-style folder, a state_dict (nested dicts are flattened), or a
            module.
        ema: take the EMA weights (``state_dict_ema``, ``model_ema``, …) instead of the
            regular ones; an error if there are none.
        allow_globals: ``"module.Name"`` globals the pickle may construct (imported and
            added to torch's safe list for this one load).
        trust: load the pickle with ``weights_only=False``: this can run code from the file,
            so it warns; use it only for files you made yourself.
        mmap: memory-map torch zip files and safetensors instead of reading them whole.

    Raises:
        CheckpointError: the source cannot be read; UnsafeCheckpointError if it needs globals.
    """
    if isinstance(source, nn.Module):
        return Checkpoint(dict(source.state_dict()), "module", type(source).__name__)
    if isinstance(source, Mapping):
        return _from_object(dict(source), "state_dict", "in-memory state_dict", ema)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, ema, allow_globals, trust, mmap)
    kind = sniff_format(path)
    if kind == "safetensors":
        return Checkpoint(_read_safetensors(path), "safetensors", str(path), metadata=_st_meta(path))
    obj = _torch_load(path, kind, allow_globals, trust, mmap)
    checkpoint = _from_object(obj, kind, str(path), ema)
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        checkpoint.format = "lightning"
        checkpoint.metadata["pytorch-lightning_version"] = str(obj["pytorch-lightning_version"])
    return checkpoint


def sniff_format(path: Path) -> str:
    """``torch`` (zip), ``torch-legacy`` (raw pickle) or ``safetensors``, from the bytes.

    Raises:
        CheckpointError: empty file, or bytes that are none of these.
    """
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); was the save interrupted?")
    with path.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK"):
        return "torch"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a torch file, a safetensors file nor a pickle; "
        f"starts with {head[:8]!r})"
    )


def _torch_load(
    path: Path, kind: str, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> Any:
    if kind == "torch":
        _check_zip(path)
    if trust:
        warnings.warn(
            f"loading {path} with weights_only=False: code inside the file can run. "
            "Only do this for files you created yourself.",
            stacklevel=3,
        )
        return _load(path, weights_only=False, mmap=mmap and kind == "torch")
    allowed = [_import_global(name) for name in allow_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return _load(path, weights_only=True, mmap=mmap and kind == "torch")
    except Exception as exc:
        wanted = _unsafe_globals(path, exc)
        if wanted:
            raise UnsafeCheckpointError(
                f"{path}: refusing to unpickle globals {', '.join(wanted)} (they could run "
                "code). If you trust the file, allow them by name with --allow-global "
                f"{wanted[0]} (allow_globals=[...]), or load it with --trust-checkpoint",
                wanted,
            ) from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: {_short(exc)}") from None


def _load(path: Path, weights_only: bool, mmap: bool) -> Any:
    # weights_only is always passed explicitly: the environment variables that change
    # torch.load's default must not decide what runs.
    return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{path}: the torch zip archive is damaged or truncated ({exc}); re-download or re-save it"
        ) from None


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    message = str(exc)
    if "Weights only load failed" not in message and "Unsupported global" not in message:
        return []
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if found:
            return list(found)
    except Exception:
        pass
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message))) or ["<unknown>"]


def _import_global(name: str) -> Any:
    module_name, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"cannot allow global '{name}': it cannot be imported ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged safetensors file: {_short(exc)}") from None


def _st_meta(path: Path) -> dict[str, str]:
    from safetensors.torch import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _read_folder(
    path: Path, ema: bool, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> Checkpoint:
    for name in HF_WEIGHT_FILES:
        candidate = path / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            tensors = _read_sharded(candidate, allow_globals, trust, mmap)
        else:
            tensors = read_checkpoint(
                candidate, ema=ema, allow_globals=allow_globals, trust=trust, mmap=mmap
            ).tensors
        return Checkpoint(tensors, "hf-folder", str(path), metadata={"file": name})
    raise CheckpointError(
        f"{path}: a folder without weights; expected one of {', '.join(HF_WEIGHT_FILES)}"
    )


def _read_sharded(
    index: Path, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> dict[str, torch.Tensor]:
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc})") from None
    shards: dict[str, dict[str, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, shard in weight_map.items():
        if shard not in shards:
            shard_path = index.parent / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: shard '{shard}' listed for '{key}' is missing")
            shards[shard] = read_checkpoint(
                shard_path, allow_globals=allow_globals, trust=trust, mmap=mmap
            ).tensors
        if key not in shards[shard]:
            raise CheckpointError(f"{index}: '{key}' is not in its shard '{shard}'")
        tensors[key] = shards[shard][key]
    return tensors


def _from_object(obj: Any, kind: str, origin: str, ema: bool) -> Checkpoint:
    """Unwrap containers and set non-tensor entries aside."""
    if isinstance(obj, nn.Module):
        return Checkpoint(dict(obj.state_dict()), "module", origin)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    container_path: list[str] = []
    set_aside: dict[str, str] = {}
    current: Mapping[str, Any] = obj
    while True:
        key = _container_key(current, ema and not container_path)
        if key is None:
            break
        for other, value in current.items():
            if other != key:
                set_aside[".".join([*container_path, other])] = _describe(value)
        container_path.append(key)
        inner = current[key]
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        current = inner
    if ema and not container_path:
        raise CheckpointError(
            f"{origin}: no EMA weights found (looked for {', '.join(EMA_KEYS)}); drop the EMA option"
        )
    tensors: dict[str, torch.Tensor] = {}
    _flatten(current, "", tensors, set_aside)
    if not tensors:
        raise CheckpointError(
            f"{origin}: no tensors found; top-level keys are {sorted(map(str, obj))[:10]}"
        )
    return Checkpoint(
        tensors, kind, origin, ".".join(container_path) or None, set_aside
    )


def _container_key(mapping: Mapping[str, Any], ema: bool) -> str | None:
    keys = EMA_KEYS if ema else CONTAINER_KEYS
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, nn.Module) or (isinstance(value, Mapping) and _holds_tensors(value)):
            return key
    return None


def _holds_tensors(mapping: Mapping[str, Any]) -> bool:
    return any(
        isinstance(v, torch.Tensor) or (isinstance(v, Mapping) and _holds_tensors(v))
        for v in mapping.values()
    )


def _flatten(
    mapping: Mapping[str, Any], prefix: str, out: dict[str, torch.Tensor], aside: dict[str, str]
) -> None:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping) and _holds_tensors(value):
            _flatten(value, name + ".", out, aside)
        else:
            aside[name] = _describe(value)


def _describe(value: Any) -> str:
    if isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40:
        return f"{type(value).__name__} = {value!r}"
    if isinstance(value, (Mapping, Iterable)) and not isinstance(value, (str, bytes)):
        try:
            return f"{type(value).__name__} of {len(value)}"  # type: ignore[arg-type]
        except TypeError:
            pass
    return type(value).__name__


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
