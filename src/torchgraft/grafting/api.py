"""The graft recipe: read the source, match, plan, check coverage, apply all-or-nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GraftError, HeadError, SpecError
from .adapt import AdaptContext, apply_adaptation
from .io import Checkpoint, read_checkpoint
from .match import STRATEGIES, Match, MatchContext, TensorInfo
from .plan import build_plan
from .report import GraftPlan, GraftReport, percent
from .rules import RenameRules, load_rules

__all__ = [
    "SourceWeights",
    "apply_plan",
    "graft",
    "plan_from_mapping",
    "plan_graft",
    "read_source",
]

Source = str | os.PathLike | Mapping[str, Any] | nn.Module

#: Default floor on coverage: below it a graft refuses to load (the "strict=False loaded
#: nothing and nobody noticed" bug).
MIN_COVERAGE = 0.5


@dataclass
class SourceWeights:
    """A checkpoint plus what is known about where it came from."""

    checkpoint: Checkpoint
    classes: tuple[str, ...] | None = None
    order: tuple[str, ...] | None = None  # real registration order, when a module is known

    @property
    def order_trusted(self) -> bool:
        """False when the stored order is a sort by name (safetensors stores keys sorted), so
        it says nothing about the registration order. A real registration order is almost
        never alphabetical (``conv1`` comes before ``bn1``)."""
        from .structure import natural_key

        keys = list(self.checkpoint.tensors)
        return len(keys) < 3 or (keys != sorted(keys) and keys != sorted(keys, key=natural_key))


def read_source(source: Source | SourceWeights, **read_options: Any) -> SourceWeights:
    """Resolve any accepted source: a file or folder, a state_dict, a module, or a model spec
    with weights (``torchvision:resnet50`` = its DEFAULT weights, ``...@IMAGENET1K_V1``,
    ``timm:resnet50.a1_in1k``).

    Raises:
        CheckpointError: an unreadable file; SpecError: an unknown spec or weights name.
    """
    if isinstance(source, SourceWeights):
        return source
    if isinstance(source, nn.Module):
        spec = getattr(source, "torchgraft_spec", None)
        checkpoint = read_checkpoint(source)
        return SourceWeights(checkpoint, spec.classes if spec else None, tuple(checkpoint.tensors))
    if isinstance(source, (str, Path)) and not Path(source).exists() and _looks_like_spec(source):
        return _from_spec(str(source))
    return SourceWeights(read_checkpoint(source, **read_options))


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
    source_model: str | nn.Module | None = None,
) -> GraftPlan:
    """The full plan for grafting ``source`` into ``model``, without touching the model.

    Args:
        model: the target.
        source: see :func:`read_source`.
        strategy: ``auto`` (default), ``exact``, ``shape``, ``order`` or ``rules``.
        rules: rename rules (a file, a list of dicts, or :class:`RenameRules`) for ``rules``.
        in_chans_mode: first-conv adaptation: ``sum``, ``mean``, ``repeat`` or ``pick``.
        pick: source channels for ``pick``.
        source_classes: class names of the source head (default: from the source, if known).
        keep_classes: with class names on both sides, copy the source rows of the classes
            both heads name (True), of only these names (a list), or of none (False).
        ema: take the checkpoint's EMA weights.
        allow_globals / trust: see :func:`torchgraft.grafting.io.read_checkpoint`.
        source_model: the architecture the source was saved from (a spec or a module): its
            registration order tells apart same-shaped siblings in a name-sorted checkpoint,
            and siblings that only order could tell apart are settled by running it side by
            side with the target (:mod:`.resolve`).

    Raises:
        GraftError: unknown strategy, or the strategy's own refusal (``exact``, ``order``).
    """
    if strategy not in STRATEGIES:
        raise GraftError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    weights = read_source(source, ema=ema, allow_globals=allow_globals, trust=trust)
    target = _infos(model.state_dict())
    source_infos = _infos(weights.checkpoint.tensors)
    adapt_context = _adapt_context(
        model, target, in_chans_mode, pick, source_classes or weights.classes, keep_classes
    )
    context = MatchContext(
        adapt=adapt_context,
        rules=_rules(rules),
        source_order=_registration_order(source_model) or weights.order,
        order_trusted=weights.order_trusted,
    )
    match = STRATEGIES[strategy](source_infos, target, context)

    def rebuild(correspondence: Match) -> GraftPlan:
        plan = build_plan(
            correspondence,
            source_infos,
            target,
            adapt_context,
            adapt=strategy != "shape",
            strategy=strategy,
        )
        _describe_source(plan, weights, model)
        return plan

    plan = rebuild(match)
    if plan.ties and source_model is not None:
        plan = _settle_ties(plan, model, source_model, weights, rebuild)
    return plan


def _settle_ties(plan, model, source_model, weights: SourceWeights, rebuild) -> GraftPlan:
    """Run the source architecture to settle order-only ties; a source that cannot run
    (no forward, another input shape) leaves the plan as it was, with a note saying why."""
    from .resolve import resolve_ties
    from .verify import reference_model

    try:
        reference, _ = reference_model(source_model, weights.checkpoint.tensors)
        return resolve_ties(plan, model, reference, weights.checkpoint.tensors, rebuild)
    except Exception as exc:  # the user's model code can raise anything
        plan.notes.append(f"resolve: the source model could not be run to settle ties ({exc})")
        return plan


def _describe_source(plan: GraftPlan, weights: SourceWeights, model: nn.Module) -> None:
    plan.source = weights.checkpoint.origin
    plan.source_format = weights.checkpoint.format
    plan.container = weights.checkpoint.container
    plan.set_aside = dict(weights.checkpoint.set_aside)
    # Coverage counts parameter elements; buffers (BatchNorm statistics) weigh nothing there
    # but are listed like every other key.
    numels = dict.fromkeys(model.state_dict(), 0)
    numels.update({k: p.numel() for k, p in model.named_parameters() if k in numels})
    plan.target_numels = numels


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
    weights = read_source(source, **_read_options(plan_options))
    target = _infos(model.state_dict())
    source_infos = _infos(weights.checkpoint.tensors)
    unknown_t = [k for k in mapping if k not in target]
    unknown_s = [v for v in mapping.values() if v is not None and v not in source_infos]
    if unknown_t or unknown_s:
        raise GraftError(
            "the plan does not fit: "
            + (f"target keys not in the model: {unknown_t[:5]} " if unknown_t else "")
            + (f"source keys not in the source: {unknown_s[:5]}" if unknown_s else "")
        )
    match = Match({t: (s, 1.0) for t, s in mapping.items() if s is not None})
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


def graft(
    model: nn.Module,
    source: Source | SourceWeights,
    *,
    strategy: str = "auto",
    min_coverage: float = MIN_COVERAGE,
    plan: GraftPlan | None = None,
    source_name: str | None = None,
    **plan_options: Any,
) -> GraftReport:
    """Graft ``source`` into ``model`` and report what was done.

    The plan is computed (or taken from ``plan``), checked against ``min_coverage``, and
    applied all-or-nothing: every value is computed before the first one is written.

    Args:
        model: the target, changed in place.
        source: see :func:`read_source`.
        strategy: see :func:`plan_graft`.
        min_coverage: refuse below this fraction of target elements loaded (0 disables).
        plan: a plan made earlier (``plan_graft`` or an edited ``--plan-out`` file).
        source_name: how the report names the source.
        plan_options: passed to :func:`plan_graft`.

    Returns:
        A :class:`GraftReport`.

    Raises:
        GraftError: coverage below ``min_coverage`` or a plan that does not fit.

    Example:
        >>> report = tg.graft(model, "colleague.ckpt")
        >>> report.coverage, report.missing
        (0.998, ['fc.weight', 'fc.bias'])
    """
    weights = read_source(source, **_read_options(plan_options))
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
            "Check --dry-run, try another --strategy, or lower --min-coverage if this is intended"
        )
    apply_plan(model, plan, weights.checkpoint.tensors)
    return GraftReport.from_plan(plan)


def apply_plan(model: nn.Module, plan: GraftPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write the plan's values into ``model``: all of them, or none if any fails.

    Raises:
        GraftError: a key the model or the source lacks, or an adaptation that does not fit.
    """
    state = model.state_dict()
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for entry in plan.entries:
        if not entry.action.loads:
            continue
        if entry.target not in state:
            raise GraftError(f"the plan names target key '{entry.target}', which the model lacks")
        if entry.source not in tensors:
            raise GraftError(f"the plan names source key '{entry.source}', which the source lacks")
        target = state[entry.target]
        value = apply_adaptation(tensors[entry.source], target, entry.adapt)
        if tuple(value.shape) != tuple(target.shape):
            raise GraftError(
                f"'{entry.source}' {list(value.shape)} cannot fill '{entry.target}' "
                f"{list(target.shape)} as the plan says ({entry.action.value})"
            )
        staged.append((target, value))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value)


