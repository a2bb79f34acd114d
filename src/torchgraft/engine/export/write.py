"""Export a trained run to TorchScript, ``torch.export`` (.pt2) or ONNX — and prove it.

:func:`export_run` loads the run's model (:func:`torchgraft.load`), converts it with the
first method of its format that works, and reports it done only after the *written file*,
loaded back by the runtime that will use it (``torch.jit.load``, ``torch.export.load``,
onnxruntime), gave the eager model's outputs on a sample prepared with the run's
preprocessing, at batch sizes 1 and 3 (the batch dimension is dynamic in every format; the
converters see a batch of 2). "The same outputs" means::

    max |exported logits - eager logits|  <=  tolerance * max(1, max |eager logits|)

with ``tolerance`` 1e-4 by default: relative to the largest logit, absolute below 1.

Methods, in the order tried (a method that raises, or whose file fails the check, gives way
to the next one; which one was used, and why the others were not, is recorded):

=============  ==========================================================================
torchscript    ``torch.jit.script`` (keeps control flow), then ``torch.jit.trace``
pt2            ``torch.export.export`` with ``Dim("batch")`` on the input's first axis
onnx           ``torch.onnx.export(dynamo=True)`` (opset 18+), then the legacy
               TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``)
=============  ==========================================================================

Files are written atomically, the export then its sidecar ``<file>.json`` (classes,
preprocessing, input shape, sha256 — of ONNX external data files too —, the measured
difference, format, torch version, method, whether the run was finished; :mod:`.sidecar`):
an export that fails, or fails its check, leaves whatever was there before untouched and no
temporary file behind
(external data files an ONNX exporter wrote beside its file excepted: they are named by the
exporter, and only models over 2 GB have them).

A run that is not finished (killed at epoch 3 of 6) is exported all the same — its best
model so far — and :attr:`ExportResult.progress` says so (:mod:`.progress`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...atomic import atomic_paths
from ...checkpoint.write import sha256_file
from ...errors import (  # Export*: re-exported
    ConfigError,
    ExportCheckError,
    ExportError,
    OutputError,
)
from ...model.spec import Preprocessing
from ...text import printable
from ..artifacts import MODEL_FILE, MODEL_JSON, load, read_model_document
from .load import FORMATS, LOADERS, require_onnx
from .methods import EXAMPLE_BATCH, METHODS
from .progress import RunProgress, run_progress
from .sidecar import EXPORT_FORMAT, RULE, export_record, sidecar_path

__all__ = [
    "CHECK_BATCH_SIZES",
    "DEFAULT_TOLERANCE",
    "ExportCheckError",
    "ExportError",
    "ExportResult",
    "check_sample",
    "export_run",
]

#: Largest logit difference allowed, relative to max(1, the largest eager logit).
DEFAULT_TOLERANCE = 1e-4
#: Batch sizes every export is checked at (the converters see a batch of
#: :data:`~.methods.EXAMPLE_BATCH`, 2).
CHECK_BATCH_SIZES = (1, 3)


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and how it was checked."""

    path: Path
    sidecar: Path
    format: str
    method: str
    max_abs_diff: float
    allowed: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    sample: str
    runtime: str
    sha256: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: how far the run got (epochs done of planned); ``progress.unfinished(run)`` says it
    progress: RunProgress = field(default_factory=RunProgress)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            path=str(self.path),
            sidecar=str(self.sidecar),
            batch_sizes=list(self.batch_sizes),
            progress={**self.progress.record(), "finish": self.progress.finish},
        )
        return out


