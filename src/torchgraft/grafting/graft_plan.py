"""GraftPlan (before loading) and GraftReport (after): per target key what happens, and why.

A plan has one :class:`KeyPlan` per key of the target's state_dict, in target order, plus
the source keys nothing uses. It renders as a grouped table (``layer1.0.{bn1, conv1}.{bias,
weight}``), serialises to JSON, and round-trips through an editable YAML/JSON document.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from ..errors import GraftError
from ..text import printable

__all__ = ["Action", "GraftPlan", "GraftReport", "KeyPlan", "group_keys"]


class Action(str, Enum):
    """What happens to one target key."""

    COPY = "copy"  # same name, same shape
    RENAME = "rename"  # other name, same shape
    RESHAPE = "reshape"  # same number of elements, other shape (e.g. Linear <-> 1x1 conv)
    ADAPT = "adapt"  # values transformed (input channels, class rows)
    SKIP_SHAPE = "skip-shape"  # a source exists but its shape cannot be used
    MISSING = "missing"  # no source: the target keeps its own values

    @property
    def loads(self) -> bool:
        return self in (Action.COPY, Action.RENAME, Action.RESHAPE, Action.ADAPT)


@dataclass(frozen=True)
class KeyPlan:
    """The plan for one target key.

    Attributes:
        target: key in the target state_dict.
        source: key in the source, or None.
        action: see :class:`Action`.
        confidence: 1.0 for exact names; lower for structural matches (see docs/grafting.md).
        target_shape / source_shape: tensor shapes.
        detail: why (the adaptation applied, the shape conflict, the ambiguity).
        adapt: machine-readable adaptation, e.g. ``{"kind": "in_chans", "mode": "sum"}``.
        evidence: what decided the pairing (a rung of the evidence ladder, see
            ``torchgraft.grafting.correspondence.EVIDENCE``); "" when nothing loads.
    """

    target: str
    source: str | None
    action: Action
    confidence: float = 1.0
    target_shape: tuple[int, ...] = ()
    source_shape: tuple[int, ...] | None = None
    detail: str = ""
    adapt: Mapping[str, Any] | None = None
    evidence: str = ""

    @property
    def certain(self) -> bool:
        """Loads on proven evidence (full confidence)."""
        return self.action.loads and self.confidence >= 1.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"] = self.action.value
        data["target_shape"] = list(self.target_shape)
        data["source_shape"] = list(self.source_shape) if self.source_shape is not None else None
        data["adapt"] = dict(self.adapt) if self.adapt else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyPlan:
        try:
            return cls(
                target=data["target"],
                source=data.get("source"),
                action=Action(data["action"]),
                confidence=float(data.get("confidence", 1.0)),
                target_shape=tuple(data.get("target_shape") or ()),
                source_shape=(
                    tuple(data["source_shape"]) if data.get("source_shape") is not None else None
                ),
                detail=data.get("detail", ""),
                adapt=data.get("adapt"),
                evidence=str(data.get("evidence", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise GraftError(f"invalid plan entry {dict(data)!r}: {exc}") from None


@dataclass(repr=False)
class GraftPlan:
    """Everything a graft will do, computed without touching the target.

    Attributes:
        entries: one per target key, in target order.
        unexpected: source keys no target key uses.
        strategy: the strategy that made the plan.
        source: where the weights come from.
        source_format / container / set_aside: what the reader found (see ``Checkpoint``).
        notes: plan-wide remarks (a stripped prefix, an EMA choice, a verification result).
    """

    entries: list[KeyPlan]
    unexpected: list[str] = field(default_factory=list)
    strategy: str = "auto"
    source: str = ""
    source_format: str = ""
    container: str | None = None
    set_aside: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    target_numels: dict[str, int] = field(default_factory=dict)
    #: groups of (source module, target module) paired by registration order alone
    ties: list[list[tuple[str, str]]] = field(default_factory=list)
    #: the architecture the source was saved from, when given or identified while planning
    #: (a :class:`~.checked.SourceArchitecture`: a graft runs it before loading); never
    #: written to a plan file, never kept by a report
    source_architecture: Any = field(default=None, compare=False)

    # --- the contract (PRODUCT.md) -------------------------------------------------------
    @property
    def mapping(self) -> dict[str, str]:
        """``{target_key: source_key}`` for every key that loads."""
        return {e.target: e.source for e in self.entries if e.action.loads and e.source}

    @property
    def missing(self) -> list[str]:
        """Target keys that receive nothing (initialisation will touch exactly these)."""
        return [e.target for e in self.entries if not e.action.loads]

    @property
    def mismatched(self) -> list[KeyPlan]:
        """Target keys that had a source whose shape could not be used."""
        return [e for e in self.entries if e.action is Action.SKIP_SHAPE]

    @property
    def coverage(self) -> float:
        """Fraction of the target's parameter elements that load (buffers such as BatchNorm
        statistics are listed like any key but do not count here)."""
        total = sum(self.target_numels.get(e.target, _numel(e.target_shape)) for e in self.entries)
        loaded = sum(
            self.target_numels.get(e.target, _numel(e.target_shape))
            for e in self.entries
            if e.action.loads
        )
        return loaded / total if total else 1.0

    def to_source_naming(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Export a (grafted, perhaps fine-tuned) state_dict back to the source's naming.

        Copied, renamed and reshaped keys go back under their source names and shapes;
        adapted keys (input channels, class rows) and keys with no source are left out,
        since no source tensor has their meaning.

        Example:
            >>> report = tg.graft(model, "lite0.pth")
            >>> original_names = report.to_source_naming(model.state_dict())
        """
        exported = {}
        for entry in self.entries:
            if entry.action in (Action.COPY, Action.RENAME, Action.RESHAPE) and entry.source:
                tensor = state_dict[entry.target]
                if entry.source_shape is not None and tuple(tensor.shape) != entry.source_shape:
                    tensor = tensor.reshape(entry.source_shape)
                exported[entry.source] = tensor
        return exported

    @property
    def evidence_counts(self) -> dict[str, int]:
        """How many loaded keys each kind of evidence decided (strongest rung first)."""
        counts: dict[str, int] = {}
        for entry in sorted(self.entries, key=lambda e: -e.confidence):
            if entry.action.loads and entry.evidence:
                counts[entry.evidence] = counts.get(entry.evidence, 0) + 1
        return counts

    @property
    def uncertain(self) -> list[KeyPlan]:
        """Keys that load on evidence that does not prove the pairing."""
        return [e for e in self.entries if e.action.loads and not e.certain]

    def by_action(self, action: Action) -> list[KeyPlan]:
        return [e for e in self.entries if e.action is action]

    @property
    def counts(self) -> dict[str, int]:
        counts = {a.value: 0 for a in Action}
        for entry in self.entries:
            counts[entry.action.value] += 1
        counts["unexpected"] = len(self.unexpected)
        return counts

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "source": self.source,
            "source_format": self.source_format,
            "container": self.container,
            "coverage": round(self.coverage, 6),
            "counts": self.counts,
            "evidence": self.evidence_counts,
            "notes": list(self.notes),
            "set_aside": dict(self.set_aside),
            "entries": [e.to_dict() for e in self.entries],
            "unexpected": list(self.unexpected),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraftPlan:
        """Read a plan written by :meth:`to_dict` (possibly edited by hand).

        Raises:
            GraftError: the document is not a plan.
        """
        if not isinstance(data, Mapping) or "entries" not in data:
            raise GraftError("not a graft plan: expected a mapping with 'entries'")
        return cls(
            entries=[KeyPlan.from_dict(e) for e in data["entries"]],
            unexpected=list(data.get("unexpected", [])),
            strategy=data.get("strategy", "plan"),
            source=data.get("source", ""),
            source_format=data.get("source_format", ""),
            container=data.get("container"),
            set_aside=dict(data.get("set_aside", {})),
            notes=list(data.get("notes", [])),
        )

    # --- rendering -----------------------------------------------------------------------
    def render(self, limit: int | None = 12, more_hint: str | None = None) -> str:
        """The grouped table; ``limit`` lines per section (None: all). ``more_hint`` says how
        to see a cut list (default: ``render(limit=None)``; the CLI says ``--all``)."""
        hint = more_hint or "render(limit=None) lists all"
        lines = [
            f"graft {self.strategy}: {self.source or 'source'} "
            f"[{self.source_format or '?'}{', ' + self.container if self.container else ''}]",
            f"coverage {percent(self.coverage)} of target parameter elements · "
            + " · ".join(f"{k} {v}" for k, v in self.counts.items() if v),
        ]
        evidence = self.evidence_counts
        if evidence:
            lines.append(
                "evidence: " + " · ".join(f"{kind} {count}" for kind, count in evidence.items())
            )
        lines += [f"note: {n}" for n in self.notes]
        sections: list[tuple[str, list[str]]] = [
            ("copied", group_keys(e.target for e in self.by_action(Action.COPY))),
            ("renamed", _rename_lines(self.by_action(Action.RENAME))),
            ("reshaped", _detail_lines(self.by_action(Action.RESHAPE))),
            ("adapted", _detail_lines(self.by_action(Action.ADAPT))),
            ("skipped (shape)", _detail_lines(self.by_action(Action.SKIP_SHAPE))),
            ("missing", _missing_lines(self.by_action(Action.MISSING))),
            ("unexpected", group_keys(self.unexpected)),
        ]
        for title, body in sections:
            if not body:
                continue
            lines.append(f"{title}:")
            shown = body if limit is None else body[:limit]
            lines += [f"  {line}" for line in shown]
            if len(shown) < len(body):
                lines.append(f"  … {len(body) - len(shown)} more ({hint})")
        if self.set_aside:
            lines.append("set aside (not tensors): " + ", ".join(sorted(self.set_aside)[:8]))
        # names are data: a key holding a newline or an escape must not forge a line
        return "\n".join(printable(line) for line in lines)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        unsure = f", {len(self.uncertain)} unproven" if self.uncertain else ""
        return (
            f"<{type(self).__name__} {self.strategy} from {self.source or 'source'}: coverage "
            f"{percent(self.coverage)}, {counts}{unsure}>"
        )


