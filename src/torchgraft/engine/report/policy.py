"""The freeze summary and the optimizer's parameter groups of each stage, from policy.json;
the adapters (method, layers, merge check) from adapters.safetensors.json when the run had them.

One block per unfreezing stage (the epoch it began): what trains (the policy, the BatchNorm
policy, trainable and frozen counts per layer group, norm layers with fixed statistics) and
the optimizer's groups (LR, weight decay, tensors, elements, the first parameter names).
Tables are capped at :data:`MAX_GROUP_ROWS` rows (layer-wise decay can make hundreds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .files import RunFiles, as_list, as_map
from .html import Html, Section, esc, join, note, table

__all__ = ["MAX_GROUP_ROWS", "policy_section"]

MAX_GROUP_ROWS = 200
_MAX_NAMES = 6


def policy_section(files: RunFiles) -> Section:
    """Per unfreezing stage: what trains (freeze summary) and the optimizer's groups."""
    if not files.policies:
        why = files.problems.get("policy.json", "not found")
        body = note(f"no freeze summary yet: policy.json {why}.")
        return Section("policy", "Freezing and parameter groups", body)
    parts = [_adapters(as_map(files.adapters))] if files.adapters is not None else []
    for stage in files.policies:
        if isinstance(stage, Mapping):
            parts.append(_stage(stage))
    return Section("policy", "Freezing and parameter groups", join(parts))


def _adapters(record: Mapping[str, Any]) -> Html:
    """The adapters: method, rank, alpha, their layers, and the merge check of the saved model."""
    adapters, merge = as_map(record.get("adapters")), as_map(record.get("merge"))
    targets = [str(t) for t in as_list(adapters.get("targets"))]
    method = {"lora": "LoRA", "dora": "DoRA"}.get(str(adapters.get("method")), "?")
    title = (
        f"{method} adapters, rank {adapters.get('rank', '?')}, alpha {adapters.get('alpha', '?')}, "
        f"dropout {adapters.get('dropout', '?')}, on {len(targets)} layers: they and the head "
        "train, every other weight is frozen"
    )
    listed = ", ".join(targets[:30]) + (
        f", … {len(targets) - 30} more" if len(targets) > 30 else ""
    )
    parts: list[object] = [Html(f"<h3>{esc(title)}</h3>"), note(f"adapted layers: {listed}")]
    difference, tolerance = merge.get("difference"), merge.get("tolerance")
    if _number(difference) and _number(tolerance):
        parts.append(
            note(
                f"model.safetensors holds the adapters merged into plain weights: its outputs "
                f"differ from the adapted model's by {difference:.2e} relative on a probe batch "
                f"(tolerance {tolerance:.0e}); adapters.safetensors holds them alone"
            )
        )
    return join(parts)


def _stage(stage: Mapping[str, Any]) -> Html:
    freeze = as_map(stage.get("freeze"))
    epoch = stage.get("epoch")
    total, trainable = freeze.get("total"), freeze.get("trainable")
    share = f" ({trainable / total:.2%})" if _number(total) and total and _number(trainable) else ""
    title = (
        f"From epoch {epoch + 1 if isinstance(epoch, int) else '?'}: freeze "
        f"'{freeze.get('policy', '?')}', BatchNorm '{freeze.get('bn', '?')}' — "
        f"{_count(trainable)} of {_count(total)} parameters train{share}"
    )
    parts: list[object] = [Html(f"<h3>{esc(title)}</h3>")]
    layer_rows = [
        (
            g.get("name", ""),
            _count(g.get("trainable")),
            _count(g.get("frozen")),
            g.get("fixed_norms", ""),
        )
        for g in as_list(freeze.get("groups"))
        if isinstance(g, Mapping)
    ]
    if layer_rows:
        parts.append(
            table(
                ("layer group", "trainable", "frozen", "fixed norm layers"),
                layer_rows,
                limit=MAX_GROUP_ROWS,
                more="groups",
                numeric=(1, 2, 3),
            )
        )
    fixed = [str(n) for n in as_list(freeze.get("fixed_norms"))]
    if fixed:
        listed = ", ".join(fixed[:20]) + (f", … {len(fixed) - 20} more" if len(fixed) > 20 else "")
        parts.append(note(f"norm layers with fixed statistics ({len(fixed)}): {listed}"))
    groups = as_map(stage.get("groups"))
    group_rows = [_group_row(g) for g in as_list(groups.get("groups")) if isinstance(g, Mapping)]
    if group_rows:
        parts.append(
            table(
                ("optimizer group", "LR", "weight decay", "tensors", "elements", "parameters"),
                group_rows,
                limit=MAX_GROUP_ROWS,
                more="groups",
                numeric=(1, 2, 3, 4),
            )
        )
    for warning in as_list(groups.get("warnings")):
        parts.append(note(f"warning: {warning}", "warn"))
    return join(parts)


def _group_row(group: Mapping[str, Any]) -> tuple:
    names = [str(n) for n in as_list(group.get("names"))]
    tensors = group.get("tensors")
    listed = ", ".join(names[:_MAX_NAMES])
    if (isinstance(tensors, int) and tensors > len(names[:_MAX_NAMES])) or len(names) > _MAX_NAMES:
        listed += " …"
    lr, decay = group.get("lr"), group.get("weight_decay")
    return (
        group.get("name", ""),
        f"{lr:.3g}" if _number(lr) else "–",
        f"{decay:.3g}" if _number(decay) else "–",
        _count(tensors),
        _count(group.get("elements")),
        listed,
    )


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