def export_run(
    run_dir: str | os.PathLike,
    format: str,
    output: str | os.PathLike | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    trust_run: bool = False,
) -> ExportResult:
    """Export the trained model of ``run_dir`` and check the written file.

    Args:
        run_dir: a run directory (or its ``model.safetensors``).
        format: ``torchscript``, ``pt2`` or ``onnx``.
        output: the file to write; default ``model.ts.pt`` / ``model.pt2`` / ``model.onnx``
            in the run directory. Its sidecar is ``<output>.json``; missing folders are made.
        tolerance: see the module docstring.
        trust_run: export a model whose record names a ``package.module:callable`` builder
            (that code runs; :func:`~torchgraft.engine.artifacts.load`).

    Returns:
        an :class:`ExportResult` (path, method, measured difference, sha256, …, and
        ``progress``: a run killed before its last epoch is exported, its best model so far,
        and ``progress.finished`` is False).

    Raises:
        ConfigError: an unknown format or a negative tolerance.
        MissingExtraError: ``onnx`` without the ``[onnx]`` extra installed (checked first).
        UntrustedRunError: a ``package.module:callable`` builder without ``trust_run``.
        CheckpointError: no trained model in ``run_dir``.
        OutputError: ``output`` cannot be written, or would replace the run's own model.
        ExportError: every method of the format failed (each reason given).
        ExportCheckError: the export ran, but its outputs differ from the eager model's.

    Example:
        >>> result = export_run("runs/first", "onnx")
        >>> result.path.name, result.max_abs_diff <= result.allowed
        ('model.onnx', True)
    """
    started = time.perf_counter()
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r}: choose one of {', '.join(FORMATS)}")
    if not tolerance >= 0:
        raise ConfigError(f"export tolerance must be a number >= 0, got {tolerance}")
    if format == "onnx":
        require_onnx()
    model = load(run_dir, trust_run=trust_run)
    document, weights = read_model_document(run_dir, trust_run=trust_run)
    folder = weights.parent
    progress = run_progress(folder, document)
    target = Path(output) if output is not None else folder / FORMATS[format].default_file
    side = sidecar_path(target)
    _refuse_overwriting_the_run(target, side, weights)
    pre: Preprocessing = model.preprocessing
    sample, described = check_sample(folder, pre)
    with torch.no_grad():
        eager = {n: model(sample[:n]).float() for n in CHECK_BATCH_SIZES}
    allowed = tolerance * max(1.0, max(float(t.abs().max()) for t in eager.values()))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths(target, side) as (temp, temp_side):
            method, diff, notes = _first_that_works(
                format, model, sample[1 : 1 + EXAMPLE_BATCH], temp, sample, eager, allowed
            )
            result = ExportResult(
                target, side, format, method, diff, allowed, tolerance, CHECK_BATCH_SIZES,
                described, _runtime(format), sha256_file(temp), 0.0, notes, progress,
            )  # fmt: skip
            record = export_record(result, model, document, weights, temp)
            temp_side.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {printable(target)}: {exc.strerror or exc}") from None
    result.seconds = time.perf_counter() - started
    return result


def check_sample(folder: Path, pre: Preprocessing, count: int = 3) -> tuple[torch.Tensor, str]:
    """``count`` normalised images ``(count, C, H, W)`` prepared with ``pre``, and what they are.

    Images of the run's own validation data (``config.yaml``'s ``data`` section) when it can
    still be read, spread over the split; seeded random pixels for the rest, so an export of
    a run whose data is gone can still be checked.
    """
    from ...data.transforms import Normalizer

    images = _run_images(folder, pre, count)
    real = len(images)
    generator = torch.Generator().manual_seed(0)
    while len(images) < count:
        images.append(torch.randint(0, 256, pre.input_size, generator=generator, dtype=torch.uint8))
    batch = Normalizer(pre, torch.device("cpu"))(torch.stack(images))
    if real == count:
        described = f"{count} images of the run's validation data"
    elif real:
        described = f"{real} images of the run's data and {count - real} of random pixels"
    else:
        described = f"{count} images of random pixels (the run's data could not be read)"
    return batch, f"{described}, prepared with its preprocessing"


def _first_that_works(
    format: str,
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    sample: torch.Tensor,
    eager: dict[int, torch.Tensor],
    allowed: float,
) -> tuple[str, float, list[str]]:
    """``(method, measured difference, notes)`` of the first method whose file passes."""
    failures: list[str] = []
    checked: list[str] = []
    for name, write in METHODS[format]:
        try:
            with _quiet() as caught:
                write(model, example, path)
            run = LOADERS[format](path, None)
            diff = _difference(run, sample, eager)
        except OSError:
            raise  # the disk, not the converter: reported as a file that cannot be written
        except Exception as exc:  # any converter error: the next method may still work
            failures.append(f"{name} failed: {_reason(exc)}")
            continue
        notes = failures + [f"{name}: {w}" for w in caught]
        if diff <= allowed:
            return name, diff, notes
        checked.append(f"{name}: outputs differ by {diff:.3g}")
        failures.append(f"{name} ran but its outputs differ by {diff:.3g} (allowed {allowed:.3g})")
    kept = "nothing was written (a previous export at that path is kept)"
    if checked:
        raise ExportCheckError(
            f"{format} export refused: the exported model's outputs differ from the eager "
            f"model's ({'; '.join(failures)}), at batch sizes "
            f"{' and '.join(map(str, CHECK_BATCH_SIZES))}; rule: {RULE}; {kept}"
        )
    raise ExportError(f"{format} export failed: {'; '.join(failures)}; {kept}")


