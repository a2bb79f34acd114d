"""A graft checked by running it, whenever the source architecture is known.

Equal shapes are not proof: torchvision's ``mobilenet_v3_large`` and timm's
``mobilenetv3_large_100`` hold the same tensors and compute different functions (BatchNorm
epsilon 1e-3 against 1e-5). When the plan knows the architecture the weights were saved
from — given (``source_model=``, ``--verify-with``) or identified from the file — the graft
is run before anything is loaded: the plan is applied to a copy of the target, the source
architecture is loaded with the source weights as they are, and both run on one seeded probe
batch (:func:`~.verify.compare_models`). A difference beyond the tolerance refuses the graft
with :class:`~torchgraft.errors.VerificationError` — the measured difference, where the
models part and, where the two layers there tell it, the cause (:func:`likely_cause`) —
unless the caller accepts it on purpose (``allow_mismatch``). Its time is in the report.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VerificationError
from ..wording import option
from .apply import apply_plan
from .graft_plan import GraftPlan
from .verify import (
    BEFORE_FIRST_LAYER,
    DEFAULT_TOLERANCE,
    Verification,
    comparable_outputs,
    compare_models,
    module_in_model,
    module_output,
    probe_input,
    reference_model,
)

__all__ = ["SourceArchitecture", "check_function", "likely_cause"]


@dataclass(frozen=True)
class SourceArchitecture:
    """The architecture a graft's source weights were saved from.

    Attributes:
        module: the architecture (its own weights are never used: the source's are loaded).
        name: how messages name it (``timm:resnet50``, or the class name).
        identified: found from the file's names and shapes rather than given.
    """

    module: nn.Module
    name: str
    identified: bool = False


@dataclass(frozen=True)
class CheckedGraft:
    """A graft run before loading: the comparison, the likely cause of a difference, the
    seconds it took."""

    verification: Verification
    cause: str | None
    seconds: float

    def note(self) -> str:
        """One line for the report."""
        cause = f"; likely cause: {self.cause}" if self.cause else ""
        return f"{self.verification}{cause} (checked in {self.seconds:.1f} s, before loading)"

    def to_dict(self) -> dict:
        """The verification's fields, with ``cause`` and ``seconds``."""
        return {**self.verification.to_dict(), "cause": self.cause, "seconds": self.seconds}


def check_function(
    model: nn.Module,
    plan: GraftPlan,
    tensors: Mapping[str, torch.Tensor],
    architecture: SourceArchitecture,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_mismatch: bool = False,
) -> CheckedGraft:
    """Run ``plan`` on a copy of ``model`` against ``architecture`` holding ``tensors``.

    Raises:
        VerificationError: the outputs differ beyond ``tolerance`` and ``allow_mismatch`` is
            False; ``model`` is untouched.
    """
    started = time.perf_counter()
    trial = copy.deepcopy(model)
    apply_plan(trial, plan, tensors)
    reference = reference_model(architecture.module, tensors)
    example = probe_input(trial)
    result = compare_models(
        trial, reference, example, tolerance=tolerance, source=architecture.name
    )
    if not result.comparable:
        result = _compare_last_pair(trial, reference, plan, example, tolerance, architecture.name)
    cause = None
    if not result.ok and result.diverges_at is not None:
        cause = likely_cause(trial, reference, result.diverges_at)
    checked = CheckedGraft(result, cause, time.perf_counter() - started)
    if not result.ok and not allow_mismatch:
        raise VerificationError(_refusal(plan, architecture, checked))
    return checked


def _compare_last_pair(trial, reference, plan: GraftPlan, example, tolerance, name: str):
    """The comparison made where the two models' outputs have different forms (a backbone
    returning every token against one returning the pooled token): the output of the last
    target module loaded from the source against its source module's, laid out alike.
    When none compares, the models' own (incomparable) verdict stands."""
    loaded = [e for e in plan.entries if e.action.loads and e.source]
    for entry in reversed(loaded):
        target_path = entry.target.rpartition(".")[0]
        source_path = module_in_model(reference, entry.source.rpartition(".")[0])
        got = module_output(trial, target_path, example)
        expected = module_output(reference, source_path, example)
        if got is None or expected is None or not comparable_outputs(got, expected):
            continue
        scale = expected.abs().max().clamp_min(1e-12)
        difference = float((got.reshape(expected.shape) - expected).abs().max() / scale)
        where = f"{name}, at {target_path or '(root)'} ← {source_path or '(root)'}"
        return Verification(
            difference <= tolerance, difference, None, None, tolerance, tuple(example.shape), where
        )
    return compare_models(trial, reference, example, tolerance=tolerance, source=name)


def _refusal(plan: GraftPlan, architecture: SourceArchitecture, checked: CheckedGraft) -> str:
    found = "identified from the file" if architecture.identified else "given"
    cause = f"; likely cause: {checked.cause}" if checked.cause else ""
    return (
        f"refusing to graft {plan.source or 'the source'}: the grafted model does not compute "
        f"what the source architecture ({architecture.name}, {found}) computes with these "
        f"weights: {checked.verification.problem}{cause}. Nothing was loaded. The tensors fit; "
        "the function differs (another BatchNorm epsilon, padding or activation): graft into "
        f"the architecture the weights come from, or accept it on purpose with "
        f"{option('allow_mismatch', True)} (to fine-tune from these weights anyway)"
    )


#: Layer attributes whose difference changes what a layer computes, and how to say it.
_ATTRIBUTES = {
    "eps": "BatchNorm/LayerNorm epsilon",
    "padding": "padding",
    "padding_mode": "padding mode",
    "stride": "stride",
    "dilation": "dilation",
    "groups": "groups",
    "kernel_size": "kernel size",
    "in_features": "input width",
    "out_features": "output width",
    "in_channels": "input channels",
    "out_channels": "output channels",
}


def likely_cause(target: nn.Module, source: nn.Module, where: tuple[str, str]) -> str | None:
    """What differs between the two layers where the models part (``where``: target and
    source module paths, from :attr:`Verification.diverges_at`), in words; None when
    nothing in the layers themselves tells (the difference is then in what runs between
    layers: an activation, a pooling, an order of operations)."""
    target_path, source_path = where
    if target_path == BEFORE_FIRST_LAYER:
        return "the input is handled differently before the first layer with weights"
    try:
        ours, theirs = target.get_submodule(target_path), source.get_submodule(source_path)
    except AttributeError:
        return None
    found = []
    for attribute, words in _ATTRIBUTES.items():
        mine, other = getattr(ours, attribute, None), getattr(theirs, attribute, None)
        if mine is not None and other is not None and mine != other:
            found.append(f"{words} {_shown(mine)} in the target against {_shown(other)}")
    for module, side in ((ours, "target"), (theirs, "source")):
        if "same" in type(module).__name__.lower():  # timm's Conv2dSame, MaxPool2dSame
            found.append(f"TensorFlow 'same' padding in the {side} ({type(module).__name__})")
    if not found:
        return None
    return f"at {target_path} (source {source_path}): " + "; ".join(found)


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
