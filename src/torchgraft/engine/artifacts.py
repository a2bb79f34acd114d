"""The trained model as files: ``model.safetensors`` + ``model.json``, and :func:`load`.

``model.json`` says how to rebuild the architecture (``build``: zoo spec, builder options,
head), what the outputs mean (``classes``), how inputs must be prepared
(``preprocessing``), the metrics it reached, and the sha256 of ``model.safetensors``.

Both files are written atomically, weights first. The same document (less the file hash)
also travels inside the safetensors header, with a hash of the tensors' content: if a run is
killed between the two renames, :func:`load` finds ``model.json`` one save behind, sees that
the weights are intact and newer, and uses the embedded copy (saying so) — while a weights
file whose content does not match any record is refused.

Every weight of a loaded model enters through an ``exact`` graft, like every other load.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..adapters import AdaptedSnapshot, adapted_snapshot, trainable_names, write_adapters
from ..atomic import atomic_write_bytes, atomic_write_text
from ..checkpoint.documents import parse_json, read_json
from ..checkpoint.read import read_checkpoint
from ..checkpoint.write import sha256_file
from ..errors import CheckpointError
from ..grafting.api import graft
from ..model.build_record import Trust
from ..model.heads import replace_head
from ..model.spec import ModelSpec, Preprocessing, attach_spec
from ..model.stem import replace_input_channels
from .model_record import check_model_record

__all__ = [
    "MODEL_FILE",
    "MODEL_FORMAT",
    "MODEL_JSON",
    "build_architecture",
    "build_document",
    "content_sha256",
    "load",
    "read_model_document",
    "result_snapshot",
    "save_model",
    "save_result",
]

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
MODEL_FORMAT = "torchgraft.model/1"
_METADATA_KEY = "torchgraft"


def content_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of names, dtypes, shapes and bytes, independent of the file layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def result_snapshot(model: nn.Module) -> dict[str, torch.Tensor] | AdaptedSnapshot:
    """A copy of ``model``'s result to save later: its state_dict, or for a model with
    adapters the merged plain weights (checked) and the adapters alone
    (:func:`torchgraft.adapters.adapted_snapshot`).

    Raises:
        AdapterMergeError: the merged model would not compute what was trained.
    """
    if trainable_names(model) is not None:
        return adapted_snapshot(model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_result(
    folder: str | os.PathLike,
    result: Mapping[str, torch.Tensor] | AdaptedSnapshot,
    document: Mapping[str, Any],
) -> str:
    """Write a :func:`result_snapshot` into the run ``folder``: ``model.safetensors`` +
    ``model.json`` (plain weights, loadable without adapter code), and for an adapted model
    ``adapters.safetensors`` + its sidecar (with the merge check) beside them. Returns the
    model file's sha256."""
    if not isinstance(result, AdaptedSnapshot):
        return save_model(folder, result, document)
    sha = save_model(folder, result.merged, document)
    write_adapters(folder, result.adapters, result.config, {"merge": result.merge.to_dict()})
    return sha


def save_model(
    folder: str | os.PathLike,
    weights: nn.Module | Mapping[str, torch.Tensor],
    document: Mapping[str, Any],
) -> str:
    """Write ``model.safetensors`` then ``model.json`` into ``folder``; returns the file sha256.

    Args:
        folder: the run directory.
        weights: the model, or a snapshot of its state_dict.
        document: the record (see the module docstring).

    Raises:
        CheckpointError: a non-finite weight (a diverged model is never saved as a result).
    """
    folder = Path(folder)
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"refusing to save a model with non-finite weights ({', '.join(bad[:3])})"
        )
    record = {**document, "format": MODEL_FORMAT, "content_sha256": content_sha256(tensors)}
    data = safetensors_bytes(tensors, metadata={_METADATA_KEY: json.dumps(record)})
    sha = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(folder / MODEL_FILE, data)
    atomic_write_text(folder / MODEL_JSON, json.dumps({**record, "sha256": sha}, indent=2) + "\n")
    return sha


