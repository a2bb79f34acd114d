"""Writing a plan's values into a model: all of them, or none.

Every value is prepared before the first one is written: looked up, checked, adapted, and
converted to its target's dtype and device. Only then are the values copied, by
same-dtype, same-device, same-shape copies that cannot fail halfway for a reason the
checkpoint controls. So a bad tensor anywhere in the checkpoint (the last key as much as
the first) leaves the model bitwise as it was, and the error names the key.

What a value must be (:func:`_check_value`):

* data: not a meta tensor (its shape only — torch's "Cannot copy out of meta tensor");
* dense and plain: not sparse (``to_dense()`` it first) nor quantized (``dequantize()`` it);
* of a kind its target can hold without losing part of it: a complex value into a real
  target would drop the imaginary part; a floating value into an integer target would drop
  the fraction (whole numbers, as a ``num_batches_tracked`` saved as float, are accepted);
* the target's shape, after the plan's adaptation.

Values need not be finite: a NaN in a checkpoint is its author's business, and
:func:`torchgraft.verify_graft` or training will show it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import GraftError
from ..text import printable
from .graft_plan import GraftPlan
from .values.adapt import apply_adaptation

__all__ = ["apply_plan"]


def apply_plan(model: nn.Module, plan: GraftPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write the plan's values into ``model``: all of them, or none if any fails.

    Every value is computed, checked and converted to its target's dtype and device before
    the first one is written.

    Raises:
        GraftError: a key the model or the source lacks, a value that is not data (meta),
            not dense (sparse, quantized), of a dtype its target cannot hold without loss, or
            an adaptation that does not fit; the model is left untouched.
    """
    state = model.state_dict()
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for entry in plan.entries:
        if not entry.action.loads:
            continue
        if entry.target not in state:
            raise GraftError(
                f"the plan names target key '{printable(entry.target)}', which the model lacks"
            )
        if entry.source not in tensors:
            raise GraftError(
                f"the plan names source key '{printable(entry.source)}', which the source lacks"
            )
        target = state[entry.target].detach()
        source = tensors[entry.source]
        _check_value(entry.source, source, entry.target, target)
        try:
            value = apply_adaptation(source, target, entry.adapt)
        except GraftError as exc:  # say which pair: the adaptation knows only tensors
            raise GraftError(
                f"'{printable(entry.source)}' → '{printable(entry.target)}': {exc}"
            ) from None
        if tuple(value.shape) != tuple(target.shape):
            raise GraftError(
                f"'{printable(entry.source)}' {list(value.shape)} cannot fill "
                f"'{printable(entry.target)}' {list(target.shape)} as the plan says "
                f"({entry.action.value})"
            )
        # Converted now, so the copies below are plain same-kind copies.
        staged.append((target, value.detach().to(device=target.device, dtype=target.dtype)))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value)


def _check_value(key: str, value: object, target_key: str, target: torch.Tensor) -> None:
    """Raise a GraftError naming ``key`` when ``value`` cannot become ``target``'s value."""
    where = f"source tensor '{printable(key)}'"
    if key != target_key:
        where += f" (for '{printable(target_key)}')"
    if not isinstance(value, torch.Tensor):
        raise GraftError(f"{where} is a {type(value).__name__}, not a tensor")
    if target.device.type == "meta":
        raise GraftError(
            f"the model's tensor '{printable(target_key)}' is on the meta device (a shape "
            "without storage): nothing could be written into it; build the model on a real "
            "device (or call to_empty()) before grafting"
        )
    if value.device.type == "meta":
        raise GraftError(
            f"{where} is a meta tensor: the checkpoint holds its shape but no values; save "
            "the weights after they were materialised"
        )
    if value.is_quantized:
        raise GraftError(
            f"{where} is quantized ({str(value.dtype).replace('torch.', '')}); the model "
            "expects plain values: dequantize() the checkpoint's tensors first"
        )
    if value.layout != torch.strided:
        raise GraftError(
            f"{where} is {_layout(value)}, not a dense tensor; convert the checkpoint's "
            "tensors with to_dense() first"
        )
    lost = _lost_in_conversion(value, target.dtype)
    if lost:
        raise GraftError(
            f"{where} is {str(value.dtype).replace('torch.', '')} and the model's tensor is "
            f"{str(target.dtype).replace('torch.', '')}: copying would drop {lost}; convert "
            "the checkpoint's tensor explicitly if that is intended"
        )


def _lost_in_conversion(value: torch.Tensor, dtype: torch.dtype) -> str | None:
    """What converting ``value`` to ``dtype`` would silently throw away, or None."""
    if value.is_complex() and not dtype.is_complex:
        return "the imaginary part"
    target_integral = not dtype.is_floating_point and not dtype.is_complex
    if target_integral and value.is_floating_point():
        whole = torch.isfinite(value) & (value == value.trunc())
        if not bool(whole.all()):
            return "the fractional part (and any inf or NaN)"
    return None


def _layout(value: torch.Tensor) -> str:
    names = {
        torch.sparse_coo: "sparse (COO)",
        torch.sparse_csr: "sparse (CSR)",
        torch.sparse_csc: "sparse (CSC)",
        torch.sparse_bsr: "sparse (BSR)",
        torch.sparse_bsc: "sparse (BSC)",
    }
    return names.get(value.layout, str(value.layout).replace("torch.", ""))