@dataclass(repr=False)
class GraftReport(GraftPlan):
    """A plan that was applied; ``verification`` holds the output comparison when one ran."""

    verification: dict[str, Any] | None = None

    @classmethod
    def from_plan(cls, plan: GraftPlan) -> GraftReport:
        fields = {k: v for k, v in vars(plan).items() if k != "source_architecture"}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["verification"] = self.verification
        return data

    def with_note(self, note: str) -> GraftReport:
        return replace(self, notes=[*self.notes, note])


def group_keys(keys: Iterable[str]) -> list[str]:
    """Compact key listing: ``layer1.0.{bn1, bn2}.{bias, weight}``, first-seen order."""
    roles: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        module, _, role = key.rpartition(".")
        roles[module].append(role)
    by_parent: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for module, role_list in roles.items():
        parent, _, child = module.rpartition(".")
        by_parent[(parent, tuple(sorted(role_list)))].append(child)
    lines = []
    for (parent, role_list), children in by_parent.items():
        head = _brace(children)
        path = f"{parent}.{head}" if parent else head
        tail = _brace(list(role_list))
        lines.append(f"{path}.{tail}" if path else tail)
    return lines


def _brace(items: list[str]) -> str:
    items = [i for i in items if i != ""] or [""]
    return items[0] if len(items) == 1 else "{" + ", ".join(items) + "}"


