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

import _compat_pickle  # the stdlib's Python 2 → 3 name table, as pickle uses it
import importlib
import json
import os
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError

__all__ = ["CONTAINER_KEYS", "EMA_KEYS", "Checkpoint", "read_checkpoint", "sniff_format"]

#: Keys that wrap a state_dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")
#: Keys that wrap an exponential-moving-average copy of the weights.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema", "model_ema_state_dict")
#: Weight files of a Hugging Face-style folder, by preference (safetensors first: no pickle).
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: Nesting deeper than this is not a state_dict (and a crafted cycle must not recurse forever).
MAX_DEPTH = 32
#: torch.save's legacy format opens with this integer pickled as LONG1 (torch.serialization).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: An importable ``module.Name`` (a damaged pickle can name garbage).
_GLOBAL_NAME = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*")
#: Lines of torch.load's error messages that give advice rather than the reason.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please")
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


@dataclass
class Checkpoint:
    """A checkpoint read into memory (tensors possibly memory-mapped).

    Attributes:
        tensors: flat ``{name: tensor}`` in stored order (safetensors: sorted by name).
        format: ``torch``, ``torch-legacy``, ``lightning``, ``safetensors``, ``hf-folder``,
            ``state_dict`` (in memory) or ``module`` (an ``nn.Module``).
        origin: the file or folder read, or a description of the in-memory object.
        container: the key path unwrapped to reach the tensors (``"state_dict"``,
            ``"model.state_dict"``), or None.
        set_aside: non-tensor entries found beside the tensors, with their type names.
        metadata: format metadata (safetensors header metadata, Lightning version, …).
        files: every file read (a sharded folder: the index and each shard), e.g. to hash.
    """

    tensors: dict[str, torch.Tensor]
    format: str
    origin: str
    container: str | None = None
    set_aside: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()

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
        return _from_object(source, "module", type(source).__name__, ema)
    if isinstance(source, Mapping):
        return _from_object(source, "state_dict", "in-memory state_dict", ema)
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
    obj = _torch_load(path, kind, allow_globals, trust, mmap)
    checkpoint = _from_object(obj, kind, str(path), ema)
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


# ---- torch pickles ------------------------------------------------------------------------


def _torch_load(
    path: Path, kind: str, allow_globals: Sequence[str], trust: bool, mmap: bool
) -> Any:
    if kind == "torch":
        _check_zip(path)
    mmap = mmap and kind == "torch"  # legacy files cannot be mapped: read them whole
    if trust:
        warnings.warn(
            f"loading {path} with weights_only=False: code inside the file can run. "
            "Only do this for files you created yourself.",
            UserWarning,
            stacklevel=3,
        )
        try:
            return _load(path, weights_only=False, mmap=mmap)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot be read as a torch file: {_short(exc)}"
            ) from None
    allowed = [(_import_global(name), name) for name in allow_globals]
    # The allow-list is scoped to this load; refused globals are computed inside the scope
    # so that those the caller allowed are not reported back.
    with torch.serialization.safe_globals(allowed):
        try:
            return _load(path, weights_only=True, mmap=mmap)
        except Exception as exc:
            error, wanted = exc, _refused_globals(path, kind, exc)
    if wanted:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: the pickle wants {', '.join(wanted)}, outside torch's "
            "safe list (unpickling them could run code). If you trust the file, allow them by "
            "name (--allow-global NAME, allow_globals=[...]) or use --trust-checkpoint (trust=True)",
            wanted,
        )
    raise CheckpointError(f"{path}: cannot be read as a torch file: {_short(error)}")


