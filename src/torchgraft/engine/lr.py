"""The learning rate within an unfreezing stage: a multiplier of each group's stage LR, per step.

Shapes (``progress`` runs from 0 to 1 over the stage's steps after warmup):

* ``cosine``: 1 → ``min_lr_ratio`` along half a cosine;
* ``onecycle``: ``1/25`` → 1 over the first ``pct_start`` of the stage, then 1 →
  ``min_lr_ratio`` (cosine both ways; Leslie Smith's one-cycle as fastai uses it, without
  the momentum cycle);
* ``step``: multiplied by ``gamma`` every ``step_epochs`` epochs;
* ``constant``: 1.

``warmup_epochs`` prepends a linear warmup from 0 (for every shape but ``onecycle``, which
has its own). The scheduler is torch's ``LambdaLR``; it is rebuilt whenever an unfreezing
stage starts (its length is the stage's), and its base LRs follow the stage's LR
multipliers when a schedule changes them within a stage (``UnfreezeAt``'s growth).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["LrShape", "build_scheduler", "lr_multiplier", "rebase"]

#: Start (and end, for onecycle) of the one-cycle ramp as a fraction of the peak.
ONECYCLE_START = 1 / 25


class LrShape:
    """The multiplier of one stage: plain data, so a resumed run rebuilds the same one."""

    def __init__(
        self,
        name: str,
        total_steps: int,
        steps_per_epoch: int,
        *,
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        pct_start: float = 0.2,
        step_epochs: int = 30,
        gamma: float = 0.1,
    ):
        self.name, self.total = name, max(1, total_steps)
        self.per_epoch = max(1, steps_per_epoch)
        self.warmup = round(warmup_epochs * self.per_epoch) if name != "onecycle" else 0
        self.min_ratio, self.pct_start = min_lr_ratio, pct_start
        self.step_epochs, self.gamma = step_epochs, gamma

    def __call__(self, step: int) -> float:
        return lr_multiplier(self, step)


def lr_multiplier(shape: LrShape, step: int) -> float:
    """The LR multiplier at ``step`` (0-based) of the stage."""
    if step < shape.warmup:
        return (step + 1) / shape.warmup
    if shape.name == "constant":
        return 1.0
    if shape.name == "step":
        return shape.gamma ** (step // (shape.step_epochs * shape.per_epoch))
    span = max(1, shape.total - shape.warmup)
    progress = min(1.0, (step - shape.warmup) / span)
    if shape.name == "cosine":
        return _cosine(1.0, shape.min_ratio, progress)
    # onecycle
    if progress < shape.pct_start:
        return _cosine(ONECYCLE_START, 1.0, progress / shape.pct_start)
    return _cosine(1.0, shape.min_ratio, (progress - shape.pct_start) / (1 - shape.pct_start))


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def build_scheduler(
    optimizer: torch.optim.Optimizer, shape: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose base LRs are the groups' current LRs (``initial_lr`` reset)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)


def rebase(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Take the groups' LRs as new base LRs at the current step (a change of multipliers
    within a stage), and apply the current multiplier to them."""
    optimizer = scheduler.optimizer
    scheduler.base_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