def read_model_document(
    path: str | os.PathLike, *, trust_run: Trust = False
) -> tuple[dict[str, Any], Path]:
    """``(document, weights file)`` for a run directory or a ``model.safetensors`` file,
    checked against the recorded hashes (see the module docstring) and, field by field, as
    data (:mod:`.model_record`: a record never selects code).

    Args:
        path: a run directory or a ``.safetensors`` model file.
        trust_run: allow a ``package.module:callable`` builder (it runs when the model is
            built); torchvision and timm builders need no opt-in.

    Raises:
        UntrustedRunError: a builder outside torchvision/timm without ``trust_run``.
        CheckpointError: no model there, weights that match no record, or a record that is
            not valid.
    """
    weights, sidecar = _locate(Path(path))
    embedded = _embedded_document(weights)
    document = embedded
    if _exists(sidecar):
        document = read_json(sidecar, CheckpointError)
        if not isinstance(document, dict):
            raise CheckpointError(f"{sidecar}: not a torchgraft model record")
        if sha256_file(weights) != document.get("sha256"):
            if embedded is None or embedded == {k: v for k, v in document.items() if k != "sha256"}:
                raise CheckpointError(
                    f"{weights} does not match the sha256 recorded in {sidecar}: the file was "
                    "changed or damaged after it was saved"
                )
            message = f"{sidecar} is one save behind {weights.name} (a run stopped while saving)"
            warnings.warn(f"{message}; using the record inside the weights file", stacklevel=2)
            document = embedded
    elif embedded is None:
        raise CheckpointError(
            f"{weights}: no {MODEL_JSON} beside it and no torchgraft record inside"
        )
    origin = str(sidecar if document is not embedded else weights)
    checked = check_model_record(document, origin, trust_run=trust_run, model_format=MODEL_FORMAT)
    return checked, weights


def build_document(config: Any, num_classes: int) -> dict[str, Any]:
    """The ``build`` record of model.json from a run's configuration (a
    :class:`~.config.sections.RunConfig`): enough to rebuild the architecture."""
    return {
        "model": config.model.name,
        "kwargs": dict(config.model.kwargs),
        "in_chans": config.model.in_chans,
        "num_classes": num_classes,
        "head": {"dropout": config.head.dropout, "hidden": config.head.hidden},
    }


def build_architecture(
    build: Mapping[str, Any],
    classes: tuple[str, ...] | None,
    *,
    expected: Mapping[str, Sequence[int]] | None = None,
) -> nn.Module:
    """The architecture a run trained, without weights: zoo build, stem, head as recorded.

    Args:
        build: a checked build record (:func:`torchgraft.model.build_record.check_recorded_build`).
        classes: the output names.
        expected: ``{key: shape}`` of the weights the model is for. The architecture is first
            built without tensor memory and compared with it, so that a record asking for a
            model other than its weights (a head of 10^9 outputs) is refused before anything
            is allocated.

    Raises:
        CheckpointError: the record's architecture does not have the weights' tensors.
    """
    if expected is not None:
        _check_shapes(lambda: _assemble(build, classes), expected, build["model"])
    return _assemble(build, classes)


def _assemble(build: Mapping[str, Any], classes: tuple[str, ...] | None) -> nn.Module:
    from ..zoo import build_model  # its library (timm, torchvision) loads to build, only then

    built = build_model(build["model"], **dict(build.get("kwargs") or {}))
    model = built.model
    in_chans = build.get("in_chans")
    if in_chans and in_chans != built.spec.in_chans:
        replace_input_channels(model, in_chans)
    head = build.get("head") or {}
    replace_head(
        model,
        build["num_classes"],
        classes=classes,
        dropout=head.get("dropout") or 0.0,
        hidden=head.get("hidden"),
    )
    return model


def _check_shapes(assemble, expected: Mapping[str, Sequence[int]], name: str) -> None:
    from ..zoo.meta_build import build_on_meta

    try:
        model = build_on_meta(assemble)
    except Exception:  # a builder or head probe that cannot run without memory: the real
        return  # build reports its own errors, and the exact graft checks the tensors
    table = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    wanted = {k: tuple(v) for k, v in expected.items()}
    if table != wanted:
        differing = sorted(set(table) ^ set(wanted)) or sorted(
            k for k in table if table[k] != wanted[k]
        )
        shown = ", ".join(ascii(k) for k in differing[:3])
        raise CheckpointError(
            f"the record's model ({name}) does not have the tensors of its weights file "
            f"({len(differing)} differ: {shown}); the record or the weights were changed"
        )