def _registration_order(source_model: str | nn.Module | None) -> tuple[str, ...] | None:
    """The state_dict key order of the source architecture, built on the meta device."""
    if source_model is None:
        return None
    if isinstance(source_model, nn.Module):
        return tuple(source_model.state_dict())
    from ..zoo import build_model

    with torch.device("meta"):
        return tuple(build_model(source_model).model.state_dict())


def _read_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("ema", "allow_globals", "trust") if k in options}


def _infos(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()}


def _adapt_context(
    model: nn.Module,
    target: Mapping[str, TensorInfo],
    in_chans_mode: str | None,
    pick: Sequence[int] | None,
    source_classes: Sequence[str] | None,
    keep_classes: bool | Sequence[str] = True,
) -> AdaptContext:
    from ..layer_groups import under
    from ..spec import spec_of

    try:
        spec = spec_of(model)
    except (HeadError, SpecError):
        # A backbone without a classifier still grafts; it just has no head to adapt.
        first = next((k for k, (shape, _) in target.items() if len(shape) == 4), None)
        return AdaptContext(first_conv_key=first, in_chans_mode=in_chans_mode, pick=_tuple(pick))
    head_keys = frozenset(k for k in target if under(k, spec.head_paths))
    return AdaptContext(
        first_conv_key=f"{spec.first_conv}.weight" if spec.first_conv else None,
        head_keys=head_keys,
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


def _looks_like_spec(text: str | Path) -> bool:
    text = str(text)
    return ":" in text and not text.startswith((".", "/", "~")) and "\\" not in text


def _from_spec(text: str) -> SourceWeights:
    from ..zoo import build_model

    spec, _, weights = text.partition("@")
    built = build_model(spec, weights=weights or "DEFAULT")
    if built.source is None:
        raise SpecError(f"model spec '{text}' carries no weights to graft")
    checkpoint = Checkpoint(dict(built.source), "model-spec", built.source_name or text)
    return SourceWeights(checkpoint, built.spec.classes, tuple(built.source))
