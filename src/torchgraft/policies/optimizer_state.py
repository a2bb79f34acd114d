"""Optimizer state saved and restored by parameter name, not by position.

``optimizer.state_dict()`` numbers parameters by their position in the groups, so a resume
after unfreezing (new groups, more parameters) fails with "loaded state dict contains a
parameter group that doesn't match". The groups torchgraft builds carry ``param_names``; the
state is keyed by those names here, and loading tolerates groups and parameters that
appeared or disappeared since (new ones start with empty state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..wording import listing
from .optimizer_groups import _preview

__all__ = ["STATE_FORMAT", "StateLoad", "load_optimizer_state_by_name", "optimizer_state_by_name"]


#: Marks documents written by :func:`optimizer_state_by_name`.
STATE_FORMAT = "torchgraft.optimizer-state-by-name/1"


def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, and its groups' settings by group name.

    Unlike ``optimizer.state_dict()``, which numbers parameters by position, this survives
    groups being added, split or reordered (as after unfreezing). Tensors are the optimizer's
    own (like ``state_dict()``): save the result right away (``torch.save``; it loads with
    ``weights_only=True``) or ``copy.deepcopy`` it.

    Returns:
        ``{"format", "state": {param_name: {key: value}}, "groups": {group_name: settings}}``.

    Raises:
        ConfigError: a group without ``param_names`` (build groups with :func:`param_groups`
            or pass ``model.named_parameters()`` to the optimizer).
    """
    state: dict[str, dict[str, Any]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for index, group in enumerate(optimizer.param_groups):
        names = _names_of(group, index)
        for name, param in zip(names, group["params"], strict=True):
            if param in optimizer.state:
                state[name] = dict(optimizer.state[param])
        settings[_group_name(group, index)] = {
            k: v for k, v in group.items() if k not in ("params", "param_names")
        }
    return {"format": STATE_FORMAT, "state": state, "groups": settings}


@dataclass(frozen=True, repr=False)
class StateLoad:
    """What :func:`load_optimizer_state_by_name` did.

    Attributes:
        restored: parameter names whose state was restored.
        fresh: parameter names in the optimizer with no saved state (they start empty).
        unused: saved parameter names the optimizer does not hold.
        groups: group names whose settings (lr, weight decay, …) were restored.
    """

    restored: tuple[str, ...]
    fresh: tuple[str, ...]
    unused: tuple[str, ...]
    groups: tuple[str, ...]

    def __repr__(self) -> str:
        fresh = f" ({listing(self.fresh)})" if self.fresh else ""
        return (
            f"<StateLoad {len(self.restored)} restored, {len(self.fresh)} fresh{fresh}, "
            f"{len(self.unused)} unused; settings of {len(self.groups)} groups>"
        )


def load_optimizer_state_by_name(
    optimizer: torch.optim.Optimizer,
    saved: Mapping[str, Any],
    *,
    settings: bool = True,
    strict: bool = False,
) -> StateLoad:
    """Load state written by :func:`optimizer_state_by_name`, matching parameters by name.

    Parameters that appeared since (newly unfrozen) start with empty state; saved state of
    parameters the optimizer no longer holds is ignored. Tensors are copied to each
    parameter's device (floating state also to its dtype), never shared with ``saved``.

    Args:
        optimizer: the optimizer to fill, built with named groups.
        saved: the saved document.
        settings: also restore each group's settings (lr, initial_lr, weight decay, …) from
            the saved group of the same name.
        strict: raise unless every parameter and every saved entry matched.

    Returns:
        A :class:`StateLoad`.

    Raises:
        ConfigError: not such a document, a group without ``param_names``, or (``strict``)
            a mismatch.

    Example:
        >>> state = tg.optimizer_state_by_name(opt)          # head-only phase
        >>> opt = torch.optim.SGD(tg.param_groups(model, lr=1e-2), momentum=0.9)
        >>> tg.load_optimizer_state_by_name(opt, state).fresh  # the newly unfrozen names
    """
    if not (
        isinstance(saved, Mapping)
        and saved.get("format") == STATE_FORMAT
        and isinstance(saved.get("state"), Mapping)
        and isinstance(saved.get("groups"), Mapping)
    ):
        raise ConfigError("not optimizer state written by torchgraft.optimizer_state_by_name")
    restored, fresh, restored_groups = [], [], []
    for index, group in enumerate(optimizer.param_groups):
        for name, param in zip(_names_of(group, index), group["params"], strict=True):
            if name in saved["state"]:
                entry = _checked_state(name, saved["state"][name], param)
                optimizer.state[param] = {k: _state_value(k, v, param) for k, v in entry.items()}
                restored.append(name)
            else:
                optimizer.state.pop(param, None)
                fresh.append(name)
        label = _group_name(group, index)
        if settings and label in saved["groups"]:
            group.update(_checked_settings(label, saved["groups"][label], group))
            restored_groups.append(label)
    unused = sorted(set(saved["state"]) - set(restored))
    if strict and (fresh or unused):
        raise ConfigError(
            f"optimizer state does not match by name: no saved state for {_preview(fresh)}; "
            f"saved state unused for {_preview(unused)}"
        )
    return StateLoad(tuple(restored), tuple(fresh), tuple(unused), tuple(restored_groups))


def _checked_state(name: str, entry: Any, param: torch.Tensor) -> Mapping[str, Any]:
    """A parameter's saved state, as an optimizer keeps it: named tensors and numbers, its
    floating buffers (momentum, Adam's moments) of the parameter's shape."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"optimizer state of {name!r} is a {type(entry).__name__}, not a map")
    for key, value in entry.items():
        plain = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(key, str) or not (isinstance(value, torch.Tensor) or plain):
            raise ConfigError(f"optimizer state of {name!r} holds {key!r} of the wrong type")
        buffer = isinstance(value, torch.Tensor) and value.is_floating_point() and key != "step"
        if buffer and value.shape != param.shape:
            raise ConfigError(
                f"optimizer state {name}.{key} has shape {list(value.shape)}, the parameter "
                f"{list(param.shape)}"
            )
    return entry


def _checked_settings(label: str, saved: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    """The saved settings of a group that the group has, each of the kind it has (a number
    for a number, a pair for betas …); a saved setting the group does not have is ignored
    (a file cannot add options to the optimizer)."""
    if not isinstance(saved, Mapping):
        raise ConfigError(f"optimizer settings of group {label!r} are not a map")
    kept = {}
    for key, value in saved.items():
        if key in ("params", "param_names", "name") or key not in group:
            continue
        if _kind(value) != _kind(group[key]):
            raise ConfigError(
                f"optimizer setting {label}.{key} is {value!r:.60}, not of the kind "
                f"{group[key]!r:.60} is"
            )
        kept[key] = tuple(value) if isinstance(group[key], tuple) else value
    return kept


def _kind(value: Any) -> tuple:
    """What a setting is, for comparing a saved one with the live one: bool, number, None,
    text, or a sequence of a length of such (a tensor LR counts as a number)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__,)
    if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return ("number",)
    if isinstance(value, (list, tuple)):
        return ("sequence", len(value), *(_kind(item) for item in value))
    return (type(value).__name__,)


def _state_value(key: str, value: Any, param: torch.Tensor) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if key == "step" or not value.is_floating_point():
        # torch keeps Adam's step as float32 on the CPU unless fused/capturable: leave it.
        return value.clone()
    return value.to(device=param.device, dtype=param.dtype, copy=True)


def _names_of(group: Mapping[str, Any], index: int) -> list[str]:
    names = group.get("param_names")
    if names is None or len(names) != len(group["params"]):
        raise ConfigError(
            f"optimizer group {_group_name(group, index)!r} carries no param_names; build the "
            "optimizer from torchgraft.param_groups(...) or model.named_parameters()"
        )
    return list(names)


def _group_name(group: Mapping[str, Any], index: int) -> str:
    return str(group.get("name", f"#{index}"))
