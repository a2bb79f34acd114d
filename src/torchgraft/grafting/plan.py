"""From a correspondence to a full plan: the action for every target key.

This is where the two halves meet: a strategy (:mod:`.match`) says which source key feeds
which target key; :mod:`.adapt` says whether that pair copies, reshapes, adapts or is
skipped. The plan lists every target key and every unused source key; nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Mapping

from .adapt import AdaptContext, propose
from .correspondence import Match, TensorInfo
from .report import Action, GraftPlan, KeyPlan

__all__ = ["build_plan"]


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
