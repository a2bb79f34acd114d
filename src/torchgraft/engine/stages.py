"""What trains in each epoch, and the optimizer and LR schedule that go with it.

A run has *stages*: runs of epochs in which the same layer groups train. With an unfreezing
schedule (``freeze.schedule``) the schedule says which groups train at each epoch (and their
LR multipliers); with a fixed ``freeze.policy`` there is one stage for the whole run. At the
start of every epoch :meth:`Stages.enter` brings model and optimizer to the epoch's stage
(:func:`~torchgraft.policies.schedules.apply_stage`); when a new stage begins the per-step LR
scheduler is rebuilt over the stage's length, and when only the multipliers move within a
stage (``UnfreezeAt``'s growth) it is rebased on the new rates.

A run extended on resume (``--resume RUN --train.epochs N`` past its plan) has a stage
boundary where its old plan ended (:attr:`Stages.extended`, kept in the resume state): the
added epochs train what the schedule trains at them, from the schedule's learning rates
again, under a new LR cycle over them; the stage before keeps its cycle as it was.
:meth:`Stages.budget_note` says when ``train.epochs`` ends a run before its schedule trains
some layer groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model.spec import ModelSpec
from ..policies.freezing import FreezeSummary, freeze
from ..policies.optimizer_groups import param_groups
from ..policies.schedules import Stage, apply_stage, start_stage
from ..wording import listing, option
from .config.load import RunConfig
from .config.show import never_trained, run_schedule
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
        self.schedule = run_schedule(config)
        #: Epochs at which the run was extended on resume: each starts a new stage.
        self.extended: list[int] = []
        self._entered = False  # apply_stage ran in this process (a resumed run applies again)

    # --- which groups train when ---------------------------------------------------------
    def trainable(self, epoch: int) -> tuple[str, ...]:
        if self.schedule is None:
            return ("(policy)",)
        return self.schedule.plan(epoch, self.spec.group_names).trainable

    def starts_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` begins a stage: the first, one where what trains changes, or
        one at which the run was extended."""
        return (
            epoch == 0
            or epoch in self.extended
            or self.trainable(epoch) != self.trainable(epoch - 1)
        )

    def stage_bounds(self, epoch: int, *, epochs: int | None = None) -> tuple[int, int]:
        """First and one-past-last epoch of the stage holding ``epoch`` in a run of
        ``epochs`` (default: the run's ``train.epochs``)."""
        epochs = self.epochs if epochs is None else epochs
        start = epoch
        while not self.starts_stage(start):
            start -= 1
        end = epoch + 1
        while end < epochs and not self.starts_stage(end):
            end += 1
        return start, end

    def budget_note(self) -> str | None:
        """A line when ``train.epochs`` ends the run before its unfreezing schedule trains
        some layer groups: which, from which epoch the schedule trains them, and the
        ``train.epochs`` that trains them all; None when every group trains."""
        if self.schedule is None:
            return None
        groups = self.spec.group_names
        never = never_trained(self.schedule, groups, self.epochs)
        if not never:
            return None
        starts = [epoch for epoch in never.values() if epoch is not None]
        trained = [g for g in groups if g not in never]
        line = (
            f"train.epochs {self.epochs} ends the run before freeze.schedule "
            f"({self.schedule.kind}) trains {len(never)} of its {len(groups)} layer groups: "
            f"{listing(never)} never train, only {', '.join(trained)}"
        )
        if not starts:
            return line
        first, last = min(starts), max(starts)
        since = f"from epoch {first + 1}" + (
            f" (the last from epoch {last + 1})" if last > first else ""
        )
        return (
            f"{line}; the schedule would train them {since}: to train them, give "
            f"{option('train.epochs', last + 1)} or more"
        )

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
        new_stage = self.starts_stage(epoch)
        if epoch in self.extended:
            _restart_rates(optimizer)
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


def _restart_rates(optimizer: torch.optim.Optimizer) -> None:
    """Every group back at its stage's LR (the base its LR scheduler started the stage
    from): a run extended here starts a new LR cycle from the schedule's rates, not from
    where the old cycle annealed to. (A change of stage sets them anyway.)"""
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]


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
