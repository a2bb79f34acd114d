"""From a correspondence to a full plan: the action for every target key.

This is where the two halves meet: a strategy (:mod:`.match`) says which source key feeds
which target key; :mod:`.adapt` says whether that pair copies, reshapes, adapts or is
skipped. The plan lists every target key and every unused source key; nothing is hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .adapt import AdaptContext, propose
from .correspondence import Match, TensorInfo
from .report import Action, GraftPlan, KeyPlan

__all__ = ["build_plan", "drop_candidates"]


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
            action, adaptation, detail = propose(key, shape, source_shape, context)
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
    :func:`~.structure._break_tie`): their target keys, and the counters of their modules,
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