def load(path: str | os.PathLike, *, trust_run: Trust = False) -> nn.Module:
    """The trained model of a run directory (or of a ``model.safetensors`` file) in eval mode.

    The model carries ``.classes`` (its output names), ``.preprocessing`` (a
    :class:`~torchgraft.Preprocessing`: size, mean, std, interpolation, crop) and, as every
    model torchgraft builds, ``.torchgraft_spec``; ``.torchgraft_report`` is the exact graft
    of the saved weights.

    Args:
        path: a run directory or its ``model.safetensors``.
        trust_run: build a model whose record names a ``package.module:callable`` builder
            (that code runs). The record is read from a file, and a file never selects code
            on its own: torchvision and timm models need no opt-in.

    Raises:
        UntrustedRunError: a ``package.module:callable`` builder without ``trust_run``.
        CheckpointError: no model there, weights that do not match their recorded sha256, or
            a record that is not valid.

    Example:
        >>> model = tg.load("runs/2026-11-29_120000-tf_efficientnet_lite0")
        >>> model.classes[:3], model.preprocessing.input_size
        (('0', '1', '2'), (3, 64, 64))
    """
    document, weights = read_model_document(path, trust_run=trust_run)
    spec = ModelSpec.from_dict(document["spec"])
    classes = tuple(document["classes"])
    checkpoint = read_checkpoint(weights)
    expected = {k: tuple(v.shape) for k, v in checkpoint.tensors.items()}
    model = build_architecture(document["build"], classes, expected=expected)
    report = graft(model, checkpoint.tensors, strategy="exact", source_name=str(weights))
    attach_spec(model, spec)
    object.__setattr__(model, "torchgraft_report", report)
    model.classes = classes
    model.preprocessing = spec.preprocessing
    return model.eval()


def preprocessing_of(document: Mapping[str, Any]) -> Preprocessing:
    """The preprocessing a saved model expects."""
    return ModelSpec.from_dict(document["spec"]).preprocessing


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        weights = path / MODEL_FILE
        if not _exists(weights):
            raise CheckpointError(
                f"{path}: no {MODEL_FILE} here; give a run directory (runs/…) whose training "
                "finished at least one epoch, or a model.safetensors file"
            )
        return weights, path / MODEL_JSON
    if not _exists(path):
        raise CheckpointError(
            f"{path}: no such run directory or model file; give a run directory that "
            "torchgraft train created (runs/…) or its model.safetensors"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: not a run directory or a .safetensors model file; give a run directory "
            "that torchgraft train created (runs/…) or its model.safetensors"
        )
    return path, path.with_name(MODEL_JSON) if path.name == MODEL_FILE else path.with_suffix(
        ".json"
    )


def _exists(path: Path) -> bool:
    """True when something is at ``path`` (a link that leads nowhere counts: the reader then
    names it, instead of the file being silently ignored)."""
    return os.path.lexists(path)


def _embedded_document(weights: Path) -> dict[str, Any] | None:
    """The record inside the safetensors header, if its content hash matches the tensors
    (read through the checkpoint reader, with its limits)."""
    checkpoint = read_checkpoint(weights)
    if checkpoint.format != "safetensors":
        raise CheckpointError(f"{weights}: not a safetensors file ({checkpoint.format})")
    raw = checkpoint.metadata.get(_METADATA_KEY)
    if raw is None:
        return None
    record = parse_json(raw, f"{weights} (its {_METADATA_KEY} record)", CheckpointError)
    if not isinstance(record, dict):
        raise CheckpointError(f"{weights}: its {_METADATA_KEY} record is not a mapping")
    if content_sha256(checkpoint.tensors) != record.get("content_sha256"):
        raise CheckpointError(
            f"{weights}: its tensors do not match the hash recorded when it was saved: the file "
            "was changed or damaged"
        )
    return record
