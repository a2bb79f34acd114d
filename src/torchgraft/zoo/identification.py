"""What :func:`torchgraft.zoo.identify.identify` reports: candidates and the verdict.

Plain frozen dataclasses with their one-line rendering (for ``torchgraft inspect``) and a
JSON-ready form. Specs come from the libraries' registries; the only text that comes from the
checkpoint is ``key_note`` (a key name), which printers must escape like any file data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Candidate", "Identification"]


@dataclass(frozen=True)
class Candidate:
    """One architecture compared with the checkpoint.

    Attributes:
        spec: ``library:name``. variant: how it was built when not the default
            (``"aux_logits=False"``), else "".
        keys_total: tensors in the architecture's state_dict.
        keys_matched: checkpoint keys the architecture has.
        shapes_matched: of those, keys whose shapes agree too.
        shapes_shared: checkpoint tensors whose shape the architecture has too, names ignored
            (multiset overlap).
        names_match: the key names are the architecture's (counters aside).
        exact: the body is the architecture's, keys and shapes (see ``head``).
        head: for an exact candidate, ``"same"``, ``"different"`` or ``"absent"``; else None.
        num_classes: for an exact candidate, the classes of the checkpoint's classifier
            (None when it has none or the architecture declares none); else None.
        score: ``shapes_shared / max(checkpoint tensors, keys_total)``.
    """

    spec: str
    variant: str
    keys_total: int
    keys_matched: int
    shapes_matched: int
    shapes_shared: int
    names_match: bool
    exact: bool
    head: str | None
    num_classes: int | None
    score: float

    def describe(self) -> str:
        """``timm:resnet50d (300/320 keys and shapes, 310 shapes shared)``."""
        return (
            f"{self.label} ({self.shapes_matched}/{self.keys_total} keys and shapes, "
            f"{self.shapes_shared} shapes shared)"
        )

    @property
    def label(self) -> str:
        """The spec, with the variant in parentheses when there is one."""
        return f"{self.spec} ({self.variant})" if self.variant else self.spec


@dataclass(frozen=True)
class Identification:
    """What :func:`identify` found.

    Attributes:
        exact_all: every spec that is exactly the checkpoint's architecture (see
            :class:`Candidate` ``exact``); several when builders share a table.
        candidates: best first; the exact ones when there are any, else the nearest.
        head: ``"same"``, ``"different"`` or ``"absent"`` for an exact identification.
        num_classes: the checkpoint classifier's classes, when identified.
        same_shapes: specs whose shapes equal the checkpoint's while names differ.
        keys: tensors in the checkpoint.
        key_note: how keys were read, e.g. ``"read 'module.fc.weight' as 'fc.weight'"``.
        libraries: the libraries searched. unindexed: their architectures that could not be
            built on ``meta`` (and so cannot be recognised).
        same_function: for several exact builders, whether they compute the same outputs
            with the checkpoint's weights (:mod:`.equal_tables`); None: not compared.
        difference: the largest relative difference found between them, when compared.
        comparison: one line on that comparison (or why it was not made); "" when none.
    """

    exact_all: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    head: str | None
    num_classes: int | None
    same_shapes: tuple[str, ...]
    keys: int
    key_note: str
    libraries: tuple[str, ...]
    unindexed: int
    same_function: bool | None = None
    difference: float | None = None
    comparison: str = ""

    @property
    def exact(self) -> str | None:
        """The one exact spec — the first of several that share the table and were run and
        found to compute the same — or None (none, or several not known to agree)."""
        one = len(self.exact_all) == 1 or (self.exact_all and self.same_function)
        return self.exact_all[0] if one else None

    @property
    def head_differs(self) -> bool:
        """True when the body is exactly identified but the classifier is not the default one."""
        return self.head in ("different", "absent")

    def summary(self) -> str:
        """One line: ``torchvision:resnet50 — 320/320 keys and shapes``, or the nearest.

        It quotes ``key_note`` (a key from the file): escape it before printing.
        """
        text = self._verdict()
        return f"{text} ({self.key_note})" if self.key_note else text

    def _verdict(self) -> str:
        if self.exact_all:
            best = self.candidates[0]
            names = ", ".join(c.label for c in self.candidates if c.exact)
            counts = f"{best.shapes_matched}/{best.keys_total} keys and shapes"
            if len(self.exact_all) == 1:
                text = f"{names} — {counts}"
            elif self.same_function:
                text = f"{names} (equal tables, and {self.comparison}) — {counts}"
            elif self.same_function is False:
                text = (
                    f"one of {names} (equal tables, but {self.comparison}: not guessed) — {counts}"
                )
            else:
                why = f"; {self.comparison}" if self.comparison else ""
                text = (
                    f"one of {names} (equal tables; their outputs can still differ: verify "
                    f"side by side{why}) — {counts}"
                )
            if self.head == "different":
                text += f"; head differs ({self.num_classes} classes)"
            elif self.head == "absent":
                text += "; no classifier"
            return text
        if self.same_shapes:
            text = "not identified by name; same shapes as " + ", ".join(self.same_shapes)
        elif not self.candidates:
            text = "not identified; no indexed architecture is close"
        else:
            text = "not identified; nearest: " + ", ".join(
                c.describe() for c in self.candidates[:3]
            )
        if self.unindexed:  # a miss may be one of the architectures that could not be built
            text += f"; {self.unindexed} architectures could not be indexed"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``exact`` and ``summary`` included)."""
        return {
            "exact": self.exact,
            **asdict(self),
            "candidates": [asdict(c) for c in self.candidates],
            "summary": self.summary(),
        }
