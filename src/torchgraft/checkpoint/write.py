"""Write grafted weights: ``OUT.safetensors`` plus a JSON sidecar ``OUT.safetensors.json``
(:func:`torchgraft.sidecars.sidecar_path`, the one naming rule), atomically.

The sidecar says where the weights came from (source, mapping, report — whatever the caller
passes) and carries the sha256 of the safetensors file it sits beside, so a reader can tell
a matching pair from a stale one. Both files are written to temporary files first and renamed
into place only when both are complete: a failure (or a kill) while writing leaves the old
pair, or nothing, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_paths
from ..errors import CheckpointError
from ..sidecars import legacy_sidecar_path, sidecar_path  # sidecar_path re-exported
from .regular_files import open_regular

__all__ = ["legacy_graft_sidecar", "save_grafted", "sha256_file", "sidecar_path"]

_CHUNK = 1 << 20  # 1 MiB: large enough for full disk speed, small enough to stay in cache


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a regular file, read in 1 MiB chunks (constant memory for any size).

    Raises:
        OSError: the file cannot be read, or is not a regular file (a FIFO would block, a
            device never end: :mod:`torchgraft.checkpoint.regular_files`).
    """
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open_regular(path) as (handle, _):
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def save_grafted(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], sidecar: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` to ``path`` (safetensors) and ``sidecar`` to ``path`` + ``.json``.

    Tensors that share storage (tied weights) are stored as separate copies and
    non-contiguous ones are made contiguous, since safetensors refuses both; every key is
    kept. The sidecar is written as given, plus ``sha256`` (of the written safetensors file,
    replacing any value passed) and ``file`` (its name).

    Args:
        path: the output; must end in ``.safetensors``. Its folder must exist.
        tensors: ``{name: tensor}``; any device (copied to CPU), any safetensors dtype.
        sidecar: JSON-serialisable data (paths are written as strings; NaN/inf refused).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: a wrong suffix, a non-tensor value, a tensor safetensors cannot
            store, or a sidecar that is not JSON. Nothing is written in these cases.
        OSError: the disk write failed; any existing pair of files is left as it was.

    Example:
        >>> save_grafted("out.safetensors", model.state_dict(), {"source": "colleague.ckpt"})
        PosixPath('out.safetensors')
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: grafted weights are written as .safetensors; rename it")
    prepared = _storable(path, tensors)
    document = dict(sidecar)
    _to_json(path, document)  # fail on a bad sidecar before writing gigabytes of weights
    from safetensors.torch import save_file

    with atomic_paths(path, sidecar_path(path)) as (weights_tmp, sidecar_tmp):
        try:
            save_file(prepared, weights_tmp, metadata={"format": "pt"})
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: safetensors cannot store these tensors: {exc}"
            ) from None
        # Hash the temporary file: it is byte for byte what the rename will put in place.
        document.update(sha256=sha256_file(weights_tmp), file=path.name)
        sidecar_tmp.write_text(_to_json(path, document), encoding="utf-8")
    return path


def legacy_graft_sidecar(path: str | os.PathLike) -> Path | None:
    """The sidecar an earlier torchgraft wrote for the grafted weights at ``path`` under the
    old name (``out.safetensors`` → ``out.json``), or None when there is none.

    Only a file that is such a sidecar counts: a JSON mapping whose ``file`` names ``path``
    and that records a ``sha256`` (a user's own ``out.json`` is none of torchgraft's
    business). Read within the document limits; anything unreadable is not one.
    """
    from .documents import read_json

    old = legacy_sidecar_path(path)
    if old == sidecar_path(path) or not os.path.lexists(old):
        return None
    try:
        record = read_json(old, ValueError)
    except (OSError, ValueError):
        return None
    ours = isinstance(record, dict) and record.get("file") == Path(path).name
    return old if ours and isinstance(record.get("sha256"), str) else None


def _storable(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no storage with each other (what safetensors needs)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[tuple[str, int]] = set()
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{path}: '{key}' maps to a {type(tensor).__name__}; only str → tensor entries "
                "can be saved"
            )
        tensor = tensor.detach()
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{path}: '{key}' is a {tensor.layout} tensor; save it dense")
        tensor = tensor.cpu().contiguous()
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if storage in storages and tensor.numel():
            tensor = tensor.clone()  # tied weights: safetensors refuses shared storage
        storages.add((str(tensor.device), tensor.untyped_storage().data_ptr()))
        out[key] = tensor
    return out


def _to_json(path: Path, document: Mapping[str, Any]) -> str:
    try:
        return json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the sidecar cannot be written as JSON: {exc}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable ({value!r:.60})")
