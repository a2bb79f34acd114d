"""From a model and source weights to a plan: match with a strategy, then decide each key.

:func:`make_plan` is the pure part of a graft (the model is read, never written). It does not
run anything: settling order-only ties by running the source architecture is
:mod:`.resolve`'s job, called by :func:`torchgraft.grafting.plan_graft`.

This is where the two halves meet (:func:`build_plan`): a strategy (:mod:`.match`) says which
source key feeds which target key; :mod:`.values.adapt` says whether that pair copies, reshapes,
adapts or is skipped. The plan lists every target key and every unused source key; nothing
is hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GraftError, HeadError, SpecError
from ..model.anatomy import spec_of
from ..model.layer_groups import under
from .correspondence import Match, MatchContext, TensorInfo
from .graft_plan import Action, GraftPlan, KeyPlan
from .match import STRATEGIES
from .rules import RenameRules, load_rules
from .source import Source, SourceWeights, read_options, read_source
from .values.adapt import AdaptContext, propose
from .values.positions import position_grids
from .values.projections import derived_order, describe_derived, regrouped

__all__ = [
    "build_plan",
    "check_strategy",
    "drop_candidates",
    "head_keys",
    "make_plan",
    "order_in_file",
    "plan_from_mapping",
    "plan_rebuilder",
    "rebuild_plan",
    "tensor_infos",
]


def make_plan(
    model: nn.Module,
    weights: SourceWeights,
    *,
    strategy: str = "auto",
    rules: RenameRules | str | Path | Sequence[Mapping[str, str]] | None = None,
    in_chans_mode: str | None = None,
    pick: Sequence[int] | None = None,
    source_classes: Sequence[str] | None = None,
    keep_classes: bool | Sequence[str] = True,
    source_order: Sequence[str] | None = None,
) -> GraftPlan:
    """The plan for grafting ``weights`` into ``model`` with ``strategy`` (see ``plan_graft``).

    ``source_order`` is the source architecture's registration order, when known.

    Raises:
        GraftError: unknown strategy, or the strategy's own refusal (``exact``, ``order``).
    """
    check_strategy(strategy)
    target = tensor_infos(model.state_dict())
    source_infos = tensor_infos(weights.checkpoint.tensors)
    adapt_context = _adapt_context(
        model, target, in_chans_mode, pick, source_classes or weights.classes, keep_classes
    )
    if source_order is not None:
        # The source model's keys, as the file names them: regrouped, and with the file's
        # wrapper prefixes (module., model.) where it has them.
        if weights.derived:
            source_order = derived_order(source_order, weights.derived)
        source_order = order_in_file(source_order, weights.checkpoint.tensors)
    context = MatchContext(
        adapt=adapt_context,
        rules=_rules(rules),
        source_order=tuple(source_order) if source_order is not None else weights.order,
        order_trusted=weights.order_trusted,
    )
    match = STRATEGIES[strategy](source_infos, target, context)
    return rebuild_plan(model, weights, match, adapt_context, strategy=strategy)


def order_in_file(order: Sequence[str], stored: Mapping[str, Any]) -> tuple[str, ...]:
    """A model's registration ``order`` in the names a file stores: each key as stored, or
    the one stored key that ends with ``.KEY`` (a prefix the file added: ``module.``,
    ``model.``); keys the file lacks are left out."""
    if all(key in stored for key in order):
        return tuple(order)
    by_suffix: dict[str, str | None] = {}
    for name in stored:
        parts = name.split(".")
        for start in range(1, len(parts)):
            suffix = ".".join(parts[start:])
            by_suffix[suffix] = None if suffix in by_suffix else name  # None: not unique
    found = []
    for key in order:
        name = key if key in stored else by_suffix.get(key)
        if name is not None:
            found.append(name)
    return tuple(found)


def rebuild_plan(
    model: nn.Module,
    weights: SourceWeights,
    match: Match,
    adapt_context: AdaptContext | None = None,
    *,
    strategy: str,
) -> GraftPlan:
    """The plan for a given correspondence (used again when ties are settled)."""
    target = tensor_infos(model.state_dict())
    source_infos = tensor_infos(weights.checkpoint.tensors)
    if adapt_context is None:
        adapt_context = _adapt_context(model, target, None, None, weights.classes)
    plan = build_plan(
        match, source_infos, target, adapt_context, adapt=strategy != "shape", strategy=strategy
    )
    _describe_source(plan, weights, model)
    return plan


def plan_rebuilder(model: nn.Module, weights: SourceWeights, *, strategy: str):
    """``callable(Match) -> GraftPlan`` for many correspondences between one model and one
    source (trials while settling ties): the tables and the adaptation context are computed
    once, not per call (finding the model's anatomy runs it)."""
    target = tensor_infos(model.state_dict())
    source_infos = tensor_infos(weights.checkpoint.tensors)
    context = _adapt_context(model, target, None, None, weights.classes)

    def rebuild(match: Match) -> GraftPlan:
        plan = build_plan(
            match, source_infos, target, context, adapt=strategy != "shape", strategy=strategy
        )
        _describe_source(plan, weights, model)
        return plan

    return rebuild


def plan_from_mapping(
    model: nn.Module,
    source: Source | SourceWeights,
    mapping: Mapping[str, str | None],
    **plan_options: Any,
) -> GraftPlan:
    """A plan from a hand-made (or hand-edited) ``{target_key: source_key}`` mapping.

    The actions are recomputed from the shapes, so an edited plan cannot carry a stale
    adaptation. Target keys absent from ``mapping`` or mapped to None receive nothing.

    Raises:
        GraftError: the mapping names keys that the model or the source lacks.
    """
    target = tensor_infos(model.state_dict())
    weights = regrouped(read_source(source, **read_options(plan_options)), target)
    source_infos = tensor_infos(weights.checkpoint.tensors)
    unknown_t = [k for k in mapping if k not in target]
    unknown_s = [v for v in mapping.values() if v is not None and v not in source_infos]
    if unknown_t or unknown_s:
        raise GraftError(
            "the plan does not fit: "
            + (f"target keys not in the model: {unknown_t[:5]} " if unknown_t else "")
            + (f"source keys not in the source: {unknown_s[:5]}" if unknown_s else "")
        )
    match = Match.of({t: s for t, s in mapping.items() if s is not None}, "plan")
    adapt_context = _adapt_context(
        model,
        target,
        plan_options.get("in_chans_mode"),
        plan_options.get("pick"),
        plan_options.get("source_classes") or weights.classes,
        plan_options.get("keep_classes", True),
    )
    plan = build_plan(match, source_infos, target, adapt_context, strategy="plan")
    _describe_source(plan, weights, model)
    return plan


def check_strategy(strategy: str) -> None:
    """Raises GraftError for an unknown strategy (before anything is read)."""
    if strategy not in STRATEGIES:
        raise GraftError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")


def head_keys(model: nn.Module) -> frozenset[str]:
    """The state_dict keys of ``model``'s classifier head(s) (none for a bare backbone)."""
    try:
        spec = spec_of(model)
    except (HeadError, SpecError):
        return frozenset()
    return frozenset(k for k in model.state_dict() if under(k, spec.head_paths))


def tensor_infos(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    """``{key: (shape, dtype name)}``: all a strategy may see of a state_dict."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()}


def _describe_source(plan: GraftPlan, weights: SourceWeights, model: nn.Module) -> None:
    plan.source = weights.checkpoint.origin
    plan.source_format = weights.checkpoint.format
    plan.container = weights.checkpoint.container
    plan.set_aside = dict(weights.checkpoint.set_aside)
    if weights.derived:
        plan.entries = [
            dataclasses.replace(e, detail=describe_derived(weights.derived[e.source]))
            if e.source in weights.derived and not e.detail
            else e
            for e in plan.entries
        ]
        used = sum(e.source in weights.derived for e in plan.entries)
        plan.notes.append(
            f"{used} source tensor(s) derived from the file's attention projections (fused or "
            "split to the target's form; each entry says from what)"
        )
    # Coverage counts parameter elements; buffers (BatchNorm statistics) weigh nothing there
    # but are listed like every other key.
    numels = dict.fromkeys(model.state_dict(), 0)
    numels.update({k: p.numel() for k, p in model.named_parameters() if k in numels})
    plan.target_numels = numels


def _adapt_context(
    model: nn.Module,
    target: Mapping[str, TensorInfo],
    in_chans_mode: str | None,
    pick: Sequence[int] | None,
    source_classes: Sequence[str] | None,
    keep_classes: bool | Sequence[str] = True,
) -> AdaptContext:
    try:
        spec = spec_of(model)
    except (HeadError, SpecError):
        # A backbone without a classifier still grafts; it just has no head to adapt.
        first = next((k for k, (shape, _) in target.items() if len(shape) == 4), None)
        return AdaptContext(
            first_conv_key=first,
            in_chans_mode=in_chans_mode,
            pick=_tuple(pick),
            positions=position_grids(model),
        )
    head_keys = frozenset(k for k in target if under(k, spec.head_paths))
    return AdaptContext(
        first_conv_key=f"{spec.first_conv}.weight" if spec.first_conv else None,
        head_keys=head_keys,
        positions=position_grids(model),
        in_chans_mode=in_chans_mode,
        pick=_tuple(pick),
        target_classes=spec.classes,
        source_classes=_tuple(source_classes) if keep_classes is not False else None,
        keep_classes=None if isinstance(keep_classes, bool) else tuple(keep_classes),
    )


def _rules(rules: Any) -> RenameRules | None:
    if rules is None:
        return None
    if isinstance(rules, (str, Path)):
        return load_rules(rules)
    return RenameRules.from_data(rules)


def _tuple(values: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return tuple(values) if values is not None else None


def build_plan(
    match: Match,
    source: Mapping[str, TensorInfo],
    target: Mapping[str, TensorInfo],
    context: AdaptContext,
    *,
    adapt: bool = True,
    strategy: str = "auto",
) -> GraftPlan:
    """One :class:`KeyPlan` per target key, in target order, plus the unused source keys.

    Args:
        adapt: allow reshapes and adaptations; without, a shape difference is a skip.
    """
    entries: list[KeyPlan] = []
    for key, (shape, _) in target.items():
        pair = match.pairs.get(key)
        if pair is None:
            same_name = source.get(key)
            if same_name is not None and tuple(same_name[0]) != tuple(shape):
                entries.append(
                    KeyPlan(
                        key,
                        key,
                        Action.SKIP_SHAPE,
                        1.0,
                        shape,
                        same_name[0],
                        f"shape {list(same_name[0])} cannot fill {list(shape)}",
                    )
                )
            else:
                entries.append(
                    KeyPlan(
                        key, None, Action.MISSING, 0.0, shape, None, match.unresolved.get(key, "")
                    )
                )
            continue
        source_key, confidence = pair
        source_shape = source[source_key][0]
        if adapt:
            action, adaptation, detail = propose(
                key, shape, source_shape, context, source_key=source_key
            )
        elif tuple(source_shape) == tuple(shape):
            action, adaptation, detail = Action.COPY, None, ""
        else:
            action, adaptation, detail = (
                Action.SKIP_SHAPE,
                None,
                f"shape {list(source_shape)} cannot fill {list(shape)}",
            )
        if action is Action.COPY and source_key != key:
            action = Action.RENAME
        entries.append(
            KeyPlan(
                key,
                source_key,
                action,
                confidence,
                shape,
                source_shape,
                detail,
                adaptation,
                match.evidence.get(key, ""),
            )
        )
    # A source skipped for its shape is reported under "skipped", not again as unexpected.
    used = {e.source for e in entries if e.action.loads or e.action is Action.SKIP_SHAPE}
    unexpected = [k for k in source if k not in used]
    return GraftPlan(
        entries, unexpected, strategy=strategy, notes=list(match.notes), ties=list(match.ties)
    )


def drop_candidates(plan: GraftPlan) -> GraftPlan:
    """``plan`` without the ``candidate`` pairings that nothing settled (see
    :func:`~.pairing._break_tie`): their target keys, and the counters of their modules,
    become missing and are reported as ambiguous, naming the candidate sources; those
    sources become unused. A candidate is a trial assignment, never a pairing to load."""
    dropped = [e for e in plan.entries if e.evidence == "candidate"]
    if not dropped:
        return plan
    modules = {e.target.rpartition(".")[0] for e in dropped}
    sources_by_kind: dict[tuple, list[str]] = {}  # (shape, role): the interchangeable sources
    for entry in dropped:
        sources_by_kind.setdefault(_kind(entry), []).append(entry.source)
    entries, freed = [], []
    for entry in plan.entries:
        candidate = entry.evidence == "candidate"
        if not candidate and not (entry.evidence and entry.target.rpartition(".")[0] in modules):
            entries.append(entry)
            continue
        if candidate:
            sources = sources_by_kind[_kind(entry)]
            shown = ", ".join(sources[:3]) + (" …" if len(sources) > 3 else "")
            detail = (
                f"ambiguous: {len(sources)} same-shaped sources ({shown}) that nothing in the "
                "names or order tells apart, and that neither the source architecture nor the "
                "BatchNorm statistics settled"
            )
        else:
            detail = "its module's pairing was ambiguous"
        freed.append(entry.source)
        entries.append(
            KeyPlan(entry.target, None, Action.MISSING, 0.0, entry.target_shape, None, detail)
        )
    gone = modules | {e.target for e in dropped}
    return dataclasses.replace(
        plan,
        entries=entries,
        ties=[g for g in plan.ties if not any(t in gone for _, t in g)],
        unexpected=list(plan.unexpected) + freed,
        notes=[
            *plan.notes,
            f"structure: {len(dropped)} target keys stay ambiguous: their candidate pairings were not settled, and are not loaded",
        ],
    )


def _kind(entry: KeyPlan) -> tuple:
    return tuple(entry.target_shape), entry.target.rpartition(".")[2]
