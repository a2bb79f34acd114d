"""Adapters as data: their tensors and their record out of a model, and back into a plain one.

What is saved of an adapted model is what training changed: each adapter's tensors (LoRA's
A and B, DoRA's magnitudes) and the head's tensors — named as the adapted model's
state_dict names them (``blocks.0.attn.qkv.lora_A.default.weight``, ``head.weight``) — and a
record of plain data: method, rank, alpha, dropout, the exact target paths, the peft
version. :func:`load_adapters` re-creates the same adapters on a freshly built model of the
same architecture (pretrained base weights loaded as usual) and copies the tensors in,
bitwise. The record selects no code: it is checked by type and range
(:class:`~.settings.AdapterSettings`), and its targets are module paths matched literally.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from ..model.anatomy import spec_of
from ..model.spec import ModelSpec
from .inject import RECORD_ATTRIBUTE, adapt, recorded_summary
from .peft_layers import adapter_tensor_names, unload
from .selection import exact_targets
from .settings import AdapterSettings
from .summary import AdapterSummary

__all__ = [
    "MAX_TARGETS",
    "adapter_config",
    "adapter_state_dict",
    "check_record",
    "load_adapters",
    "plain_names",
    "recreate_adapters",
]

#: More target paths than any vision model has layers: a record with more is not ours.
MAX_TARGETS = 100_000
_MAX_NAME = 1_000
RECORD_FIELDS = ("method", "rank", "alpha", "dropout", "targets", "peft_version")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors and the head's, by their state_dict names, in state_dict order.

    The tensors are the model's own (detached, sharing storage, as ``state_dict`` gives them):
    save or clone them before training on.

    Raises:
        AdapterError: the model has no adapters added by torchgraft.
    """
    summary = recorded_summary(model)
    keys = set(adapter_tensor_names(model))
    heads = tuple(f"{h}." for h in summary.head_paths)
    return {k: v for k, v in model.state_dict().items() if k in keys or k.startswith(heads)}


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """The record that re-creates the model's adapters: plain, JSON-ready data.

    Returns:
        ``{"method", "rank", "alpha", "dropout", "targets": [exact module paths],
        "peft_version"}``.

    Raises:
        AdapterError: the model has no adapters added by torchgraft.
    """
    summary = recorded_summary(model)
    return {
        **summary.settings.to_dict(),
        "targets": summary.target_names,
        "peft_version": summary.peft_version,
    }


def load_adapters(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    spec: ModelSpec | None = None,
) -> AdapterSummary:
    """Re-create the adapters ``config`` records on ``model`` and load ``state`` into them.

    ``model`` is a plain model of the architecture the adapters were trained on (built the
    same way, base weights loaded); afterwards it computes what the saved adapted model
    computed, bitwise in its tensors, and trains as :func:`torchgraft.add_adapters` leaves it.

    Args:
        model: the plain model (no adapters yet).
        state: :func:`adapter_state_dict` of the adapted model (or as read back from a file).
        config: :func:`adapter_config` of the adapted model (plain data, checked field by field).
        spec: the model's spec (default: :func:`torchgraft.spec_of`).

    Raises:
        AdapterError: a bad record; a target the model lacks; tensors missing, unexpected, or
            of another shape or dtype (all named at once). The model is left as it was.
    """
    settings, names = check_record(config)
    spec = spec or spec_of(model)
    targets = exact_targets(model, spec, names)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    summary = adapt(model, settings, targets, [], spec)
    try:
        expected = adapter_state_dict(model)
        _check_tensors(state, expected)
        with torch.no_grad():
            for key, tensor in expected.items():
                tensor.copy_(state[key])  # the model's own storage: written in place
    except BaseException:
        unload(model)
        vars(model).pop(RECORD_ATTRIBUTE, None)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])
        raise
    return summary


def recreate_adapters(
    model: nn.Module, config: Mapping[str, Any], *, spec: ModelSpec | None = None
) -> AdapterSummary:
    """The adapters ``config`` records, fresh (each update at zero), on plain ``model``: the
    architecture of an adapted model, for its whole state_dict to be loaded into (a resumed
    run's state).

    Raises:
        AdapterError: a bad record, or a target the model lacks (the model unchanged).
    """
    settings, names = check_record(config)
    spec = spec or spec_of(model)
    return adapt(model, settings, exact_targets(model, spec, names), [], spec)


def plain_names(keys: Iterable[str], config: Mapping[str, Any]) -> dict[str, str | None]:
    """Each key of an adapted model's state_dict as the plain architecture names it, or None
    for an adapter's own tensor: ``qkv.base_layer.weight`` → ``qkv.weight``,
    ``qkv.lora_A.default.weight`` → None, every other key unchanged.

    Raises:
        AdapterError: a bad record.
    """
    _, targets = check_record(config)
    prefixes = sorted((f"{t}." for t in targets), key=len, reverse=True)
    names: dict[str, str | None] = {}
    for key in keys:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            names[key] = key
        elif key.startswith(f"{prefix}base_layer."):
            names[key] = prefix + key[len(prefix) + len("base_layer.") :]
        else:
            names[key] = None
    return names


def check_record(config: Any) -> tuple[AdapterSettings, list[str]]:
    """The settings and target paths of an adapter record, checked by type and range.

    Raises:
        AdapterError: not a mapping, an unknown field, a bad value (named).
    """
    if not isinstance(config, Mapping):
        raise AdapterError(f"an adapter record is a mapping, not a {type(config).__name__}")
    unknown = [str(k)[:40] for k in config if k not in RECORD_FIELDS]
    if unknown:
        raise AdapterError(
            f"the adapter record has unknown fields {unknown}; it has {list(RECORD_FIELDS)}"
        )
    settings = AdapterSettings.from_record(config)
    names = config.get("targets")
    if (
        not isinstance(names, list)
        or not 0 < len(names) <= MAX_TARGETS
        or not all(isinstance(n, str) and 0 < len(n) <= _MAX_NAME for n in names)
    ):
        raise AdapterError(
            "the adapter record's targets are a non-empty list of module paths (strings), "
            f"found {type(names).__name__} {str(names)[:80]}"
        )
    if len(set(names)) != len(names):
        raise AdapterError("the adapter record names a target twice")
    version = config.get("peft_version")
    if version is not None and not isinstance(version, str):
        raise AdapterError(
            f"the adapter record's peft_version is a string, not {type(version).__name__}"
        )
    return settings, names


def _check_tensors(state: Any, expected: Mapping[str, torch.Tensor]) -> None:
    """Every expected key present with its shape and dtype, nothing else; all problems at once."""
    if not isinstance(state, Mapping):
        raise AdapterError(
            f"adapter tensors are a mapping of name → tensor, not a {type(state).__name__}"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [str(k)[:120] for k in state if k not in expected]
    wrong = [
        f"{k}: {_describe(state[k])}, the model has {tuple(t.shape)} {t.dtype}"
        for k, t in expected.items()
        if k in state
        and not (
            isinstance(state[k], torch.Tensor)
            and state[k].shape == t.shape
            and state[k].dtype == t.dtype
        )
    ]
    problems = [
        f"{label} {items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mismatched", wrong),
        )
        if items
    ]
    if problems:
        raise AdapterError(
            "the adapter tensors do not fit this model: " + "; ".join(problems) + ". Were they "
            "saved from a model of this architecture with the same adapter record?"
        )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return f"a {type(value).__name__}"