def _load(path: Path, weights_only: bool, mmap: bool) -> Any:
    # weights_only is always passed explicitly: environment variables that change torch.load's
    # default must not decide what runs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        if path.suffix == ".safetensors":  # torch.load would hand the name to safetensors
            with path.open("rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=weights_only)
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def _check_zip(path: Path) -> None:
    """Give a precise error for zips that are damaged or are not ``torch.save`` archives."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:  # BadZipFile, but also struct/overflow errors on crafted bytes
        raise CheckpointError(
            f"{path}: a damaged or truncated zip archive ({_short(exc)}); re-download or re-save it"
        ) from None
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive, which cannot be read without running its code; "
            "save model.state_dict() with torch.save, or load it with torch.jit.load yourself"
        )
    if not any(name.endswith("/data.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a zip archive but not a torch checkpoint (no data.pkl; holds "
            f"{', '.join(names[:3]) or 'nothing'})"
        )


def _refused_globals(path: Path, kind: str, exc: Exception) -> list[str]:
    """The globals a refused pickle wanted; empty when it failed for another reason."""
    # A damaged pickle can fail on a garbled GLOBAL ("torch._u."): that is corruption.
    named = re.findall(r"GLOBAL ((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\b(?!\.)", str(exc))
    if not named:
        return []  # a corrupt or unsupported pickle, not a refusal
    try:
        if kind == "torch":
            found = [
                _py3_name(*name.rsplit(".", 1))
                for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
            ]
        else:
            # No public helper for legacy files: list their GLOBALs statically, minus the
            # allow-list (private, hence the fallback to the name in torch's message).
            from torch import _weights_only_unpickler as wou

            allowed = {**wou._get_allowed_globals(), **wou._get_user_allowed_globals()}
            found = [name for name in _pickle_globals(path) if name not in allowed]
    except Exception:
        found = []
    found = [name for name in dict.fromkeys(found) if _GLOBAL_NAME.fullmatch(name)]
    # torch's message drops "builtins." ("GLOBAL exec"); names must be importable as given.
    return found or [name if "." in name else f"builtins.{name}" for name in named]


def _pickle_globals(path: Path, pickles: int = 5) -> list[str]:
    """GLOBAL names in the first pickles of a legacy torch file, found by parsing only.

    ``pickletools.genops`` decodes opcodes without executing any of them.
    """
    found: list[str] = []
    with path.open("rb") as handle:
        for _ in range(pickles):  # magic, protocol, sys info, the object, storage keys
            try:
                for opcode, arg, _pos in pickletools.genops(handle):
                    if opcode.name == "GLOBAL":
                        found.append(_py3_name(*str(arg).split(" ", 1)))
            except Exception:
                break
    return found


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 imports it (protocol-2 pickles say ``__builtin__.exec``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _import_global(name: str) -> Any:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # "pkg.mod.Outer.Inner": longest module first
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            break
        return obj
    raise CheckpointError(
        f"cannot allow global '{name}': no importable module.attribute by that name"
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
        raise CheckpointError(f"{path}: a damaged safetensors file: {_short(exc)}") from None
    except BaseException as exc:  # a Rust panic surfaces as PanicException(BaseException)
        if type(exc).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path}: a damaged safetensors file: {_short(exc)}") from None
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
        raise CheckpointError(f"{index}: not a valid shard index ({_short(exc)})") from None
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


# ---- unwrapping containers ----------------------------------------------------------------


def _from_object(obj: Any, kind: str, origin: str, ema: bool) -> Checkpoint:
    """Unwrap containers, flatten nested dicts and set non-tensor entries aside."""
    if isinstance(obj, nn.Module):
        if ema:
            raise CheckpointError(f"{origin}: a module holds no separate EMA weights")
        return Checkpoint(dict(obj.state_dict()), "module", origin)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    path: list[str] = []
    set_aside: dict[str, str] = {}
    current: Mapping[str, Any] = obj
    while len(path) < MAX_DEPTH and (key := _container_key(current, ema and not path)):
        for other, value in current.items():
            if other != key:
                set_aside[".".join([*path, str(other)])] = _describe(value)
        path.append(key)
        current = current[key]
        if isinstance(current, nn.Module):
            current = current.state_dict()
    if ema and not path:
        raise CheckpointError(
            f"{origin}: no EMA weights found (looked for {', '.join(EMA_KEYS)}); drop the EMA option"
        )
    tensors: dict[str, torch.Tensor] = {}
    _flatten(current, "", tensors, set_aside, origin, 0, set())
    if not tensors:
        keys = sorted(map(str, current))[:10]
        raise CheckpointError(f"{origin}: no tensors found; its keys are {keys}")
    return Checkpoint(tensors, kind, origin, ".".join(path) or None, set_aside)


def _container_key(mapping: Mapping[str, Any], ema: bool) -> str | None:
    # A level holding tensors directly is a state_dict itself, whatever its keys are called.
    if any(isinstance(v, torch.Tensor) for v in mapping.values()):
        return None
    for key in EMA_KEYS if ema else CONTAINER_KEYS:
        value = mapping.get(key)
        if isinstance(value, nn.Module) or _holds_tensors(value, 0, set()):
            return key
    return None


def _holds_tensors(value: Any, depth: int, seen: set[int]) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if not isinstance(value, Mapping) or depth >= MAX_DEPTH or id(value) in seen:
        return False
    seen.add(id(value))  # shared or cyclic sub-dicts (pickles can make them) are walked once
    return any(_holds_tensors(v, depth + 1, seen) for v in value.values())


def _flatten(
    mapping: Mapping[str, Any],
    prefix: str,
    out: dict[str, torch.Tensor],
    aside: dict[str, str],
    origin: str,
    depth: int,
    seen: set[int],
) -> None:
    seen.add(id(mapping))
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if name in out:  # {"a.b": t, "a": {"b": t2}} would otherwise lose one silently
                raise CheckpointError(f"{origin}: two tensors flatten to the same name '{name}'")
            out[name] = value
        elif id(value) not in seen and _holds_tensors(value, depth + 1, set()):
            _flatten(value, f"{name}.", out, aside, origin, depth + 1, seen)
        else:
            aside[name] = _describe(value)


def _describe(value: Any) -> str:
    if isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40:
        return f"{type(value).__name__} = {value!r}"
    if isinstance(value, (Mapping, list, tuple, set)):
        holds = " (holds tensors)" if _holds_tensors(value, 0, set()) else ""
        return f"{type(value).__name__} of {len(value)}{holds}"
    return type(value).__name__


def _short(exc: BaseException) -> str:
    """The reason inside an exception's message, without torch's paragraphs of advice."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    if match:
        return match.group(1)[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    return (reasons or lines or [type(exc).__name__])[0][:200]
