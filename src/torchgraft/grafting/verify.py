"""Proof that a graft kept the function: run source and target on the same input, compare.

Equal shapes are not proof. timm's ``efficientnet_lite0`` accepts exactly the tensors of the
original EfficientNet-Lite0 in the same order, yet pads differently and uses another
BatchNorm epsilon, so its outputs differ; ``tf_efficientnet_lite0`` matches exactly. Only
running both tells them apart.

The comparison is made on the features entering the head (always comparable, even after the
head was replaced) and on the outputs when their shapes agree.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import GraftError, VerificationError
from ..model.anatomy import spec_of
from ..model.probe import primary_output
from .apply import apply_plan
from .io import Checkpoint
from .planner import make_plan
from .report import percent
from .source import SourceWeights, read_source

__all__ = [
    "DEFAULT_TOLERANCE",
    "Verification",
    "compare_models",
    "probe_input",
    "reference_model",
    "verify_graft",
]

#: Largest relative difference accepted in float32 (differences of reduction order are ~1e-6).
DEFAULT_TOLERANCE = 1e-4
#: Share of its parameter elements the source architecture must take from the source weights.
REFERENCE_COVERAGE = 0.999


@dataclass(frozen=True)
class Verification:
    """The result of one comparison.

    Attributes:
        ok: every compared quantity is within ``tolerance``.
        feature_rel_diff: max |target - source| / max |source| of the head inputs.
        output_rel_diff: the same for the outputs, or None when their shapes differ.
        output_abs_diff: max |target - source| of the outputs, or None.
        tolerance: the threshold used.
        input_shape: the probe input's shape.
        source: what the target was compared against.
    """

    ok: bool
    feature_rel_diff: float
    output_rel_diff: float | None
    output_abs_diff: float | None
    tolerance: float
    input_shape: tuple[int, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "OK: same function" if self.ok else "FAILED: the graft changed the function"
        output = (
            f", outputs {self.output_rel_diff:.2e} (abs {self.output_abs_diff:.3g})"
            if self.output_rel_diff is not None
            else ""
        )
        return (
            f"verify against {self.source}: {verdict}; relative difference of features "
            f"{self.feature_rel_diff:.2e}{output} (tolerance {self.tolerance:.0e})"
        )


def compare_models(
    target: nn.Module,
    reference: nn.Module,
    example_input: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: torch.dtype | None = None,
    source: str = "source model",
) -> Verification:
    """Run both models in eval mode on ``example_input`` and compare.

    Neither model is changed (copies are made when ``dtype`` asks for another precision;
    train/eval flags are restored).
    """
    results = []
    for model in (target, reference):
        runner = copy.deepcopy(model).to(dtype) if dtype is not None else model
        head = spec_of(runner).head_path
        results.append(_run(runner, head, example_input.to(dtype or example_input.dtype)))
    (t_feat, t_out), (r_feat, r_out) = results
    feature = _relative(t_feat, r_feat)
    output_rel = output_abs = None
    if t_out.shape == r_out.shape:
        output_rel = _relative(t_out, r_out)
        output_abs = float((t_out - r_out).abs().max())
    ok = feature <= tolerance and (output_rel is None or output_rel <= tolerance)
    return Verification(
        ok, feature, output_rel, output_abs, tolerance, tuple(example_input.shape), source
    )


def verify_graft(
    model: nn.Module,
    source_model: nn.Module,
    source_weights: Any,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: torch.dtype | None = None,
    raise_on_failure: bool = False,
    seed: int = 0,
    source_name: str | None = None,
) -> Verification:
    """Load the source weights into the source architecture, compare it with ``model``.

    Args:
        model: the grafted target.
        source_model: the source architecture, as a module (it is copied, never changed;
            :func:`torchgraft.verify_graft` also takes a model spec and builds it).
        source_weights: what was grafted (a path, a state_dict, a module, or
            :class:`~torchgraft.grafting.source.SourceWeights`).
        tolerance: largest accepted relative difference.
        dtype: compare in this precision (``torch.float64`` for parity tests).
        raise_on_failure: raise :class:`VerificationError` instead of returning a failed result.
        seed: seed of the random probe input.
        source_name: how the result names the source architecture.

    Raises:
        VerificationError: with ``raise_on_failure``, when the outputs differ.
        GraftError: the source weights do not load into the source architecture exactly.
    """
    weights = read_source(source_weights)
    reference = reference_model(source_model, weights.checkpoint.tensors)
    example = probe_input(model, seed)
    result = compare_models(
        model,
        reference,
        example,
        tolerance=tolerance,
        dtype=dtype,
        source=source_name or type(source_model).__name__,
    )
    if raise_on_failure and not result.ok:
        raise VerificationError(str(result))
    return result


def reference_model(source_model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of the source architecture holding the source tensors, in eval mode.

    The tensors must load as they are (names equal up to wrapper prefixes, ≥ 99.9 % of the
    parameter elements): a reference that is itself a guess proves nothing.

    Raises:
        GraftError: the tensors do not load into the architecture that way.
    """
    reference = copy.deepcopy(source_model)
    weights = SourceWeights(Checkpoint(dict(tensors), "state_dict", "source weights"))
    plan = make_plan(reference, weights, strategy="auto")
    if plan.coverage < REFERENCE_COVERAGE:
        raise GraftError(
            f"the source weights do not load into {type(source_model).__name__} as they are "
            f"({percent(plan.coverage)} of its parameter elements; at least "
            f"{REFERENCE_COVERAGE:.1%} needed): is it the architecture they were saved from?"
        )
    apply_plan(reference, plan, tensors)
    return reference.eval()


def probe_input(model: nn.Module, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A seeded random input shaped by the model's preprocessing, on its device."""
    spec = spec_of(model)
    generator = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn(batch, *spec.preprocessing.input_size, generator=generator).to(device)


def _run(model: nn.Module, head_path: str, example: torch.Tensor):
    captured: dict[str, torch.Tensor] = {}
    head = model.get_submodule(head_path)
    handle = head.register_forward_pre_hook(
        lambda _m, args: captured.setdefault("features", args[0].detach())
    )
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            output = primary_output(model(example.to(next(model.parameters()).device)))
    finally:
        handle.remove()
        for module, flag in training.items():
            module.training = flag
    return captured["features"].flatten(1).cpu(), output.detach().cpu()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)
