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
    if not isinstance(saved, Mapping) or saved.get("format") != STATE_FORMAT:
        raise ConfigError("not optimizer state written by torchgraft.optimizer_state_by_name")
    restored, fresh, restored_groups = [], [], []
    for index, group in enumerate(optimizer.param_groups):
        for name, param in zip(_names_of(group, index), group["params"], strict=True):
            if name in saved["state"]:
                optimizer.state[param] = {
                    k: _state_value(k, v, param) for k, v in saved["state"][name].items()
                }
                restored.append(name)
            else:
                optimizer.state.pop(param, None)
                fresh.append(name)
        label = _group_name(group, index)
        if settings and label in saved["groups"]:
            group.update({k: v for k, v in saved["groups"][label].items() if k != "name"})
            restored_groups.append(label)
    unused = sorted(set(saved["state"]) - set(restored))
    if strict and (fresh or unused):
        raise ConfigError(
            f"optimizer state does not match by name: no saved state for {_preview(fresh)}; "
            f"saved state unused for {_preview(unused)}"
        )
    return StateLoad(tuple(restored), tuple(fresh), tuple(unused), tuple(restored_groups))


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
