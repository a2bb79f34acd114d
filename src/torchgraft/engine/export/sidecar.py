"""The record written beside an export — ``<file>.json``, the sidecar (docs/export.md lists
its fields) — and the files it vouches for.

:func:`export_record` builds it from what :func:`~.write.export_run` measured; the sidecar
vouches for the file, so it is written last, once the file passed its check.
:func:`~.load.read_sidecar` reads it back and checks its fields before predict trusts any.

It must cover every file the model loads: the exported file's sha256 and, for ONNX, each
external data file (tensors stored beside the model: torch's exporters write them for models
over 2 GB, whatever ``external_data=False`` says) with its name, size and sha256
(:func:`external_data_record`). A self-contained ONNX file records ``"external_data": []``; a
sidecar written before the field existed has none, which predict accepts only for a model
that loads no other file (:func:`check_external_data`). An external file must be a plain
file name in the model's folder: no folder part, no ``..``, no absolute path, no link leading
out of the folder. Every file is hashed as a regular file
(:func:`~torchgraft.checkpoint.write.sha256_file`): a FIFO would block the read forever,
``/dev/zero`` would never end it.

This module imports no other part of the export (``onnx`` only inside the functions that
read a model), so every one of them can use it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...checkpoint.write import sha256_file
from ...errors import CheckpointError, ExportError
from ...sidecars import sidecar_path  # the one naming rule (FILE.json), re-exported here
from ...text import printable

if TYPE_CHECKING:
    from .write import ExportResult

__all__ = [
    "EXPORT_FORMAT",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RULE",
    "check_external_data",
    "export_record",
    "external_data_record",
    "external_locations",
    "sidecar_path",
]

#: The ``format`` field of every sidecar (its schema version).
EXPORT_FORMAT = "torchgraft.export/1"
#: The graph's input and output names (ONNX) and the sidecar's description of them.
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: The check every export passed, in words (recorded, and quoted when one fails).
RULE = "max |exported - eager| <= tolerance * max(1, max |eager|), over every logit"
_AGAIN = "export the run again"


def export_record(
    result: ExportResult,
    model: nn.Module,
    document: dict[str, Any],
    weights: Path,
    written: Path,
) -> dict[str, Any]:
    """The sidecar of an export.

    Args:
        result: what the export measured (its ``path`` is the final name).
        model: the eager model it was made from (classes, preprocessing).
        document: the run's ``model.json``; ``weights``: its weights file.
        written: the exported file as written (its temporary name, before the rename).

    Raises:
        ExportError: an ONNX exporter stored weights where predict would refuse them.
    """
    pre = model.preprocessing
    return {
        "format": EXPORT_FORMAT,
        "export": result.format,
        "file": result.path.name,
        "sha256": result.sha256,
        **_external_data(result.format, written),
        "classes": list(model.classes),
        "preprocessing": json.loads(json.dumps(dataclasses.asdict(pre))),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *pre.input_size],
            "dtype": "float32",
            "values": "(pixels / 255 - mean) / std, after the preprocessing's resize and crop",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.classes)]},
        "exported_with": {
            "method": result.method,
            "notes": result.notes,
            "torch": torch.__version__,
            **_format_details(result.format, written),
        },
        "check": {
            "max_abs_diff": result.max_abs_diff,
            "allowed": result.allowed,
            "tolerance": result.tolerance,
            "rule": RULE,
            "batch_sizes": list(result.batch_sizes),
            "sample": result.sample,
            "runtime": result.runtime,
            "reference": "the eager model (torchgraft.load of the run), float32, CPU",
        },
        "source": {
            "run": str(weights.parent),
            "model": document.get("spec", {}).get("name"),
            "model_sha256": document.get("sha256"),
            "epoch": document.get("epoch"),
        },
        # False for a run killed before its last epoch (an export of its best model so far)
        **result.progress.record(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _external_data(format: str, written: Path) -> dict[str, Any]:
    """``{"external_data": [...]}`` for ONNX (every file it loads besides itself), else {}."""
    if format != "onnx":
        return {}
    return {"external_data": external_data_record(written)}


def _format_details(format: str, path: Path) -> dict[str, Any]:
    """ONNX: the opset and the versions of the libraries that wrote and checked the file."""
    if format != "onnx":
        return {}
    import onnx
    import onnxruntime
    import onnxscript

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# -- external data -----------------------------------------------------------------------------


def external_locations(model: Any) -> list[str]:
    """The ``location`` of every tensor of ``model`` (an ``onnx.ModelProto``) stored outside
    the file, each once, in order of appearance ("" where a tensor names none)."""
    found: dict[str, None] = {}
    for tensor in _tensors(model):
        if tensor.data_location == 1 or len(tensor.external_data):  # 1: TensorProto.EXTERNAL
            entries = {entry.key: entry.value for entry in tensor.external_data}
            found.setdefault(entries.get("location", ""), None)
    return list(found)


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto in ``model``: its graphs' and functions' nodes, with a stack."""
    owners = [model.graph, *model.functions]
    for training in model.training_info:
        owners += [training.initialization, training.algorithm]
    while owners:
        owner = owners.pop()
        for sparse in getattr(owner, "sparse_initializer", ()):  # graphs have them
            yield from (sparse.values, sparse.indices)
        yield from getattr(owner, "initializer", ())  # functions have no initializers
        for node in owner.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse = [*attribute.sparse_tensors]
                if attribute.HasField("sparse_tensor"):
                    sparse.append(attribute.sparse_tensor)
                for tensor in sparse:
                    yield from (tensor.values, tensor.indices)
                if attribute.HasField("g"):  # the bodies of If, Loop, Scan
                    owners.append(attribute.g)
                owners += attribute.graphs


