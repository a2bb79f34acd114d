"""The graft recipe: read the source, plan (settling ties when the source model is known),
check coverage, apply all-or-nothing.

These functions take files, state_dicts and modules. :func:`torchgraft.graft` and
:func:`torchgraft.plan_graft` (in ``zoo/grafts.py``) also take model specs, which they build
and then hand to these.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.limits import ReaderLimits
from ..errors import GraftError, GraftWarning, InexactGraftError, VerificationError
from ..wording import in_cli, option
from .apply import apply_plan
from .bn_statistics import settle_by_statistics
from .checked import SourceArchitecture, check_function
from .exactness import AllowPartial, check_exact
from .graft_plan import GraftPlan, GraftReport, percent
from .planner import (
    check_strategy,
    drop_candidates,
    head_keys,
    make_plan,
    plan_from_mapping,
    plan_rebuilder,
    tensor_infos,
)
from .resolve import resolve_ties
from .rules import RenameRules
from .source import Source, SourceWeights, read_options, read_source
from .values.projections import regrouped
from .verify import DEFAULT_TOLERANCE, reference_model

__all__ = [
    "MIN_COVERAGE",
    "apply_plan",
    "graft",
    "plan_from_mapping",
    "plan_graft",
    "refusals",
]

#: Default floor on coverage: below it a graft refuses to load (the "strict=False loaded
#: nothing and nobody noticed" bug).
MIN_COVERAGE = 0.5


def plan_graft(
    model: nn.Module,
    source: Source | SourceWeights,
    *,
    strategy: str = "auto",
    rules: RenameRules | str | Path | Sequence[Mapping[str, str]] | None = None,
    in_chans_mode: str | None = None,
    pick: Sequence[int] | None = None,
    source_classes: Sequence[str] | None = None,
    keep_classes: bool | Sequence[str] = True,
    ema: bool = False,
    allow_globals: Sequence[str] = (),
    trust: bool = False,
    limits: ReaderLimits | None = None,
    source_model: nn.Module | None = None,
    probe_images: torch.Tensor | None = None,
    identify: Callable[[SourceWeights], tuple[nn.Module, str] | None] | None = None,
) -> GraftPlan:
    """The full plan for grafting ``source`` into ``model``, without touching the model.

    Args:
        model: the target.
        source: a file or folder, a state_dict, a module (see :func:`.source.read_source`).
        strategy: ``auto`` (default), ``exact``, ``shape``, ``order`` or ``rules``.
        rules: rename rules (a file, a list of dicts, or :class:`RenameRules`) for ``rules``.
        in_chans_mode: first-conv adaptation: ``sum``, ``mean``, ``repeat`` or ``pick``.
        pick: source channels for ``pick``.
        source_classes: class names of the source head (default: from the source, if known).
        keep_classes: with class names on both sides, copy the source rows of the classes
            both heads name (True), of only these names (a list), or of none (False).
        ema: take the checkpoint's EMA weights.
        allow_globals / trust / limits: see :func:`torchgraft.checkpoint.read.read_checkpoint`
            (``limits``: the reader's bounds, :class:`~.limits.ReaderLimits`).
        source_model: the architecture the source was saved from, as a module: its
            registration order tells apart same-shaped siblings in a name-sorted checkpoint,
            and siblings that only order could tell apart are settled by running it side by
            side with the target (:mod:`.resolve`).
        identify: called when order left pairings unproven or same-shaped keys ambiguous,
            and no ``source_model`` is given:
            the source architecture identified from the weights' names and shapes (a
            module) with a note, or None (``torchgraft.plan_graft`` passes the zoo's index).
        probe_images: a normalised batch of the user's images, for settling ties by the
            source's BatchNorm statistics when no source architecture is given
            (:mod:`.bn_statistics`; default: synthetic images).

    Raises:
        GraftError: unknown strategy, or the strategy's own refusal (``exact``, ``order``).
    """
    if source_model is not None and not isinstance(source_model, nn.Module):
        raise GraftError(
            f"source_model must be a module here, got {type(source_model).__name__}; "
            "torchgraft.plan_graft builds model specs"
        )
    check_strategy(strategy)
    weights = read_source(source, ema=ema, allow_globals=allow_globals, trust=trust, limits=limits)
    weights = regrouped(weights, tensor_infos(model.state_dict()))
    options = {
        "strategy": strategy,
        "rules": rules,
        "in_chans_mode": in_chans_mode,
        "pick": pick,
        "source_classes": source_classes,
        "keep_classes": keep_classes,
    }
    plan = make_plan(
        model,
        weights,
        **options,
        source_order=tuple(source_model.state_dict()) if source_model is not None else None,
    )
    identified = False
    if _needs_order(plan) and source_model is None and identify is not None:
        found = identify(weights)
        if found is not None:
            (source_model, note), identified = found, True
            plan = make_plan(
                model, weights, **options, source_order=tuple(source_model.state_dict())
            )
            plan.notes.append(note)
    if plan.ties and source_model is not None:
        plan = _settle_ties(plan, model, source_model, weights, strategy)
    elif plan.ties:
        plan = _settle_by_statistics(plan, model, weights, strategy, probe_images)
    plan = drop_candidates(plan)
    if source_model is not None:
        plan.source_architecture = SourceArchitecture(
            source_model, _architecture_name(source_model), identified
        )
    return plan


def _needs_order(plan: GraftPlan) -> bool:
    """Whether the source's registration order would settle something: pairings that order
    only suggested (ties), or same-shaped keys left ambiguous (a flat list against nested
    blocks, in a name-sorted file)."""
    ambiguous = any(e.source is None and e.detail.startswith("ambiguous") for e in plan.entries)
    return bool(plan.ties) or ambiguous


def _architecture_name(module: nn.Module) -> str:
    """``timm:resnet50`` for a zoo model, else the class name."""
    from ..model.anatomy import spec_of

    try:
        return spec_of(module).name
    except Exception:  # a plain module torchgraft cannot describe still has a class
        return type(module).__name__


def _settle_by_statistics(plan, model, weights: SourceWeights, strategy, images) -> GraftPlan:
    rebuild = plan_rebuilder(model, weights, strategy=strategy)
    try:
        return settle_by_statistics(plan, model, weights.checkpoint.tensors, rebuild, images)
    except Exception as exc:  # the user's model code can raise anything
        plan.notes.append(f"bn-statistics: the model could not be run to settle ties ({exc})")
        return plan


def _settle_ties(plan, model, source_model, weights: SourceWeights, strategy) -> GraftPlan:
    """Run the source architecture to settle order-only ties; a source that cannot run
    (no forward, another input shape) leaves the plan as it was, with a note saying why."""

    rebuild = plan_rebuilder(model, weights, strategy=strategy)
    try:
        reference = reference_model(source_model, weights.checkpoint.tensors)
        return resolve_ties(plan, model, reference, weights.checkpoint.tensors, rebuild)
    except Exception as exc:  # the user's model code can raise anything
        plan.notes.append(f"resolve: the source model could not be run to settle ties ({exc})")
        return plan


def check_min_coverage(value: Any) -> None:
    """Raise GraftError unless ``value`` is a fraction from 0 to 1."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or math.isnan(value) or not 0 <= value <= 1:
        raise GraftError(
            f"{option('min_coverage')} is the least fraction of the target's parameter "
            f"elements to load, from 0 to 1 (0.9 means 90%; 0 accepts any), got {value!r}"
        )


def graft(
    model: nn.Module,
    source: Source | SourceWeights,
    *,
    strategy: str = "auto",
    min_coverage: float = MIN_COVERAGE,
    plan: GraftPlan | None = None,
    source_name: str | None = None,
    allow_partial: AllowPartial = False,
    allow_uncertain: bool = False,
    allow_mismatch: bool = False,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    **plan_options: Any,
) -> GraftReport:
    """Graft ``source`` into ``model`` and report what was done.

    The plan is computed (or taken from ``plan``), checked against ``min_coverage``, checked
    for exactness (:mod:`.exactness`: every key outside the new head loads, on evidence that
    proves the pairing), checked by running it when the source architecture is known
    (given as ``source_model`` or identified while planning: :mod:`.checked`), and applied
    all-or-nothing: every value is computed before the first one is written.

    Args:
        model: the target, changed in place.
        source: a file or folder, a state_dict or a module.
        strategy: see :func:`plan_graft`.
        min_coverage: refuse below this fraction of target elements loaded (0 disables).
        plan: a plan made earlier (``plan_graft`` or an edited ``--plan-out`` file).
        source_name: how the report names the source.
        allow_partial: accept target keys outside the head left unloaded: True, or glob
            patterns of the keys (``"layer4.*"``); each acceptance is noted in the report.
        allow_uncertain: accept pairings that order only suggested (a GraftWarning is raised
            and the report says so); verify such a graft before trusting it.
        allow_mismatch: load a graft whose outputs differ from the source architecture's (a
            GraftWarning, and the report says so): fine-tuning from these weights anyway.
        verify: run the graft against the source architecture before loading, when the plan
            knows it (False: skip it; ``report.verification`` stays None).
        tolerance: the largest relative difference of that check.
        plan_options: passed to :func:`plan_graft`.

    Returns:
        A :class:`GraftReport`.

    Raises:
        GraftError: coverage below ``min_coverage`` or a plan that does not fit.
        InexactGraftError: an inexact graft not accepted (see ``allow_partial``,
            ``allow_uncertain``); nothing was loaded.
        VerificationError: the grafted model computes another function than the source
            architecture (see ``allow_mismatch``); nothing was loaded.

    Example:
        >>> report = tg.graft(model, "colleague.ckpt")
        >>> report.coverage, report.missing
        (0.998, ['fc.weight', 'fc.bias'])
    """
    check_min_coverage(min_coverage)
    weights = read_source(source, **read_options(plan_options))
    weights = regrouped(weights, tensor_infos(model.state_dict()))
    if plan is None:
        plan = plan_graft(model, weights, strategy=strategy, **plan_options)
    if source_name:
        plan.source = source_name
    if plan.coverage < min_coverage:
        raise GraftError(
            f"refusing to graft {plan.source or 'the source'}: it would load only "
            f"{percent(plan.coverage)} of the target's parameter elements (minimum "
            f"{min_coverage:.0%}); "
            f"{len(plan.missing)} target keys get nothing, e.g. {', '.join(plan.missing[:4])}. "
            f"Check {'--dry-run' if in_cli() else 'plan_graft(...)'}, try another "
            f"{option('strategy')}, or lower {option('min_coverage')} if this is intended"
        )
    accepted = check_exact(
        plan, head_keys(model), allow_partial=allow_partial, allow_uncertain=allow_uncertain
    )
    tensors = weights.checkpoint.tensors
    checked = None
    if verify and plan.source_architecture is not None:
        checked = check_function(
            model,
            plan,
            tensors,
            plan.source_architecture,
            tolerance=tolerance,
            allow_mismatch=allow_mismatch,
        )
    apply_plan(model, plan, tensors)
    report = GraftReport.from_plan(plan)
    report.notes += accepted
    if checked is not None:
        report.verification = checked.to_dict()
        report.notes.append(checked.note())
        if not checked.verification.ok:
            message = (
                f"accepted a graft that changes the function ({option('allow_mismatch')}): "
                f"{checked.verification.problem}"
            )
            warnings.warn(message, GraftWarning, stacklevel=2)
            report.notes.append(message)
    return report


def refusals(
    plan: GraftPlan,
    model: nn.Module,
    *,
    weights: Source | SourceWeights | None = None,
    min_coverage: float = MIN_COVERAGE,
    allow_partial: AllowPartial = False,
    allow_uncertain: bool = False,
    allow_mismatch: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[str]:
    """Why :func:`graft` would refuse ``plan`` (coverage below ``min_coverage``, not exact,
    or — given the source ``weights`` and a known source architecture — a grafted copy that
    computes another function), as sentences; empty when it would load. Nothing is loaded
    into ``model``: this is what a dry run says about the graft it previews.
    """
    check_min_coverage(min_coverage)
    found = []
    if plan.coverage < min_coverage:
        found.append(
            f"it loads {percent(plan.coverage)} of the target's parameter elements, below "
            f"{option('min_coverage', min_coverage)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an accepted suggestion warns when it loads
            check_exact(
                plan, head_keys(model), allow_partial=allow_partial, allow_uncertain=allow_uncertain
            )
    except InexactGraftError as exc:
        found.append(str(exc))
    if not found and weights is not None and plan.source_architecture is not None:
        tensors = regrouped(read_source(weights), tensor_infos(model.state_dict()))
        try:  # the check graft() runs before loading, on a copy
            check_function(
                model,
                plan,
                tensors.checkpoint.tensors,
                plan.source_architecture,
                tolerance=tolerance,
                allow_mismatch=allow_mismatch,
            )
        except VerificationError as exc:
            found.append(str(exc))
    return found
