"""Read a run directory for its report: every file optional, none trusted to be well formed.

The report is built from these files only, so the page written during training and the one
``torchgraft report RUN_DIR`` writes later agree. A file that is missing (no ``graft.json``
when the run had no weights, no ``model.json`` before the first saved epoch) or damaged
(cut short, not JSON, the wrong shape) is recorded in :attr:`RunFiles.problems` with the
reason, and the section that needs it says so; reading never raises for one bad file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...checkpoint.documents import DocumentLimits, parse_json, parse_yaml, read_document_bytes

__all__ = ["RunFiles", "as_list", "as_map", "read_run"]

#: Larger files are not read (a run's own files are far smaller; this bounds a damaged one).
_MAX_BYTES = 256 * 2**20
#: metrics.jsonl holds a confusion matrix per epoch: larger than any other document.
_LIMITS = DocumentLimits(max_bytes=_MAX_BYTES)


@dataclass
class RunFiles:
    """What a run directory holds, as plain data.

    Attributes:
        path: the run directory.
        config: ``config.yaml`` as a mapping of sections.
        graft: ``graft.json`` (a GraftReport document), None when the run had no weights.
        rows: ``metrics.jsonl`` rows (one per epoch and split).
        policies: ``policy.json``: per unfreezing stage, the freeze summary and the groups.
        model: ``model.json``: the saved best model's record (classes, preprocessing, metrics).
        test: ``test_metrics.json``.
        adapters: ``adapters.safetensors.json``: the adapters' record and merge check (a run
            with ``peft``), None otherwise.
        bad: lines of ``bad_images.txt`` (files left out of the data).
        lr_trace: ``(step, {group: lr})`` per optimizer step, from the resume state.
        stage_steps: the steps where an unfreezing stage began (resume state).
        problems: file name → why it could not be used (absent when it was fine).
    """

    path: Path
    config: dict[str, Any] | None = None
    graft: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] | None = None
    model: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    adapters: dict[str, Any] | None = None
    bad: list[str] = field(default_factory=list)
    lr_trace: list[tuple[int, dict[str, float]]] | None = None
    stage_steps: list[int] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)

    def section(self, name: str, key: str, default: Any = None) -> Any:
        """``config[name][key]``, or ``default`` when either is missing."""
        part = (self.config or {}).get(name)
        return part.get(key, default) if isinstance(part, Mapping) else default

    @property
    def classes(self) -> list[str]:
        """The model's classes (model.json), else the per-class keys of a validation row."""
        if self.model and isinstance(self.model.get("classes"), list):
            return [str(c) for c in self.model["classes"]]
        for row in self.rows:
            if isinstance(row.get("per_class"), Mapping):
                return [str(c) for c in row["per_class"]]
        return []

    def val_rows(self) -> list[dict[str, Any]]:
        """Validation rows, one per epoch (a resumed epoch's later row wins), by epoch."""
        found = {
            row["epoch"]: row
            for row in self.rows
            if row.get("split") == "val" and type(row.get("epoch")) is int
        }
        return [found[e] for e in sorted(found)]

    def best_epoch(self) -> int | None:
        """The saved model's epoch (model.json), else the best by the configured monitor."""
        if self.model and type(self.model.get("epoch")) is int:
            return self.model["epoch"]
        key = "loss" if self.section("train", "monitor") == "val/loss" else "acc1"
        rows = [r for r in self.val_rows() if _finite(r.get(key))]
        if not rows:
            return None
        pick = min if key == "loss" else max
        return pick(rows, key=lambda r: r[key])["epoch"]


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def as_list(value: Any) -> list[Any]:
    """``value`` when a file holds a list there, else an empty list (a damaged document)."""
    return value if isinstance(value, list) else []


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` when a file holds a mapping there, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def read_run(path: str | Path, *, lr_trace: bool = True) -> RunFiles:
    """Everything the report shows, from ``path``'s files (see the module docstring).

    Args:
        path: the run directory.
        lr_trace: read the resume state for the per-step LRs (the only costly read).
    """
    files = RunFiles(Path(path))
    files.config = _read(files, "config.yaml", _yaml, Mapping)
    files.graft = _read(files, "graft.json", _json, Mapping)
    files.policies = _read(files, "policy.json", _json, list)
    files.model = _read(files, "model.json", _json, Mapping)
    files.test = _read(files, "test_metrics.json", _json, Mapping)
    files.adapters = _read(files, "adapters.safetensors.json", _json, Mapping)
    files.problems.pop("adapters.safetensors.json", None)  # only runs with adapters have it
    files.rows = _read(files, "metrics.jsonl", _json_lines, list) or []
    files.bad = (_read(files, "bad_images.txt", _text_lines, list) or [])[:10_000]
    files.problems.pop("bad_images.txt", None)  # absent is the usual case, not a problem
    files.problems.pop("test_metrics.json", None)  # only runs with a test split have it
    if lr_trace:
        _read_state(files)
    return files


def _read(files: RunFiles, name: str, parse, kind: type) -> Any:
    """One file of the run, parsed within the document bounds (:mod:`torchgraft.checkpoint.documents`:
    a regular file of at most ``_MAX_BYTES``, nesting and YAML aliases bounded); what stands
    in the way is noted in ``files.problems``, never raised."""
    target = files.path / name
    if not os.path.lexists(target):
        files.problems[name] = "not found"
        return None
    try:
        raw = read_document_bytes(target, _Unreadable, _LIMITS)
        value = parse(raw.decode("utf-8"), name)
    except _Unreadable as exc:
        reason = str(exc).removeprefix(f"{target}: ").removeprefix(f"{name}: ")
        files.problems[name] = f"cannot be read ({reason})"[:300]
        return None
    except ValueError as exc:  # Unicode errors
        files.problems[name] = f"cannot be read ({type(exc).__name__}: {exc})"[:300]
        return None
    if not isinstance(value, kind):
        files.problems[name] = f"holds a {type(value).__name__}, not a {kind.__name__}"
        return None
    return dict(value) if kind is Mapping else value


class _Unreadable(Exception):
    """A run file that cannot be read as a document (said in the report, not raised)."""


def _yaml(text: str, name: str) -> Any:
    return parse_yaml(text, name, _Unreadable, _LIMITS)


def _json(text: str, name: str) -> Any:
    return parse_json(text, name, _Unreadable, _LIMITS)


def _text_lines(text: str, name: str) -> list[str]:
    return text.splitlines()


def _json_lines(text: str, name: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        try:
            row = parse_json(line, name, _Unreadable, _LIMITS)
        except _Unreadable:
            continue  # one damaged line does not hide the others
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_state(files: RunFiles) -> None:
    """The per-step LR trace and stage starts, from the resume state (checked by sha256)."""
    from ...errors import CheckpointError
    from ..resume import load_state

    try:
        state = load_state(files.path)
    except CheckpointError as exc:
        files.problems["state/"] = str(exc)
        return
    try:
        files.lr_trace = [(int(step), dict(rates)) for step, rates in state.get("lr_trace", [])]
        files.stage_steps = [int(s) for s in state.get("stage_steps", [])]
    except (TypeError, ValueError) as exc:
        files.problems["state/"] = f"its LR trace cannot be read ({exc})"
