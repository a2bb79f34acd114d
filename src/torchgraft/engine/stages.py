"""What trains in each epoch, and the optimizer and LR schedule that go with it.

A run has *stages*: runs of epochs in which the same layer groups train. With an unfreezing
schedule (``freeze.schedule``) the schedule says which groups train at each epoch (and their
LR multipliers); with a fixed ``freeze.policy`` there is one stage for the whole run. At the
start of every epoch :meth:`Stages.enter` brings model and optimizer to the epoch's stage
(:func:`~torchgraft.policies.schedules.apply_stage`); when a new stage begins the per-step LR
scheduler is rebuilt over the stage's length, and when only the multipliers move within a
stage (``UnfreezeAt``'s growth) it is rebased on the new rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model.spec import ModelSpec
from ..policies.freezing import FreezeSummary, freeze
from ..policies.optimizer_groups import param_groups
from ..policies.schedules import SCHEDULES, Stage, UnfreezeSchedule, apply_stage, start_stage
from .config.load import RunConfig
from .lr import LrShape, build_scheduler, rebase

__all__ = ["Stages"]


@dataclass
class StageEntry:
    """What :meth:`Stages.enter` did at the start of an epoch."""

    new_stage: bool
    trainable: tuple[str, ...]
    summary: FreezeSummary | None
    added: tuple[str, ...] = ()


class Stages:
    """The run's stages over ``epochs`` epochs (see the module docstring)."""

    def __init__(self, config: RunConfig, model: nn.Module, spec: ModelSpec):
        self.config, self.model, self.spec = config, model, spec
        self.epochs = config.train.epochs
        self.schedule = _schedule(config)
        self._entered = False  # apply_stage ran in this process (a resumed run applies again)

    # --- which groups train when ---------------------------------------------------------
    def trainable(self, epoch: int) -> tuple[str, ...]:
        if self.schedule is None:
            return ("(policy)",)
        return self.schedule.plan(epoch, self.spec.group_names).trainable

    def stage_bounds(self, epoch: int) -> tuple[int, int]:
        """First and one-past-last epoch of the stage holding ``epoch``."""
        key = self.trainable(epoch)
        start = epoch
        while start > 0 and self.trainable(start - 1) == key:
            start -= 1
        end = epoch + 1
        while end < self.epochs and self.trainable(end) == key:
            end += 1
        return start, end

    # --- model and optimizer -------------------------------------------------------------
    def start(self, epoch: int) -> tuple[torch.optim.Optimizer, FreezeSummary | None]:
        """Freeze the model for ``epoch``'s stage; the optimizer over its parameter groups.

        The run's ``optim`` section is read here and nowhere else in a run: ``optim.lr``
        goes from this method into the groups (:func:`~torchgraft.param_groups` directly, or
        through the unfreezing schedule) and the optimizer, and does not come back.
        """
        if self.schedule is not None:
            groups = start_stage(self.schedule, self.model, epoch, spec=self.spec)
            return _optimizer(self.config, groups), None
        freeze_config = self.config.freeze
        summary = freeze(
            self.model,
            freeze_config.policy,
            bn=freeze_config.bn,
            include=freeze_config.include,
            exclude=freeze_config.exclude,
            spec=self.spec,
        )
        optim = self.config.optim
        groups = param_groups(
            self.model,
            optim.lr,
            backbone_lr=optim.backbone_lr,
            weight_decay=optim.weight_decay,
            layer_decay=optim.layer_decay,
            spec=self.spec,
        )
        return _optimizer(self.config, groups), summary

    def enter(self, optimizer: torch.optim.Optimizer, epoch: int) -> tuple[StageEntry, bool]:
        """Bring model and optimizer to ``epoch``'s stage.

        Returns:
            the entry, and whether the LR multipliers changed within the stage (rebase).
        """
        new_stage = epoch == 0 or self.trainable(epoch) != self.trainable(epoch - 1)
        if self.schedule is None:
            return StageEntry(new_stage, self.trainable(epoch), None), False
        groups = self.spec.group_names
        same = epoch > 0 and self.schedule.plan(epoch, groups).same_as(
            self.schedule.plan(epoch - 1, groups)
        )
        if same and self._entered:
            # Nothing to change (apply_stage is idempotent): skip its walk over the model.
            return StageEntry(False, self.trainable(epoch), None), False
        self._entered = True
        change = apply_stage(self.schedule, self.model, optimizer, epoch, spec=self.spec)
        entry = StageEntry(new_stage, change.stage.trainable, change.summary, change.added)
        return entry, change.changed and not new_stage

    def scheduler(self, optimizer: torch.optim.Optimizer, epoch: int, steps_per_epoch: int):
        """A fresh LR scheduler for the stage holding ``epoch`` (base LRs: the groups' now)."""
        start, end = self.stage_bounds(epoch)
        schedule = self.config.schedule
        shape = LrShape(
            schedule.name,
            (end - start) * steps_per_epoch,
            steps_per_epoch,
            warmup_epochs=schedule.warmup_epochs if start == 0 else 0.0,
            min_lr_ratio=schedule.min_lr_ratio,
            pct_start=schedule.pct_start,
            step_epochs=schedule.step_epochs,
            gamma=schedule.gamma,
        )
        return build_scheduler(optimizer, shape)

    @staticmethod
    def rebase(scheduler) -> None:
        rebase(scheduler)

    def describe(self, epoch: int) -> str:
        if self.schedule is None:
            return f"freeze {self.config.freeze.policy}"
        stage: Stage = self.schedule.plan(epoch, self.spec.group_names)
        if stage.trainable == ("head",):
            return "head only"
        if len(stage.trainable) == len(self.spec.group_names):
            return "all layers"
        return f"{len(stage.trainable)} of {len(self.spec.group_names)} groups"


def _optimizer(config: RunConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over named groups (each carries its LR and decay)."""
    optim = config.optim
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov and optim.momentum > 0,
            weight_decay=optim.weight_decay,
        )
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
    )


def _schedule(config: RunConfig) -> UnfreezeSchedule | None:
    chosen = config.freeze.schedule
    if chosen is None:
        return None
    fields = chosen.model_dump()
    kind = fields.pop("kind")
    return SCHEDULES[kind](
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        bn=config.freeze.bn,
        **fields,
    )