def check_external_data(
    path: Path, locations: Sequence[str], recorded: Sequence[dict[str, Any]] | None
) -> None:
    """Every external file of the model at ``path``: a plain name in its folder, recorded in
    its sidecar, the same size and sha256 now.

    Raises:
        CheckpointError: naming the model, the file and what is wrong.
    """
    entries = {entry["file"]: entry for entry in recorded or ()}
    folder = path.parent
    for location in locations:
        start = f"{printable(path)}: it loads weights from {printable(location) or '(no file)'}"
        if not _plain_name(location):
            raise CheckpointError(
                f"{start}, which is not a plain file name in the model's folder; torchgraft "
                f"export writes an export's files side by side, so this file was not made by "
                f"it; {_AGAIN}"
            )
        if recorded is None:
            raise CheckpointError(
                f"{start}, but its sidecar records no external data file (a sidecar written "
                "before torchgraft recorded them, or not by torchgraft export), so a change "
                f"to that file would go unnoticed; {_AGAIN}"
            )
        if location not in entries:
            raise CheckpointError(f"{start}, which its sidecar does not record; {_AGAIN}")
        file = folder / location
        if Path(os.path.realpath(file)).parent != Path(os.path.realpath(folder)):
            raise CheckpointError(f"{start}, a link leading out of the model's folder; {_AGAIN}")
        try:
            digest, size = _hash(file)
        except OSError as exc:
            raise CheckpointError(f"{start}: {_why(exc)}; {_AGAIN}") from None
        if (digest, size) != (entries[location]["sha256"], entries[location]["size"]):
            raise CheckpointError(
                f"{printable(path)}: its external data file {printable(location)} does not "
                f"match the sha256 recorded in {printable(sidecar_path(path).name)}: it was "
                f"changed or damaged after the export; {_AGAIN}"
            )


def _plain_name(location: str) -> bool:
    """A file name without any folder part: ``weights.data``, not ``../x``, ``a/b`` or ``/x``."""
    return (
        location not in ("", ".", "..")
        and not any(sep in location for sep in ("/", "\\", "\0"))
        and not os.path.isabs(location)
    )


def external_data_record(path: Path) -> list[dict[str, Any]]:
    """What a sidecar records of the files the ONNX model at ``path`` (just exported) loads
    tensors from: ``[{"file", "size", "sha256"}]``, empty for a self-contained file.

    Raises:
        ExportError: the exporter referenced a file predict would refuse, or one it cannot
            read.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    record = []
    for location in external_locations(model):
        try:
            if not _plain_name(location):
                raise OSError("not a plain file name beside the model")
            digest, size = _hash(path.parent / location)
        except OSError as exc:
            raise ExportError(
                f"the ONNX exporter stored weights in {printable(location)}: {_why(exc)}; "
                "predict would refuse the export, so it was not written"
            ) from None
        record.append({"file": location, "size": size, "sha256": digest})
    return record


def _hash(path: Path) -> tuple[str, int]:
    """``(sha256, size)`` of a regular file (OSError: missing, unreadable, not regular)."""
    digest = sha256_file(path)  # opens regular files only
    return digest, path.stat().st_size


def _why(exc: OSError) -> str:
    return printable(exc.strerror or exc)
