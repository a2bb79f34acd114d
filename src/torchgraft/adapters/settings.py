"""AdapterSettings: what an adapter is (method, rank, alpha, dropout), checked once.

The same checks serve a call (``tg.add_adapters(model, rank=0)``) and a record read from a
file (``adapters.safetensors.json``), so a file can ask for nothing a caller could not. A
record read from a file never selects code: it names a method from :data:`METHODS` and
numbers within their ranges, and nothing in it is imported, called or evaluated. Pure data;
no torch, no peft.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AdapterError

__all__ = ["MAX_RANK", "METHODS", "AdapterSettings"]

#: The methods, and what each one is (shown in errors and summaries).
METHODS = {
    "lora": "LoRA: a low-rank update B·A added to each target's weight",
    "dora": "DoRA: LoRA's update on the weight's direction, plus a trained magnitude per output",
}

#: A rank beyond any vision layer's width: a record asking for more is not one of ours.
MAX_RANK = 4096

#: The fields of a record, in order; anything else in one is refused.
FIELDS = ("method", "rank", "alpha", "dropout")


@dataclass(frozen=True)
class AdapterSettings:
    """One adapter configuration, valid by construction.

    Attributes:
        method: ``"lora"`` or ``"dora"``.
        rank: rank of the update, 1 … :data:`MAX_RANK`.
        alpha: the update is scaled by ``alpha / rank`` (peft's ``lora_alpha``); > 0, finite.
        dropout: dropout on the adapter's input while training, in ``[0, 1)``.
    """

    method: str = "lora"
    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        problems = _problems(self.method, self.rank, self.alpha, self.dropout)
        if problems:
            raise AdapterError("; ".join(problems))

    @property
    def scaling(self) -> float:
        """The factor on the low-rank update: ``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
        }

    @classmethod
    def from_record(cls, record: Any, origin: str = "the adapter record") -> AdapterSettings:
        """Settings from plain data read from a file, checked by type and range.

        Raises:
            AdapterError: not a mapping, a field missing, unknown or out of range (every
                problem named at once, with ``origin``).
        """
        if not isinstance(record, Mapping):
            raise AdapterError(
                f"{origin}: expected a mapping of {list(FIELDS)}, found a {type(record).__name__}"
            )
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise AdapterError(f"{origin}: missing {missing}; a record names {list(FIELDS)}")
        problems = _problems(*(record[f] for f in FIELDS))
        if problems:
            raise AdapterError(f"{origin}: " + "; ".join(problems))
        return cls(*(record[f] for f in FIELDS))


def _problems(method: Any, rank: Any, alpha: Any, dropout: Any) -> list[str]:
    """Every problem of the four values, worded for the caller (empty: all good)."""
    problems = []
    if not isinstance(method, str) or method not in METHODS:
        problems.append(f"method is one of {sorted(METHODS)}, not {method!r:.40}")
    # bool is an int to Python, never a rank to anyone
    if isinstance(rank, bool) or not isinstance(rank, int):
        problems.append(f"rank is a whole number, not {rank!r:.40}")
    elif not 1 <= rank <= MAX_RANK:
        problems.append(f"rank is between 1 and {MAX_RANK}, not {rank}; 4 to 16 is usual")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        problems.append(f"alpha is a number, not {alpha!r:.40}")
    elif not (math.isfinite(alpha) and alpha > 0):
        problems.append(f"alpha is a finite number above 0, not {alpha}; twice the rank is usual")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        problems.append(f"dropout is a number, not {dropout!r:.40}")
    elif not 0 <= dropout < 1:  # NaN fails this too
        problems.append(f"dropout is at least 0 and below 1, not {dropout}")
    return problems
