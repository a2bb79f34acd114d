"""Writing a plan's values into a model: all of them, or none."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import GraftError
from .adapt import apply_adaptation
from .report import GraftPlan

__all__ = ["apply_plan"]


def apply_plan(model: nn.Module, plan: GraftPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write the plan's values into ``model``: all of them, or none if any fails.

    Every value is computed (and checked) before the first one is written.

    Raises:
        GraftError: a key the model or the source lacks, or an adaptation that does not fit.
    """
    state = model.state_dict()
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for entry in plan.entries:
        if not entry.action.loads:
            continue
        if entry.target not in state:
            raise GraftError(f"the plan names target key '{entry.target}', which the model lacks")
        if entry.source not in tensors:
            raise GraftError(f"the plan names source key '{entry.source}', which the source lacks")
        target = state[entry.target]
        value = apply_adaptation(tensors[entry.source], target, entry.adapt)
        if tuple(value.shape) != tuple(target.shape):
            raise GraftError(
                f"'{entry.source}' {list(value.shape)} cannot fill '{entry.target}' "
                f"{list(target.shape)} as the plan says ({entry.action.value})"
            )
        staged.append((target, value))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value)