def _rename_lines(entries: list[KeyPlan]) -> list[str]:
    """Renames, compressed: a shared prefix change is one line (``* ← module.*``), the rest
    one line per module (``conv_stem.weight ← _conv_stem``)."""
    by_prefix: dict[tuple[str, str], list[KeyPlan]] = defaultdict(list)
    for entry in entries:
        by_prefix[_prefix_change(entry.target, entry.source or "")].append(entry)
    lines = []
    singles: list[KeyPlan] = []
    for (t_prefix, s_prefix), group in by_prefix.items():
        if len(group) >= 4 and (t_prefix, s_prefix) != ("", ""):
            lines.append(f"{t_prefix}* ← {s_prefix}*  ({len(group)} keys, rest of the name equal)")
        else:
            singles.extend(group)
    by_module: dict[tuple[str, str], list[KeyPlan]] = defaultdict(list)
    for entry in singles:
        t_mod, _, _ = entry.target.rpartition(".")
        s_mod, _, _ = (entry.source or "").rpartition(".")
        by_module[(t_mod, s_mod)].append(entry)
    for (t_mod, s_mod), group in by_module.items():
        roles = _brace([e.target.rpartition(".")[2] for e in group])
        confidence = _evidence_tag(min(group, key=lambda e: e.confidence))
        if t_mod and s_mod:
            lines.append(f"{t_mod}.{roles} ← {s_mod}{confidence}")
        else:
            lines.append(f"{group[0].target} ← {group[0].source}{confidence}")
    return lines


#: Evidence worth naming on a line even at full confidence (it decided a tie).
_TELLING = ("order", "index-order", "architecture", "bn-statistics", "leftover")


def _evidence_tag(entry: KeyPlan) -> str:
    if entry.confidence < 1.0:
        return f"  ({entry.evidence or 'unproven'}, confidence {entry.confidence:.2f})"
    return f"  ({entry.evidence})" if entry.evidence in _TELLING else ""


def _prefix_change(target: str, source: str) -> tuple[str, str]:
    """``("", "module.")`` for ``conv1.weight`` / ``module.conv1.weight``: the prefixes left
    after removing the longest common run of trailing components."""
    t_parts, s_parts = target.split("."), source.split(".")
    common = 0
    while common < min(len(t_parts), len(s_parts)) and t_parts[-1 - common] == s_parts[-1 - common]:
        common += 1
    if common < 2:
        return ("", "")
    t_prefix = ".".join(t_parts[: len(t_parts) - common])
    s_prefix = ".".join(s_parts[: len(s_parts) - common])
    return (t_prefix + "." if t_prefix else "", s_prefix + "." if s_prefix else "")


def _detail_lines(entries: list[KeyPlan]) -> list[str]:
    return [
        f"{e.target} {list(e.target_shape)} ← {e.source} {list(e.source_shape or [])}: {e.detail}"
        for e in entries
    ]


def _missing_lines(entries: list[KeyPlan]) -> list[str]:
    plain = [e.target for e in entries if not e.detail]
    explained = [f"{e.target}: {e.detail}" for e in entries if e.detail]
    return group_keys(plain) + explained


def percent(fraction: float) -> str:
    """Rounded down, so "100.0%" means everything loaded."""
    return f"{math.floor(fraction * 1000) / 10:.1f}%"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
