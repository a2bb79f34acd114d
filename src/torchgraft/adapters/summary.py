"""AdapterSummary: what :func:`torchgraft.add_adapters` did, for people and for JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wording import listing
from .selection import LeftOut, Target
from .settings import METHODS, AdapterSettings

__all__ = ["AdapterSummary"]


@dataclass(frozen=True, repr=False)
class AdapterSummary:
    """The adapters on a model.

    Attributes:
        settings: method, rank, alpha, dropout.
        targets: each adapted module, its type and why it was chosen, in model order.
        left_out: what ``"auto"`` passed over on purpose, and why (empty for named targets).
        head_paths: the head(s), which train fully.
        trainable: parameters that train (adapters and head).
        total: every parameter of the adapted model, adapters included.
        peft_version: the peft that made the layers.
    """

    settings: AdapterSettings
    targets: tuple[Target, ...]
    left_out: tuple[LeftOut, ...]
    head_paths: tuple[str, ...]
    trainable: int
    total: int
    peft_version: str

    @property
    def trainable_share(self) -> float:
        """``trainable / total`` (0 for a model without parameters)."""
        return self.trainable / self.total if self.total else 0.0

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            **self.settings.to_dict(),
            "targets": [
                {"module": t.name, "type": t.kind, "reason": t.reason} for t in self.targets
            ],
            "left_out": [{"modules": list(x.names), "reason": x.reason} for x in self.left_out],
            "head": list(self.head_paths),
            "trainable": self.trainable,
            "total": self.total,
            "trainable_share": self.trainable_share,
            "peft_version": self.peft_version,
        }

    def __str__(self) -> str:
        s = self.settings
        lines = [
            f"{METHODS[s.method].split(':')[0]} adapters, rank {s.rank}, alpha {s.alpha:g} "
            f"(scale {s.scaling:g}), dropout {s.dropout:g}, peft {self.peft_version}",
            f"  trains {self.trainable:,} of {self.total:,} parameters ({self.trainable_share:.2%}): "
            f"adapters on {len(self.targets)} modules, and the head {', '.join(self.head_paths)}",
        ]
        by_reason: dict[str, list[str]] = {}
        for target in self.targets:
            by_reason.setdefault(target.reason, []).append(target.name)
        for reason, names in by_reason.items():
            lines.append(f"  adapted  {len(names):>3} × {reason}: {listing(names)}")
        for left in self.left_out:
            lines.append(f"  left out {len(left.names):>3} × {left.reason}: {listing(left.names)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"<AdapterSummary {s.method} r={s.rank} on {len(self.targets)} modules, "
            f"{self.trainable:,}/{self.total:,} trainable>"
        )
