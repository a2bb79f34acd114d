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
preprocessing, input shape, sha256, the measured difference, format, torch version, method):
an export that fails, or fails its check, leaves whatever was there before untouched and no
temporary file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
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

from ..atomic import atomic_paths
from ..errors import ConfigError, ExportCheckError, ExportError, OutputError  # Export*: re-exported
from ..grafting.save import sha256_file
from ..model.spec import Preprocessing
from ..text import printable
from .artifacts import MODEL_FILE, MODEL_JSON, load, read_model_document
from .export_methods import EXAMPLE_BATCH, METHODS
from .exported import (
    EXPORT_FORMAT,
    FORMATS,
    INPUT_NAME,
    LOADERS,
    OUTPUT_NAME,
    require_onnx,
    sidecar_path,
)

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
#: :data:`~.export_methods.EXAMPLE_BATCH`, 2).
CHECK_BATCH_SIZES = (1, 3)
RULE = "max |exported - eager| <= tolerance * max(1, max |eager|), over every logit"


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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            path=str(self.path), sidecar=str(self.sidecar), batch_sizes=list(self.batch_sizes)
        )
        return out


def export_run(
    run_dir: str | os.PathLike,
    format: str,
    output: str | os.PathLike | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export the trained model of ``run_dir`` and check the written file.

    Args:
        run_dir: a run directory (or its ``model.safetensors``).
        format: ``torchscript``, ``pt2`` or ``onnx``.
        output: the file to write; default ``model.ts.pt`` / ``model.pt2`` / ``model.onnx``
            in the run directory. Its sidecar is ``<output>.json``; missing folders are made.
        tolerance: see the module docstring.

    Returns:
        an :class:`ExportResult` (path, method, measured difference, sha256, …).

    Raises:
        ConfigError: an unknown format or a negative tolerance.
        MissingExtraError: ``onnx`` without the ``[onnx]`` extra installed (checked first).
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
    model = load(run_dir)
    document, weights = read_model_document(run_dir)
    folder = weights.parent
    target = Path(output) if output is not None else folder / FORMATS[format].default_file
    side = sidecar_path(target)
    _refuse_overwriting_the_run(target, side, folder)
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
                described, _runtime(format), sha256_file(temp), 0.0, notes,
            )  # fmt: skip
            record = _sidecar(result, model, document, weights, _format_details(format, temp))
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
    from ..data.transforms import Normalizer

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


# -- records ----------------------------------------------------------------------------------


def _sidecar(
    result: ExportResult,
    model: nn.Module,
    document: dict[str, Any],
    weights: Path,
    details: dict[str, Any],
) -> dict[str, Any]:
    """The JSON record written beside the export (docs/export.md lists its fields)."""
    pre = model.preprocessing
    return {
        "format": EXPORT_FORMAT,
        "export": result.format,
        "file": result.path.name,
        "sha256": result.sha256,
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
            **details,
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
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _format_details(format: str, path: Path) -> dict[str, Any]:
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


def _runtime(format: str) -> str:
    if format == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    loader = {"torchscript": "torch.jit.load", "pt2": "torch.export.load"}[format]
    return f"{loader}, torch {torch.__version__}"


def _refuse_overwriting_the_run(target: Path, side: Path, folder: Path) -> None:
    """An export must never replace the trained model it was made from."""
    own = {(folder / MODEL_FILE).resolve(), (folder / MODEL_JSON).resolve()}
    for path in (target, side):
        if path.resolve() in own:
            raise OutputError(
                f"{printable(path)} is the run's own {path.name}: an export never replaces the "
                "model it was made from; choose another file name"
            )


def _run_images(folder: Path, pre: Preprocessing, count: int) -> list[torch.Tensor]:
    """Up to ``count`` base-transformed uint8 images of the run's validation split."""
    import yaml

    from ..data.sources import discover
    from ..data.transforms import base_transform

    try:
        data = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["data"]
        source = discover(
            str(data["source"]),
            val_fraction=float(data.get("val_fraction", 0.2)),
            split_seed=int(data.get("split_seed", 0)),
        )
        split = source.splits.get("val") or next(iter(source.splits.values()))
    except (OSError, KeyError, TypeError, ValueError, StopIteration, yaml.YAMLError):
        return []  # DataError is a ValueError: no data there any more, or never readable
    transform = base_transform(pre)
    images: list[torch.Tensor] = []
    # spread over the split (its samples are grouped by class), skipping unreadable files
    for index in sorted({round(k * len(split) / count) for k in range(count)}):
        with contextlib.suppress(OSError, ValueError):
            images.append(transform(split.image(index, pre.input_size[0])))
    return images
