"""The plan file: a :class:`GraftPlan` written as an editable YAML document, read back to apply.

``torchgraft graft --plan-out PLAN.yaml`` writes it, a person edits the ``source`` of an
entry (or sets ``action: missing``), and ``--plan PLAN.yaml`` applies it. The document is
:meth:`GraftPlan.to_dict` under a two-line comment; the JSON that ``--json`` prints is the
same document, so it reads back too (YAML holds JSON).

Reading it back trusts nothing in it. The file comes through the bounded reader
(:mod:`torchgraft.checkpoint.documents`: size, nesting and alias expansion are capped
before anything is built), then every field is checked against :data:`ENTRY_FIELDS` and
:data:`PLAN_FIELDS`; the first field at fault is named with its place
(``plan.yaml: entries[3] (target 'fc.weight').source: …``), as is a key no plan has (a
typo such as ``sorce`` would otherwise leave the entry without a source, silently).

What an edit can change is the pairing alone: :func:`plan_from_file` takes each entry's
``target`` and ``source`` (none when its ``action`` loads nothing) and recomputes every action
from the shapes (:func:`.planner.plan_from_mapping`), so a hand edit cannot carry a stale
adaptation, a wrong shape or a confidence it did not earn. The other fields are there to be
read; they are checked only so that a damaged file is refused rather than half-used.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..atomic import atomic_write_text, landing
from ..checkpoint.documents import DEFAULT_LIMITS, DocumentLimits, read_yaml
from ..errors import GraftError
from ..text import printable
from .graft_plan import Action, GraftPlan, KeyPlan
from .planner import plan_from_mapping
from .source import Source, SourceWeights

__all__ = [
    "ENTRY_FIELDS",
    "HEADER",
    "PLAN_FIELDS",
    "pairings",
    "plan_from_file",
    "read_plan_file",
    "write_plan_file",
]

#: The comment a written plan starts with.
HEADER = (
    "# torchgraft graft plan: edit 'source' (or set action: missing) and apply with --plan.\n"
    "# Actions are recomputed from the shapes when the plan is applied.\n"
)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in value
    )


def _shape_or_none(value: Any) -> bool:
    return value is None or _shape(value)


def _mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(key, str) for key in value)


def _mapping_or_none(value: Any) -> bool:
    return value is None or _mapping(value)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _text_table(value: Any) -> bool:
    return _mapping(value) and all(isinstance(item, str) for item in value.values())


def _action(value: Any) -> bool:
    return isinstance(value, str) and value in {a.value for a in Action}


Check = tuple[str, Callable[[Any], bool]]

#: Each key an entry may hold: what its value must be (as a message says it), and the test.
ENTRY_FIELDS: dict[str, Check] = {
    "target": ("a key of the target (text)", _text),
    "source": ("a key of the source (text), or null for none", _text_or_none),
    "action": (f"one of {', '.join(a.value for a in Action)}", _action),
    "confidence": ("a number from 0 to 1", _fraction),
    "target_shape": ("a list of sizes (whole numbers >= 0)", _shape),
    "source_shape": ("a list of sizes (whole numbers >= 0), or null", _shape_or_none),
    "detail": ("text", _text_or_none),
    "adapt": ("a mapping with text keys, or null", _mapping_or_none),
    "evidence": ("text", _text_or_none),
}
#: An entry without these cannot be applied.
ENTRY_REQUIRED = ("target", "action")

#: Each key a plan document may hold (``entries`` is checked entry by entry). The last four
#: are what ``torchgraft graft --json`` adds to the plan or report it prints.
PLAN_FIELDS: dict[str, Check] = {
    "entries": ("a list of entries", lambda value: isinstance(value, list)),
    "strategy": ("text", _text),
    "source": ("text", _text),
    "source_format": ("text", _text),
    "container": ("text, or null", _text_or_none),
    "coverage": ("a number from 0 to 1", _fraction),
    "counts": ("a mapping with text keys", _mapping),
    "evidence": ("a mapping with text keys", _mapping),
    "notes": ("a list of texts", _texts),
    "set_aside": ("a mapping of texts to texts", _text_table),
    "unexpected": ("a list of texts", _texts),
    "verification": ("a mapping with text keys, or null", _mapping_or_none),
    "dry_run": ("true or false", lambda value: isinstance(value, bool)),
    "output": ("text, or null", _text_or_none),
    "would_write": ("text", _text),
}


def write_plan_file(plan: GraftPlan, path: str | os.PathLike) -> Path:
    """Write ``plan`` as an editable YAML plan file, atomically; its folder is created.

    A symbolic link at ``path`` is replaced, never written through (:func:`~torchgraft.atomic.landing`).

    Returns:
        The absolute path written.

    Raises:
        OutputError: ``path`` cannot be written (a folder, a device, a read-only place).

    Example:
        >>> write_plan_file(tg.plan_graft(model, "colleague.ckpt"), "plan.yaml")
        PosixPath('/home/me/plan.yaml')
    """
    path = landing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, HEADER + yaml.safe_dump(plan.to_dict(), sort_keys=False))
    return path


def read_plan_file(
    path: str | os.PathLike, *, limits: DocumentLimits = DEFAULT_LIMITS
) -> GraftPlan:
    """The plan in a plan file (YAML or JSON), every field checked.

    The entries come back as written (the actions are not recomputed here; see
    :func:`plan_from_file`). ``limits`` bound the document (size, nesting, aliases).

    Raises:
        GraftError: the file cannot be read, is over a bound, is not YAML, or a field is not
            what a plan holds; the message names the file and the field.
    """
    file = printable(str(path))
    document = read_yaml(path, GraftError, limits)
    if not isinstance(document, Mapping) or "entries" not in document:
        found = "an empty file" if document is None else f"a {_kind(document)}"
        raise GraftError(
            f"{file}: not a graft plan: expected a mapping with 'entries' (as --plan-out "
            f"writes it), found {found}"
        )
    _check_fields(document, PLAN_FIELDS, file, "", "a plan's")
    entries = [_entry(data, file, i) for i, data in enumerate(document["entries"])]
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.target in first:
            raise GraftError(
                f"{file}: entries[{index}].target: '{printable(entry.target)}' is also the "
                f"target of entries[{first[entry.target]}]; plan each target key once"
            )
        first[entry.target] = index
    return GraftPlan(
        entries=entries,
        unexpected=list(document.get("unexpected", [])),
        strategy=document.get("strategy", "plan"),
        source=document.get("source", ""),
        source_format=document.get("source_format", ""),
        container=document.get("container"),
        set_aside=dict(document.get("set_aside", {})),
        notes=list(document.get("notes", [])),
    )


def pairings(plan: GraftPlan) -> dict[str, str | None]:
    """``{target: source}`` for every entry; None where the entry's action loads nothing
    (an edit that sets ``action: missing`` keeps its ``source`` but loads nothing)."""
    return {e.target: e.source if e.action.loads else None for e in plan.entries}


def plan_from_file(
    model: nn.Module,
    source: Source | SourceWeights,
    path: str | os.PathLike,
    **plan_options: Any,
) -> GraftPlan:
    """The plan that applies the (edited) plan file ``path`` to ``model`` from ``source``.

    Only the pairings are taken from the file; the actions are recomputed from the shapes
    (:func:`.planner.plan_from_mapping`; ``plan_options`` such as ``in_chans_mode`` go there).

    Raises:
        GraftError: the file is not a plan (:func:`read_plan_file`), or names keys that the
            model or the source lacks; the message names the file.

    Example:
        >>> plan = plan_from_file(model, "colleague.ckpt", "plan.yaml")
        >>> report = tg.graft(model, "colleague.ckpt", plan=plan)
    """
    mapping = pairings(read_plan_file(path))
    try:
        return plan_from_mapping(model, source, mapping, **plan_options)
    except GraftError as exc:
        raise GraftError(f"{printable(str(path))}: {exc}") from None


def _entry(data: Any, file: str, index: int) -> KeyPlan:
    place = f"entries[{index}]"
    if not isinstance(data, Mapping):
        raise GraftError(
            f"{file}: {place}: expected a mapping with 'target', 'source' and 'action', "
            f"found a {_kind(data)}"
        )
    absent = [key for key in ENTRY_REQUIRED if key not in data]
    if absent:
        raise GraftError(
            f"{file}: {place}: no '{absent[0]}' ({ENTRY_FIELDS[absent[0]][0]}){_of(data)}"
        )
    _check_fields(data, ENTRY_FIELDS, file, place, "an entry's")
    source_shape = data.get("source_shape")
    return KeyPlan(
        target=data["target"],
        source=data.get("source"),
        action=Action(data["action"]),
        confidence=float(data.get("confidence", 1.0)),
        target_shape=tuple(data.get("target_shape") or ()),
        source_shape=tuple(source_shape) if source_shape is not None else None,
        detail=data.get("detail") or "",
        adapt=dict(data["adapt"]) if data.get("adapt") is not None else None,
        evidence=data.get("evidence") or "",
    )


def _check_fields(
    data: Mapping[Any, Any], fields: Mapping[str, Check], file: str, place: str, whose: str
) -> None:
    """Refuse a key ``fields`` does not list, or a value that fails its test, naming the
    file, the place (``entries[3]``) and the key."""
    for key, value in data.items():
        if key not in fields:
            raise GraftError(
                f"{file}: {place + ': ' if place else ''}unknown key '{printable(key)}' "
                f"({whose} keys: {', '.join(fields)}){_of(data)}"
            )
        expected, valid = fields[key]
        if not valid(value):
            raise GraftError(
                f"{file}: {place + '.' if place else ''}{key}: expected {expected}, found "
                f"{_shown(value)}{_of(data)}"
            )


def _of(entry: Mapping[Any, Any]) -> str:
    """Which entry, in the words of the file: its target, when it has one."""
    target = entry.get("target") if "entries" not in entry else None
    return f" (the entry of target '{printable(target)}')" if isinstance(target, str) else ""


def _shown(value: Any) -> str:
    text = printable(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "text"}.get(type(value), type(value).__name__)
