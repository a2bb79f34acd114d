"""The vocabulary every matching strategy shares: tensor infos in, a correspondence out.

Strategies (:mod:`.match`, :mod:`.structure`) see only ``{key: (shape, dtype)}`` tables and
return a :class:`Match`; they import these names from here, never from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .rules import RenameRules
from .values.adapt import AdaptContext

__all__ = [
    "EVIDENCE",
    "FULL",
    "Match",
    "MatchContext",
    "TensorInfo",
    "is_float",
    "pair_counters",
]

#: ``(shape, dtype name)`` of one tensor; strategies never see values.
TensorInfo = tuple[tuple[int, ...], str]

#: Full confidence: a pairing proven by its evidence. Anything lower is a guess that a graft
#: refuses unless the caller accepts it (``allow_uncertain``).
FULL = 1.0

#: The evidence ladder: what decided a pairing, and the confidence it carries. A key's
#: evidence is the weakest decision on its path (a tensor under a module paired by order
#: alone is only as sure as that order). docs/grafting.md explains each rung.
EVIDENCE: dict[str, float] = {
    "name": FULL,  # equal names (after wrapper prefixes)
    "rules": FULL,  # the caller's rename rules
    "plan": FULL,  # the caller's plan
    "stored-order": FULL,  # strategy 'order': the caller vouches for the stored order
    "unique": FULL,  # the only item of its shapes on both sides, at this level
    "role": FULL,  # same-shaped tensors told apart by role (weight / bias)
    "name-words": FULL,  # same-shaped modules told apart by a word of their names (ln_pre)
    "counter": FULL,  # an integer counter following the module it belongs to
    "order": FULL,  # numbered names on both sides, in the source's real registration order
    "index-order": FULL,  # a container's integer indices in a name-sorted source: its order
    "architecture": FULL,  # settled by running the source architecture side by side
    "bn-statistics": FULL,  # settled by the weights' own BatchNorm statistics, clear margin
    "numbered-names": 0.75,  # numbered names in a name-sorted source: their natural order
    "leftover": 0.6,  # different shapes, paired as the one plausible counterpart
    "registration-order": 0.5,  # only the source's registration order tells them apart
    "regrouped": 0.4,  # paired by group shapes against the order of same-shaped modules
    # same-shaped siblings whose names and order say nothing: a trial pairing that only
    # the source architecture or the BatchNorm statistics can settle, never loaded otherwise
    "candidate": 0.0,
}


@dataclass
class Match:
    """A correspondence: ``pairs[target] = (source, confidence)``, and for each pair the
    evidence that decided it (``evidence[target]``, a key of :data:`EVIDENCE`).

    ``unresolved`` explains target keys deliberately left unpaired (an ambiguity).
    """

    pairs: dict[str, tuple[str, float]] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: groups of ``(source path, target path)`` told apart by order alone (not proven)
    ties: list[list[tuple[str, str]]] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)

    def pair(self, target: str, source: str, evidence: str) -> None:
        """Pair ``target`` with ``source`` on ``evidence`` (its confidence from the ladder)."""
        self.pairs[target] = (source, EVIDENCE[evidence])
        self.evidence[target] = evidence

    @classmethod
    def of(cls, mapping: dict[str, str], evidence: str, **fields) -> Match:
        """A match pairing every ``target: source`` of ``mapping`` on one kind of evidence."""
        match = cls(**fields)
        for target, source in mapping.items():
            match.pair(target, source, evidence)
        return match


@dataclass(frozen=True)
class MatchContext:
    """What a strategy may know beyond the two tables.

    Attributes:
        adapt: target facts used to tell an adaptable pair from a conflict.
        rules: rename rules for the ``rules`` strategy.
        source_order: the source's real registration order (from a module or spec), when known.
        order_trusted: True when the source's stored order is its registration order (a
            torch-saved state_dict) rather than sorted (safetensors).
    """

    adapt: AdaptContext = field(default_factory=AdaptContext)
    rules: RenameRules | None = None
    source_order: tuple[str, ...] | None = None
    order_trusted: bool = True


def is_float(info: TensorInfo) -> bool:
    return info[1].startswith(("torch.float", "torch.bfloat", "torch.half", "torch.complex"))


def pair_counters(source, target, match: Match) -> None:
    """Integer buffers (``num_batches_tracked``) follow the pairing of their module: the
    source module's counter of the same role, or its only counter when the module has one
    on each side (role names rewritten too)."""
    module_map = {t.rpartition(".")[0]: s.rpartition(".")[0] for t, (s, _) in match.pairs.items()}
    counters: dict[str, list[str]] = {}
    for key, info in source.items():
        if not is_float(info):
            counters.setdefault(key.rpartition(".")[0], []).append(key)
    target_counters: dict[str, list[str]] = {}
    for key, info in target.items():
        if not is_float(info):
            target_counters.setdefault(key.rpartition(".")[0], []).append(key)
    used = {s for s, _ in match.pairs.values()}
    for module, keys in target_counters.items():
        if module not in module_map:
            continue
        candidates = [k for k in counters.get(module_map[module], []) if k not in used]
        for key in keys:
            if key in match.pairs:
                continue
            role = key.rpartition(".")[2]
            same_role = [k for k in candidates if k.rpartition(".")[2] == role]
            if same_role:
                chosen = same_role[0]
            elif len(keys) == 1 and len(candidates) == 1:
                chosen = candidates[0]
            else:
                continue
            match.pair(key, chosen, "counter")
            candidates.remove(chosen)
            used.add(chosen)
