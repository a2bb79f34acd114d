"""merge_adapters: every adapter folded into its base weights, the plain architecture back.

Merging is peft's (each layer's own ``merge``, with its NaN check); what is added here is
the proof and the way back:

1. the adapted model's outputs on a probe batch are recorded (eval mode, no autograd);
2. each layer's base weights are saved, then merged; on the way each layer alone is run
   before and after on seeded noise, so a failure can name the layers at fault;
3. each adapter layer is replaced by its base module: the state_dict has exactly the keys
   of the unmodified architecture (``load_state_dict(strict=True)`` into a fresh build);
4. the outputs are measured again; beyond the tolerance (1e-5 relative in fp32,
   :data:`~.outputs.TOLERANCES`) the merge is undone — base weights copied back from step 2,
   adapter layers put back, peft's merge bookkeeping restored — and
   :class:`~torchgraft.errors.AdapterMergeError` names the measured difference. Nothing is
   left half-merged: the model is the adapted model it was, and still trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError, AdapterMergeError
from ..model.anatomy import spec_of
from ..model.passes import evaluating
from .inject import RECORD_ATTRIBUTE
from .outputs import (
    TOLERANCES,
    ieee_fp32,
    layer_input,
    model_dtype,
    outputs_of,
    probe_batch,
    relative_difference,
)
from .peft_layers import ADAPTER_NAME, adapter_layers, peft_version, put_module

__all__ = ["MergeReport", "merge_adapters"]


@dataclass(frozen=True, repr=False)
class MergeReport:
    """What :func:`merge_adapters` merged and how closely the result matches.

    Attributes:
        merged: paths of the layers whose adapters were merged, in model order.
        method: ``"lora"`` or ``"dora"`` (None for adapters torchgraft did not add).
        checked: whether outputs were compared (``check=True``).
        difference: the measured relative difference of the outputs (None when not checked).
        tolerance: the largest difference allowed.
        probe_shape: shape of the probe batch (None when not checked).
        worst_layer: the layer whose merged weights differ most from its adapter, alone on
            seeded noise, and that difference (relative).
    """

    merged: tuple[str, ...]
    method: str | None
    checked: bool
    difference: float | None
    tolerance: float
    probe_shape: tuple[int, ...] | None
    worst_layer: tuple[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged": list(self.merged),
            "method": self.method,
            "checked": self.checked,
            "difference": self.difference,
            "tolerance": self.tolerance,
            "probe_shape": list(self.probe_shape) if self.probe_shape else None,
            "worst_layer": list(self.worst_layer) if self.worst_layer else None,
        }

    def __str__(self) -> str:
        what = f"{self.method or 'peft'} adapters of {len(self.merged)} layers merged into their base weights"
        if not self.checked:
            return f"{what} (not checked)"
        return (
            f"{what}; outputs on a probe batch {tuple(self.probe_shape or ())} differ by "
            f"{self.difference:.2e} relative (tolerance {self.tolerance:.0e})"
        )

    def __repr__(self) -> str:
        return f"<MergeReport {len(self.merged)} layers, difference {self.difference}>"


def merge_adapters(
    model: nn.Module,
    *,
    check: bool = True,
    probe: torch.Tensor | None = None,
    tolerance: float | None = None,
) -> MergeReport:
    """Merge every adapter into its base weights and put the plain base modules back, in place.

    Afterwards ``model.state_dict()`` has exactly the keys of the architecture without
    adapters; ``requires_grad`` is left as it was (base frozen, head trainable).

    Args:
        model: a model with adapters (:func:`torchgraft.add_adapters`).
        check: compare the outputs before and after on ``probe``, and undo the merge if they
            differ by more than ``tolerance``.
        probe: the batch to compare on (default: seeded noise, two images at the spec's input
            size, on the model's device and float type).
        tolerance: largest relative difference allowed (default by float type: 1e-5 for fp32).

    Returns:
        a :class:`MergeReport` with the measured difference.

    Raises:
        AdapterError: the model has no adapters, or a merged weight is not finite (model
            unchanged).
        AdapterMergeError: the merged model's outputs differ beyond the tolerance; the merge
            was undone, the model is adapted as before.

    Example:
        >>> report = tg.merge_adapters(model)
        >>> report.difference < report.tolerance
        True
    """
    layers = adapter_layers(model)
    if not layers:
        raise AdapterError(f"this {type(model).__name__} has no adapters to merge")
    for path, layer in layers.items():
        if not isinstance(layer.get_base_layer(), (nn.Linear, nn.Conv2d)):
            raise AdapterError(
                f"'{path}' is a peft {type(layer).__name__} on a {type(layer.get_base_layer()).__name__}; "
                "torchgraft merges adapters on Linear and Conv2d layers only"
            )
    tolerance = TOLERANCES.get(model_dtype(model), 1e-5) if tolerance is None else tolerance
    if check and probe is None:
        probe = probe_batch(model, spec_of(model))
    saved = {path: _saved(layer) for path, layer in layers.items()}
    with ieee_fp32():
        before = outputs_of(model, probe) if check else None
        try:
            worst = _merge_layers(model, layers)
            for path, layer in layers.items():
                put_module(model, path, layer.get_base_layer())
            difference = relative_difference(before, outputs_of(model, probe)) if check else None
        except BaseException:  # an interrupt too: never leave the model half-merged
            _undo(model, layers, saved)
            raise
    if difference is not None and not difference <= tolerance:
        _undo(model, layers, saved)
        raise AdapterMergeError(
            f"merging the adapters changed the model's outputs by {difference:.3g} relative "
            f"(tolerance {tolerance:.0e}) on a probe batch {tuple(probe.shape)}; the merge was "
            f"undone and the model keeps its adapters. The layer that differs most alone: "
            f"'{worst[0]}' ({worst[1]:.3g}). Is the peft version ({peft_version()}) one "
            "torchgraft was tested with (0.22)?",
            difference,
        )
    summary = vars(model).pop(RECORD_ATTRIBUTE, None)
    vars(model).pop("peft_config", None)
    return MergeReport(
        merged=tuple(layers),
        method=summary.settings.method if summary is not None else None,
        checked=check,
        difference=difference,
        tolerance=tolerance,
        probe_shape=tuple(probe.shape) if check else None,
        worst_layer=worst,
    )


def _merge_layers(model: nn.Module, layers: dict[str, nn.Module]) -> tuple[str, float]:
    """Merge each layer (peft's safe merge); the layer whose merged base differs most alone."""
    worst = ("", 0.0)
    dtype = model_dtype(model)
    with evaluating(model):  # adapter dropout off, no autograd
        for path, layer in layers.items():
            base = layer.get_base_layer()
            x = layer_input(base, dtype, base.weight.device)
            expected = layer(x)
            try:
                layer.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
            except ValueError as exc:  # peft's "NaNs detected in the merged weights"
                raise AdapterError(f"'{path}': the merged weights are not finite ({exc})") from None
            difference = relative_difference([expected], [base(x)])
            if difference >= worst[1]:
                worst = (path, difference)
    return worst


def _saved(layer: nn.Module) -> dict[str, Any]:
    """What merging changes in a layer: its base's own tensors and peft's merge bookkeeping."""
    base = layer.get_base_layer()
    return {
        "tensors": {n: t.detach().clone() for n, t in base.named_parameters(recurse=False)},
        "merged": list(layer.merged_adapters),
        "caches": dict(getattr(layer, "_caches", {})),
    }


def _undo(model: nn.Module, layers: dict[str, nn.Module], saved: dict[str, dict[str, Any]]) -> None:
    """Put every adapter layer back with its base weights bitwise as they were."""
    with torch.no_grad():
        for path, layer in layers.items():
            put_module(model, path, layer)
            base = layer.get_base_layer()
            for name, tensor in saved[path]["tensors"].items():
                getattr(base, name).copy_(tensor)
            layer.merged_adapters[:] = saved[path]["merged"]
            if hasattr(layer, "_caches"):
                layer._caches.clear()
                layer._caches.update(saved[path]["caches"])
