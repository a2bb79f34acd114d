"""How each export format is made: the methods of :func:`~.write.export_run`, as data.

Each method is a writer ``(model, example batch, path) -> None`` that converts the model and
writes the file; :data:`METHODS` lists them per format in the order they are tried. The
example batch has :data:`EXAMPLE_BATCH` (2) images: ``torch.export`` specialises dimensions
of size 0 and 1, and a batch of 2 is what tracing needs to see a batch dimension at all. The
batch dimension is declared dynamic wherever the converter takes a declaration
(``Dim("batch")`` for ``torch.export`` and the dynamo ONNX exporter, ``dynamic_axes`` for the
legacy one); scripting keeps it by construction, tracing by recording shape reads — and the
check at other batch sizes is what proves it, whatever the method.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .sidecar import INPUT_NAME, OUTPUT_NAME

__all__ = ["EXAMPLE_BATCH", "METHODS"]

#: Images in the batch the converters see.
EXAMPLE_BATCH = 2


def _batch_dim() -> tuple[dict[int, Any], ...]:
    return ({0: torch.export.Dim("batch", min=1)},)


def _script(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def _trace(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # export_run's check runs the traced file at other batch sizes than the example's: that is
    # what check_trace would do, done on the written file instead of in memory.
    torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim())
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2; ours is temporary
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


def _onnx_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        # One file, so the sha256 and the atomic rename cover all of it. Over 2 GB of weights
        # the exporter writes "<file>.data" beside it anyway (torch 2.14, ONNXProgram.save),
        # as the legacy one does: the sidecar then records that file too (sidecar).
        external_data=False,
        dynamic_shapes=_batch_dim(),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )


def _onnx_legacy(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )


Writer = Callable[[nn.Module, torch.Tensor, Path], None]

#: Each format's methods, in the order tried: (name recorded in the sidecar, writer).
METHODS: dict[str, tuple[tuple[str, Writer], ...]] = {
    "torchscript": (("torch.jit.script", _script), ("torch.jit.trace", _trace)),
    "pt2": (("torch.export.export", _torch_export),),
    "onnx": (
        ("torch.onnx.export (dynamo=True)", _onnx_dynamo),
        ("torch.onnx.export (dynamo=False, legacy)", _onnx_legacy),
    ),
}
