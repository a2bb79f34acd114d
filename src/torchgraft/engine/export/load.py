"""Exported models back: a file ``torchgraft export`` wrote, with its JSON sidecar.

An export is two files: the program (``model.ts.pt``, ``model.pt2`` or ``model.onnx``) and
``<file>.json`` beside it, which says what the outputs mean (``classes``), how inputs must be
prepared (``preprocessing``), which format the file is in and its sha256 — and, for an ONNX
file whose tensors are stored in other files (external data), each of those files' name, size
and sha256. :func:`load_exported` checks them *before* the file is handed to its loader
(``torch.jit.load``, ``torch.export.load``, onnxruntime), so a file changed or damaged after it
was exported is refused instead of run; an ONNX file is also checked against what its sidecar
says it takes and returns, and its failures while running are typed (:mod:`.onnx_files`).

Everything is read within bounds: the sidecar through :func:`torchgraft.checkpoint.documents.read_json`
(a regular file, at most 16 MiB, 64 levels deep), the exported file as a regular file only
(a FIFO or a device is refused, not waited on).

The check proves integrity, not trust: a TorchScript or ``.pt2`` file is a program.
TorchScript runs its own code, and ``torch.export.load`` unpickles parts of the archive, so a
crafted file with a sidecar crafted to match can run code when loaded. Those two formats are
therefore refused (:class:`~torchgraft.errors.UntrustedExportError`, before the loader sees
the file) unless the caller opts in by name: ``trust=True``, ``predict --trust-export`` — the
rule checkpoints follow with ``--trust-checkpoint`` (docs/security.md). ONNX needs no opt-in:
onnxruntime runs a graph of standard ONNX operators.

Everything read from the sidecar is data: class names are printed escaped by the callers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# MissingExtraError, UntrustedExportError: defined in errors.py, re-exported where raised
from ...checkpoint.documents import read_json
from ...checkpoint.write import sha256_file
from ...errors import CheckpointError, MissingExtraError, TorchgraftError, UntrustedExportError
from ...model.spec import Preprocessing
from ...text import printable
from ...wording import in_cli, option
from . import onnx_files

# EXPORT_FORMAT, sidecar_path: defined with the sidecar, re-exported here
from .sidecar import EXPORT_FORMAT, sidecar_path

__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "ONNX_EXTRA",
    "ExportFormat",
    "ExportedModel",
    "MissingExtraError",
    "UntrustedExportError",
    "load_exported",
    "read_sidecar",
    "require_onnx",
    "sidecar_path",
]

#: How users install what ONNX needs.
ONNX_EXTRA = 'pip install "torchgraft[onnx]"'


@dataclass(frozen=True)
class ExportFormat:
    """One export format: its CLI name, default file name, what it needs installed, and
    whether loading a file of it can run code from the file (then loading needs an opt-in)."""

    name: str
    default_file: str
    description: str
    needs: tuple[str, ...] = ()
    runs_code: bool = False


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "torchscript", "model.ts.pt", "TorchScript (torch.jit.script or trace)", runs_code=True
        ),
        ExportFormat("pt2", "model.pt2", "torch.export ExportedProgram", runs_code=True),
        ExportFormat(
            "onnx", "model.onnx", "ONNX (torch.onnx.export)", ("onnx", "onnxruntime", "onnxscript")
        ),
    )
}


def require_onnx(modules: tuple[str, ...] = FORMATS["onnx"].needs) -> None:
    """Import what ONNX export or inference needs, or say how to install it.

    Raises:
        MissingExtraError: naming the missing modules and the ``[onnx]`` extra.
    """
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"ONNX needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed; install the optional extra: {ONNX_EXTRA}"
        )


@dataclass
class ExportedModel:
    """An exported model ready for prediction: call it on a normalised float batch
    ``(B, C, H, W)`` to get logits ``(B, classes)``; ``classes`` and ``preprocessing`` as
    :func:`torchgraft.load`'s model carries them. Runs on the CPU."""

    path: Path
    format: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    sidecar: dict[str, Any]
    run: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of the exported file ``path``, its fields checked (not the file's hash).

    Raises:
        CheckpointError: no sidecar, or one that is not a torchgraft export record.
    """
    path = Path(path)
    side = sidecar_path(path)
    shown = printable(side)
    if not os.path.lexists(side):
        raise CheckpointError(
            f"{printable(path)}: no {printable(side.name)} beside it; predict reads an exported "
            "model with the sidecar torchgraft export wrote (classes, preprocessing, sha256). "
            "Give a run directory, a model.safetensors, or an exported file with its sidecar"
        )
    try:
        document = read_json(side, CheckpointError)  # a FIFO, /dev/zero, [[[[…: refused
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; export the run again to write its sidecar") from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{shown}: not a torchgraft export record (expected format {EXPORT_FORMAT})"
        )
    problems = _sidecar_problems(document)
    if problems:
        raise CheckpointError(
            f"{shown}: {'; '.join(problems)}; export the run again with torchgraft export"
        )
    return document


def load_exported(
    path: str | os.PathLike, *, trust: bool = False, threads: int | None = None
) -> ExportedModel:
    """The exported model at ``path``, after its sha256 matched the sidecar's.

    Args:
        path: a file written by ``torchgraft export`` (its ``<file>.json`` beside it).
        trust: load a TorchScript or ``.pt2`` file, which can run code from the file. Only
            for files you made or trust; ONNX files need no opt-in.
        threads: intra-op threads for onnxruntime (default: torch's thread count).

    Raises:
        UntrustedExportError: a TorchScript or ``.pt2`` file (as its sidecar says) without
            ``trust=True``; raised before the file is hashed or loaded.
        CheckpointError: no sidecar, a malformed one, a file (or an ONNX external data file)
            whose sha256 differs from the recorded one, a file its loader cannot read, or an
            ONNX model whose inputs or outputs are not those its sidecar describes (also
            raised by the returned model, for an output that does not fit once run).
        MissingExtraError: an ONNX file without ``onnx`` and ``onnxruntime`` installed.

    The returned model raises :class:`~torchgraft.errors.ExportError` (exit status 1) when an
    ONNX model fails inside onnxruntime while running.

    Example:
        >>> model = load_exported("runs/first/model.onnx")
        >>> tg.predict(model, ["photos/cat.jpg"], topk=1)[0].top
        [('cat', 0.97)]
        >>> model = load_exported("runs/first/model.pt2", trust=True)  # you exported it
    """
    path = Path(path)
    document = read_sidecar(path)
    fmt = document["export"]
    # The sidecar's format picks the loader, so it decides, whatever the file is named.
    if FORMATS[fmt].runs_code and not trust:
        raise UntrustedExportError(_untrusted_message(path, fmt))
    if fmt == "onnx":
        require_onnx(("onnx", "onnxruntime"))  # before reading a file we could not run anyway
        run = _load_onnx_export(path, document, threads)
    else:
        _require_recorded(path, _hash(path), document)
        try:
            run = LOADERS[fmt](path, threads)
        except TorchgraftError:
            raise
        except Exception as exc:  # each loader has its own exception types
            raise CheckpointError(
                f"{printable(path)}: cannot load it as {fmt} ({type(exc).__name__}: {exc})"
            ) from None
    return ExportedModel(
        path,
        fmt,
        tuple(document["classes"]),
        preprocessing_from(document["preprocessing"]),
        document,
        run,
    )


def _load_onnx_export(path: Path, document: dict[str, Any], threads: int | None) -> Callable:
    """The ONNX file ``path`` read once, its sha256 checked, then loaded from those bytes."""
    data = onnx_files.read_model_bytes(path)
    _require_recorded(path, hashlib.sha256(data).hexdigest(), document)
    interface = onnx_files.Interface(
        tuple(document["preprocessing"]["input_size"]),
        len(document["classes"]),
        _declared_name(document, "input"),
        _declared_name(document, "output"),
    )
    external = document.get("external_data")  # None: a sidecar from before it was recorded
    return onnx_files.load_checked(path, data, external, interface, threads)


def _hash(path: Path) -> str:
    """The sha256 of the exported file: a regular file (a FIFO or a device is refused)."""
    try:
        return sha256_file(path)
    except OSError as exc:
        reason = printable(exc.strerror or exc)
        raise CheckpointError(f"{printable(path)}: {reason}; export the run again") from None


def _require_recorded(path: Path, digest: str, document: Mapping[str, Any]) -> None:
    if digest != document["sha256"]:
        raise CheckpointError(
            f"{printable(path)} does not match the sha256 recorded in "
            f"{printable(sidecar_path(path).name)}: the file was changed or damaged after it was "
            "exported; export the run again"
        )


def _declared_name(document: Mapping[str, Any], key: str) -> str | None:
    """The graph name the sidecar's ``input`` or ``output`` records (None: not recorded)."""
    field = document.get(key)
    return field.get("name") if isinstance(field, dict) else None


def _untrusted_message(path: Path, fmt: str) -> str:
    onnx = "torchgraft export RUN_DIR --format onnx" if in_cli() else 'export_run(run, "onnx")'
    return (
        f"{printable(path)}: not loaded: its sidecar says it is a {FORMATS[fmt].description} "
        "export, and an exported TorchScript or torch.export program is code that can run "
        f"anything when it is loaded; the sha256 in {printable(sidecar_path(path).name)} only "
        "proves the file matches its sidecar, not who made them. If you made this file or "
        f"trust whoever did, load it with {option('trust', True)}; otherwise export the run to "
        f"ONNX ({onnx}), which runs as standard operators and needs no opt-in"
    )


def preprocessing_from(data: Mapping[str, Any]) -> Preprocessing:
    """A :class:`Preprocessing` from its JSON form (lists back to tuples)."""
    fields = dict(data)
    for key in ("input_size", "mean", "std"):
        fields[key] = tuple(fields[key])
    return Preprocessing(**fields)


def load_torchscript(path: Path, threads: int | None = None) -> Callable:
    """A TorchScript file as a callable (``torch.jit.load`` on the CPU)."""
    import warnings

    with warnings.catch_warnings():
        # torch 2.14 deprecates torch.jit; the file still loads, and the user chose the format
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def load_pt2(path: Path, threads: int | None = None) -> Callable:
    """A ``torch.export`` archive as a callable module."""
    # From the bytes, not the path: torch.export.load wants a name ending in .pt2, and an
    # export is checked under its temporary name before it is renamed.
    import io

    return torch.export.load(io.BytesIO(path.read_bytes())).module()


def load_onnx(path: Path, threads: int | None = None) -> Callable:
    """An ONNX file as a callable running onnxruntime on the CPU (``threads`` intra-op), from
    its path: the export's check of the file it has just written. Predict loads through
    :func:`load_exported`, which checks the file first."""
    return onnx_files.runner(onnx_files.open_session(str(path), threads), path)


LOADERS: dict[str, Callable[[Path, int | None], Callable]] = {
    "torchscript": load_torchscript,
    "pt2": load_pt2,
    "onnx": load_onnx,
}


def _sidecar_problems(document: Mapping[str, Any]) -> list[str]:
    """What is wrong with a sidecar's fields (empty: nothing)."""
    problems = []
    if document.get("export") not in FORMATS:
        problems.append(f"'export' must be one of {', '.join(FORMATS)}")
    if not _is_sha256(document.get("sha256")):
        problems.append("'sha256' must be 64 hex digits")
    for key in ("input", "output"):  # optional: sidecars written by hand may leave them out
        field = document.get(key, {})
        if not (isinstance(field, dict) and isinstance(field.get("name", ""), str)):
            problems.append(f"'{key}' must be an object whose 'name' is a string")
    external = document.get("external_data", [])  # absent: written before it was recorded
    if not (isinstance(external, list) and all(map(_is_file_record, external))):
        problems.append("'external_data' must be a list of {file, size, sha256} records")
    classes = document.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        problems.append("'classes' must be a non-empty list of names")
    try:
        pre = preprocessing_from(document.get("preprocessing") or {})
        numbers = (*pre.input_size, *pre.mean, *pre.std, pre.crop_pct)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise ValueError("non-numeric values")
        if len(pre.input_size) != 3 or min(pre.input_size) < 1 or min(pre.std) <= 0:
            raise ValueError("sizes or std out of range")
        if not len(pre.mean) == len(pre.std) == pre.input_size[0]:
            raise ValueError("one mean and one std per input channel")
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"'preprocessing' is not valid ({exc})")
    return problems


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _is_file_record(entry: Any) -> bool:
    """``{"file": name, "size": bytes, "sha256": hex}``: one external data file of an export."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return False
    size = entry.get("size")
    return type(size) is int and size >= 0 and _is_sha256(entry.get("sha256"))
