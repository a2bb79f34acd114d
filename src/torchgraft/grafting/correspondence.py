"""The vocabulary every matching strategy shares: tensor infos in, a correspondence out.

Strategies (:mod:`.match`, :mod:`.structure`) see only ``{key: (shape, dtype)}`` tables and
return a :class:`Match`; they import these names from here, never from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .adapt import AdaptContext
from .rules import RenameRules

__all__ = ["Match", "MatchContext", "TensorInfo", "is_float", "pair_counters"]

#: ``(shape, dtype name)`` of one tensor; strategies never see values.
TensorInfo = tuple[tuple[int, ...], str]


@dataclass
class Match:
    """A correspondence: ``pairs[target] = (source, confidence)``.

    ``unresolved`` explains target keys deliberately left unpaired (an ambiguity).
    """

    pairs: dict[str, tuple[str, float]] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: groups of ``(source path, target path)`` told apart by registration order alone
    ties: list[list[tuple[str, str]]] = field(default_factory=list)


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
    """Integer buffers (``num_batches_tracked``) follow the pairing of their module."""
    module_map = {t.rpartition(".")[0]: s.rpartition(".")[0] for t, (s, _) in match.pairs.items()}
    for key, info in target.items():
        if is_float(info) or key in match.pairs:
            continue
        module, _, role = key.rpartition(".")
        candidate = f"{module_map[module]}.{role}" if module in module_map else None
        if candidate in source and not is_float(source[candidate]):
            match.pairs[key] = (candidate, 1.0)