def _difference(run: Callable, sample: torch.Tensor, eager: dict[int, torch.Tensor]) -> float:
    """Largest |exported - eager| over the check batches (inf when a shape differs)."""
    worst = 0.0
    with torch.no_grad():
        for n, expected in eager.items():
            got = run(sample[:n].clone())
            got = got if isinstance(got, torch.Tensor) else torch.as_tensor(got)
            if got.shape != expected.shape:
                return float("inf")
            worst = max(worst, float((got.float() - expected).abs().max()))
    return worst


@contextlib.contextmanager
def _quiet():
    """Keep converters' chatter off stdout (``--json`` owns it) and collect the warnings
    worth recording (a tracer's "this will be treated as a constant"), dropping the
    deprecation notices torch 2.14 attaches to TorchScript and the legacy ONNX exporter."""
    kept: list[str] = []
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("always")
        yield kept
    for warning in caught:
        if issubclass(warning.category, (DeprecationWarning, FutureWarning)):
            continue
        text = " ".join(str(warning.message).split())[:200]
        if text not in kept:
            kept.append(text)


def _reason(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0][:300] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _runtime(format: str) -> str:
    if format == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    loader = {"torchscript": "torch.jit.load", "pt2": "torch.export.load"}[format]
    return f"{loader}, torch {torch.__version__}"


def _refuse_overwriting_the_run(target: Path, side: Path, weights: Path) -> None:
    """An export is written beside the model it was made from, never over it or its run.

    Refused, for the export and for its sidecar: a destination that is not a regular file
    (a device, a FIFO, a folder; :func:`~torchgraft.atomic.check_destination`); the weights
    file and its record, wherever they are; and inside a run directory, every file of the run
    (:func:`~torchgraft.engine.run_dir.run_file`: its own names, hidden ones, anything in a
    sub-folder such as ``state/``) and every existing file that is not an earlier export
    (a file whose sidecar says so). So an export replaces an earlier export, or writes a new
    name no run writes.

    Raises:
        OutputError: naming the destination and what it would replace.
    """
    from ...atomic import check_destination, same_file
    from ..run_dir import is_run_directory, run_file

    record = (
        weights.with_name(MODEL_JSON)
        if weights.name == MODEL_FILE
        else weights.with_suffix(".json")
    )
    run = weights.parent if is_run_directory(weights.parent) else None
    for path in (target, side):
        check_destination(path)
        own = next((p for p in (weights, record) if same_file(path, p)), None)
        if own is not None:
            why = f"the run's own {own.name}" if run is not None else f"the model's {own.name}"
        elif run is not None:
            why = run_file(run, path) or _not_an_export(target, side, path, run)
        else:
            why = None
        if why is not None:
            raise OutputError(
                f"{printable(path)} is {why}: an export never replaces the model it was made "
                "from or a file of its run; choose another file name (a new name, or an "
                "earlier export)"
            )


def _not_an_export(target: Path, side: Path, path: Path, run: Path) -> str | None:
    """Why ``path``, an existing top-level file of ``run``, is not an earlier export of
    ``target`` (its sidecar ``side`` records it), or None when it is one or is new."""
    from ...atomic import within

    if not os.path.lexists(path) or not within(path, run):
        return None
    from ...checkpoint.documents import DocumentLimits, read_json

    try:  # a sidecar is a few kB; a FIFO, a device or a deep document is simply not one
        record = read_json(side, ValueError, DocumentLimits(max_bytes=1 << 20))
    except ValueError:
        record = None
    earlier = isinstance(record, dict) and record.get("format") == EXPORT_FORMAT
    if earlier and record.get("file") == target.name:
        return None
    return f"a file in the run directory {printable(run)} that is not an earlier export"


def _run_images(folder: Path, pre: Preprocessing, count: int) -> list[torch.Tensor]:
    """Up to ``count`` base-transformed uint8 images of the run's validation split."""
    from ...checkpoint.documents import read_yaml
    from ...data.sources import discover
    from ...data.transforms import base_transform

    try:
        data = read_yaml(folder / "config.yaml", ValueError)["data"]
        source = discover(
            str(data["source"]),
            val_fraction=float(data.get("val_fraction", 0.2)),
            split_seed=int(data.get("split_seed", 0)),
        )
        split = source.splits.get("val") or next(iter(source.splits.values()))
    except (OSError, KeyError, TypeError, ValueError, StopIteration):
        return []  # DataError is a ValueError: no data there any more, or never readable
    transform = base_transform(pre)
    images: list[torch.Tensor] = []
    # spread over the split (its samples are grouped by class), skipping unreadable files
    for index in sorted({round(k * len(split) / count) for k in range(count)}):
        with contextlib.suppress(OSError, ValueError):
            images.append(transform(split.image(index, pre.input_size[0])))
    return images
