"""The graft section of ``report.html``: how the pretrained weights entered the model.

From ``graft.json`` (a :class:`~torchgraft.grafting.graft_plan.GraftReport` document): coverage,
counts per action, the evidence that decided the pairings (with what each rung means and the
confidence it carries), notes and the verification, what was left new, then every key —
grouped by module so that a model of hundreds of keys stays readable:

* keys of one module that share their fate (same source module, action, evidence,
  confidence and detail) are one row: ``blocks.0.0.bn1.{bias, running_mean, …}``;
* rows are folded (``<details>``) per top-level block (``conv_stem``, ``blocks.3``,
  ``classifier``), opened where something deserves a look (a new, skipped, adapted or
  reshaped key, or a pairing below full confidence);
* at most :data:`MAX_ROWS` rows in all, and a line saying how many more graft.json lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .files import RunFiles, as_list, as_map
from .html import Html, Section, details, esc, items, join, note, table

__all__ = ["MAX_ROWS", "MEANING", "WORDS", "graft_section"]

MAX_ROWS = 1500
_MAX_LISTED = 40

#: What each rung of the evidence ladder means (grafting.correspondence.EVIDENCE holds the
#: confidences; docs/grafting.md explains them at length).
MEANING = {
    "name": "equal names (after wrapper prefixes such as module. or model.)",
    "rules": "the rename rules given",
    "plan": "the plan given",
    "stored-order": "strategy 'order': the stored order, vouched for by the caller",
    "unique": "the only tensor of its shape on both sides at this level",
    "role": "same-shaped tensors told apart by role (weight / bias)",
    "name-words": "same-shaped modules told apart by a word of their names (ln_pre, norm_pre)",
    "counter": "an integer counter following its module",
    "order": "numbered names on both sides, in the source's registration order",
    "index-order": "a ModuleList's or Sequential's indices (their order is registration order)",
    "architecture": "settled by running the source architecture side by side",
    "bn-statistics": "settled by the weights' own BatchNorm statistics",
    "numbered-names": "numbered names in a name-sorted source (their natural order)",
    "leftover": "different shapes, paired as the one plausible counterpart",
    "registration-order": "only the source's registration order tells them apart",
    "regrouped": "paired by group shapes against the order of same-shaped modules",
    "candidate": "a trial pairing only verification can settle",
}
WORDS = {
    "copy": "copied",
    "rename": "renamed",
    "reshape": "reshaped",
    "adapt": "adapted",
    "skip-shape": "skipped (shape)",
    "missing": "new (no source)",
    "unexpected": "unused source keys",
}
_PLAIN = ("copy", "rename")


def graft_section(files: RunFiles) -> Section:
    """The section (see the module docstring); says so when the run had no graft."""
    graft = files.graft
    if graft is None:
        if files.problems.get("graft.json") == "not found":
            text = (
                "No graft: the run started from random weights (weights.source: null), or "
                "was resumed from a run that had none."
                if not files.section("weights", "source")
                else "graft.json not found: the graft of this run was not recorded."
            )
        else:
            text = f"graft.json {files.problems.get('graft.json', 'cannot be read')}."
        return Section("graft", "The graft", note(text))
    entries = [e for e in as_list(graft.get("entries")) if isinstance(e, Mapping)]
    parts = [_summary(graft), _evidence(graft, entries), _left_new(graft, entries)]
    parts.append(Html("<h3>Every key, by module</h3>"))
    parts.append(_by_module(entries))
    return Section("graft", "The graft", join(parts))


def _summary(graft: Mapping[str, Any]) -> Html:
    from ...grafting.graft_plan import percent

    coverage = graft.get("coverage")
    share = percent(coverage) if isinstance(coverage, (int, float)) else "?"
    counts = as_map(graft.get("counts"))
    done = " · ".join(f"{WORDS.get(k, k)} {v}" for k, v in counts.items() if v)
    container = f", {graft['container']}" if graft.get("container") else ""
    lines = [
        f"source: {graft.get('source', '?')} [{graft.get('source_format', '?')}{container}]",
        f"strategy: {graft.get('strategy', '?')}",
        f"coverage: {share} of the model's parameter elements loaded · {done}",
    ]
    lines += [f"note: {n}" for n in as_list(graft.get("notes"))[:_MAX_LISTED]]
    body = [items(lines)]
    check = graft.get("verification")
    if isinstance(check, Mapping) and check:
        ok = check.get("ok") is True
        # outputs when both models have the same head, else the features entering it
        compared = "outputs" if check.get("output_rel_diff") is not None else "features"
        worst = check.get("output_rel_diff" if compared == "outputs" else "feature_rel_diff")
        text = (
            f"verification against {check.get('source', '?')}: "
            f"{'passed' if ok else 'FAILED'} ({compared} differ by {_sci(worst)} relative, "
            f"tolerance {_sci(check.get('tolerance'))})"
        )
        body.append(note(text, "note" if ok else "warn"))
    return join(body)


def _evidence(graft: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> Html:
    counts = as_map(graft.get("evidence"))
    if not counts:
        return note("No key was loaded, so no evidence decided a pairing.")
    from ...grafting.correspondence import EVIDENCE

    rows = [
        (kind, count, f"{EVIDENCE[kind]:.2f}" if kind in EVIDENCE else "?", MEANING.get(kind, ""))
        for kind, count in counts.items()
    ]
    unsure = sum(1 for e in entries if _loads(e) and _confidence(e) < 1.0)
    body = [
        Html("<h3>Evidence that decided the pairings</h3>"),
        table(("evidence", "keys", "confidence", "what it means"), rows, numeric=(1, 2)),
    ]
    if unsure:
        body.append(note(f"{unsure} key(s) loaded on evidence below full confidence.", "warn"))
    return join(body)


def _left_new(graft: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> Html:
    from ...grafting.graft_plan import group_keys

    new = [str(e.get("target")) for e in entries if not _loads(e)]
    unused = [str(k) for k in as_list(graft.get("unexpected"))]
    body = []
    if new:
        lines = group_keys(new)
        body.append(Html("<h3>Left new (initialised, not loaded)</h3>"))
        body.append(items(_capped(lines)))
    if unused:
        lines = group_keys(unused)
        body.append(Html("<h3>Source keys nothing used</h3>"))
        body.append(items(_capped(lines)))
    return join(body)


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LISTED:
        return lines
    return [*lines[:_MAX_LISTED], f"… {len(lines) - _MAX_LISTED} more (graft.json lists all)"]


def _by_module(entries: Sequence[Mapping[str, Any]]) -> Html:
    """One fold per top-level block; inside, one row per module and shared fate."""
    blocks: dict[str, list[list[Mapping[str, Any]]]] = {}
    index: dict[tuple, list[Mapping[str, Any]]] = {}
    for entry in entries:
        target = str(entry.get("target", ""))
        module, _, _ = target.rpartition(".")
        source_module = str(entry.get("source") or "").rpartition(".")[0]
        fate = (
            module,
            source_module,
            str(entry.get("action")),
            str(entry.get("evidence") or ""),
            _confidence(entry),
            str(entry.get("detail") or ""),
        )
        if fate not in index:
            index[fate] = []
            blocks.setdefault(_block(target), []).append(index[fate])
        index[fate].append(entry)
    headers = ("target", "source", "action", "evidence", "shape", "detail")
    folds, shown = [], 0
    for block, groups in blocks.items():
        room = MAX_ROWS - shown
        if room <= 0:
            left = sum(len(g) for b in list(blocks.values())[len(folds) :] for g in b)
            folds.append(note(f"… {left:,} more keys not shown (graft.json lists every key)."))
            break
        rows = [_row(group) for group in groups]
        shown += min(len(rows), room)
        keys = sum(len(g) for g in groups)
        actions: dict[str, int] = {}
        for group in groups:
            for entry in group:
                word = WORDS.get(str(entry.get("action")), str(entry.get("action")))
                actions[word] = actions.get(word, 0) + 1
        summary = f"{block or '(top level)'} — {keys} key(s): " + ", ".join(
            f"{word} {n}" for word, n in actions.items()
        )
        notable = any(_notable(e) for g in groups for e in g)
        folds.append(details(summary, table(headers, rows, limit=room, more="rows"), open_=notable))
    return join(folds)


def _block(target: str) -> str:
    """The fold a key belongs to: its first name, with the index of a numbered container
    that holds modules (``blocks.3`` of ``blocks.3.1.conv.weight``, but ``stem`` of
    ``stem.0.weight``); top-level tensors share one fold."""
    parts = target.split(".")
    if len(parts) == 1:
        return ""
    return ".".join(parts[:2]) if len(parts) >= 4 and parts[1].isdigit() else parts[0]


def _row(group: Sequence[Mapping[str, Any]]) -> tuple:
    first = group[0]
    roles = [str(e.get("target", "")).rpartition(".")[2] for e in group]
    module = str(first.get("target", "")).rpartition(".")[0]
    target = _braced(module, roles)
    source = "—"
    if first.get("source"):
        source_roles = [str(e.get("source", "")).rpartition(".")[2] for e in group]
        source = _braced(str(first["source"]).rpartition(".")[0], source_roles)
    evidence = str(first.get("evidence") or "")
    confidence = _confidence(first)
    if evidence and confidence < 1.0:
        evidence += f" ({confidence:.2f})"
    action = str(first.get("action", "?"))
    cell = Html(f'<span class="{"flag" if _notable(first) else "plain"}">{esc(action)}</span>')
    return (target, source, cell, evidence, _shapes(group), first.get("detail") or "")


def _braced(module: str, roles: list[str]) -> str:
    names = roles[0] if len(roles) == 1 else "{" + ", ".join(roles) + "}"
    return f"{module}.{names}" if module else names


def _shapes(group: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for entry in group[:8]:
        role = str(entry.get("target", "")).rpartition(".")[2]
        target, source = _shape(entry.get("target_shape")), _shape(entry.get("source_shape"))
        if source and source != target:
            parts.append(f"{role} {target} ← {source}")
        else:
            parts.append(f"{role} {target}")
    return " · ".join(parts) + (" …" if len(group) > 8 else "")


def _shape(value: Any) -> str:
    if not isinstance(value, list):
        return ""
    return "×".join(str(v) for v in value) if value else "scalar"


def _loads(entry: Mapping[str, Any]) -> bool:
    return entry.get("action") in ("copy", "rename", "reshape", "adapt")


def _confidence(entry: Mapping[str, Any]) -> float:
    value = entry.get("confidence", 1.0)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _notable(entry: Mapping[str, Any]) -> bool:
    return entry.get("action") not in _PLAIN or _confidence(entry) < 1.0


def _sci(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) else "?"
