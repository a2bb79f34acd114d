"""What a model computes on a probe batch, and how far two such answers are apart.

The merge check (:mod:`.merge`) runs the model on one small batch before and after merging
and compares. The batch is seeded random noise at the spec's input size: a merge is a change
of weights, so any input that reaches every layer tests it, and noise needs no data.

The difference is *relative to the outputs' scale*: the largest absolute difference over
every output element, divided by the largest absolute output of the reference. Element-wise
relative differences would blow up on logits near zero, which are as legitimate as any.

Both passes run in IEEE fp32 (:func:`ieee_fp32`): on a GPU, cuDNN convolutions default to
TF32 (10 bits of mantissa), whose rounding alone (~1e-3) would hide a real difference of
that size and fail every honest merge of a CNN against the 1e-5 tolerance.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..model.passes import evaluating
from ..model.spec import ModelSpec

__all__ = [
    "TOLERANCES",
    "ieee_fp32",
    "layer_input",
    "outputs_of",
    "probe_batch",
    "relative_difference",
]

#: Largest relative difference a merge may make, by the model's floating type. fp32 is the
#: contract (rounding of W + s·B·A against W·x + s·B·(A·x) is ~1e-7 per layer); the half
#: formats carry 8 and 11 bits of mantissa, so their own rounding is the floor there.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}

#: Images in the default probe: enough to leave batch-size special cases, small for CPUs.
PROBE_BATCH = 2
PROBE_SEED = 0


def probe_batch(model: nn.Module, spec: ModelSpec) -> torch.Tensor:
    """Seeded noise of shape ``(2, *spec input size)`` on the model's device and float type.

    The same batch every time (its own generator, the global RNG untouched).
    """
    reference = _first_float(model)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    batch = torch.randn(PROBE_BATCH, *spec.preprocessing.input_size, generator=generator)
    if reference is None:
        return batch
    return batch.to(device=reference.device, dtype=reference.dtype)


def model_dtype(model: nn.Module) -> torch.dtype:
    reference = _first_float(model)
    return torch.float32 if reference is None else reference.dtype


def outputs_of(model: nn.Module, batch: Any) -> list[torch.Tensor]:
    """Every tensor the model returns for ``batch``, in eval mode, without autograd; copies.

    The model's modes are as they were afterwards (:func:`torchgraft.model.passes.evaluating`).
    """
    with evaluating(model):
        result = model(batch)
    return [t.detach().clone() for t in _tensors(result)]


def relative_difference(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """``max |reference - other| / max |reference|`` over every element (inf: shapes differ).

    Computed in float64, so the measure adds no rounding of its own.
    """
    if len(reference) != len(other) or any(
        a.shape != b.shape for a, b in zip(reference, other, strict=True)
    ):
        return math.inf
    if not reference:
        return 0.0
    worst = max(
        float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        for a, b in zip(reference, other, strict=True)
    )
    scale = max(float(a.double().abs().max()) if a.numel() else 0.0 for a in reference)
    if math.isnan(worst):
        return math.inf
    return worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)


def layer_input(layer: nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Seeded noise a Linear or Conv2d accepts: ``(2, in)`` or ``(1, in, H, H)`` with H past its reach."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    if isinstance(layer, nn.Conv2d):
        reach = max(
            (k - 1) * d + s
            for k, d, s in zip(layer.kernel_size, layer.dilation, layer.stride, strict=True)
        )
        side = max(6, reach + 2)
        shape: tuple[int, ...] = (1, layer.in_channels, side, side)
    else:
        shape = (2, layer.in_features)
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full IEEE precision, deterministic cuDNN, for the block;
    every setting as it was afterwards.

    Only torch's per-backend ``fp32_precision`` API is used: mixing it with the legacy
    ``allow_tf32`` flags makes torch refuse to read either afterwards.
    """
    matmul, conv, cudnn = (
        torch.backends.cuda.matmul,
        torch.backends.cudnn.conv,
        torch.backends.cudnn,
    )
    kept = (matmul.fp32_precision, conv.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    try:
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision, cudnn.deterministic, cudnn.benchmark = kept


def _first_float(model: nn.Module) -> torch.Tensor | None:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a model's output: a tensor, or tuples, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
