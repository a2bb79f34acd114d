"""Unfreezing schedules: which layer groups train at each epoch, and at what learning rate.

A schedule is plain frozen data (a config section: ``to_dict()`` / :func:`schedule_from_config`)
with one pure method, ``plan(epoch, groups) -> Stage``. Two functions do the work, and each
schedule exposes them as methods:

* ``start(model, epoch)`` freezes the model for that epoch's stage and returns the parameter
  groups to build the optimizer from (also how a resumed run rebuilds it);
* ``apply(model, optimizer, epoch)`` brings model and optimizer to the epoch's stage: it
  re-applies :func:`~torchgraft.freeze` (``requires_grad`` and the BatchNorm policy follow the
  change), puts newly trainable parameters into the optimizer with
  :func:`~torchgraft.param_groups`' rules (their LR, weight decay and no-decay split) — into
  the existing group of the same name, or a new group via ``add_param_group`` — and, when the
  stage changed, sets every group's LR (and ``initial_lr``) to ``lr * lr_scale[group]``.

``apply`` is idempotent. Learning rates are multipliers of ``lr``: an engine that also runs a
per-step LR scheduler rebuilds it when ``StageChange.changed`` is true (torch schedulers keep
one base LR per group, captured when they are built).

The three recipes:

* :class:`TwoPhase` — fastai's ``fine_tune``: the head alone for ``freeze_epochs``, then
  everything at ``lr * unfrozen_scale`` for the head, spread geometrically down to
  ``lr * unfrozen_scale / lr_mult`` for the stem (fastai's ``slice(lr/lr_mult, lr)``; fastai
  scales by 0.5, the default here is 0.35, see :class:`TwoPhase`).
* :class:`UnfreezeAt` — Lightning's ``BackboneFinetuning``: the head alone until ``epoch``,
  then the backbone at ``backbone_ratio`` of the head's LR, multiplied by ``growth`` every
  epoch and capped at the head's LR.
* :class:`Progressive` — ULMFiT's gradual unfreezing: one more layer group every ``every``
  epochs, from the head down, optionally with layer-wise LR decay (ULMFiT: ``1 / 2.6``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import ConfigError

# A schedule is data, validated where a run's configuration is (before torch is imported):
# torch and the functions that act on a model are imported by the functions that use them.
if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..model.spec import ModelSpec
    from .freezing import FreezeSummary

__all__ = [
    "SCHEDULES",
    "SET_BY_THE_RUN",
    "Progressive",
    "Stage",
    "StageChange",
    "TwoPhase",
    "UnfreezeAt",
    "UnfreezeSchedule",
    "apply_stage",
    "bound_of",
    "schedule_from_config",
    "start_stage",
]


@dataclass(frozen=True, repr=False)
class Stage:
    """What trains at one epoch.

    Attributes:
        epoch: the epoch (0-based).
        trainable: the layer groups that train, stem first.
        lr_scale: LR multiplier of every layer group (also used for the parameters of a
            frozen group that still train, e.g. BatchNorm affine under ``bn="stats"``).
    """

    epoch: int
    trainable: tuple[str, ...]
    lr_scale: Mapping[str, float] = field(default_factory=dict)

    def same_as(self, other: Stage) -> bool:
        """Same trainable groups and LR multipliers (the epoch number aside)."""
        return self.trainable == other.trainable and dict(self.lr_scale) == dict(other.lr_scale)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "trainable": list(self.trainable),
            "lr_scale": dict(self.lr_scale),
        }

    def describe(self) -> str:
        """What trains, in words: ``trains layer4, head (2 of 6 groups) at lr × 0.1–1``."""
        count, total = len(self.trainable), len(self.lr_scale)
        of = f" of {total}" if total else ""
        if total and count == total:
            what = f"all {count} groups"
        elif count <= 3:
            what = ", ".join(self.trainable) + (f" ({count}{of} groups)" if total else "")
        else:
            what = f"{count}{of} groups ({self.trainable[0]} … {self.trainable[-1]})"
        scales = sorted({float(self.lr_scale[g]) for g in self.trainable if g in self.lr_scale})
        rate = ""
        if scales:
            rate = f" at lr × {scales[0]:.3g}" + (f"–{scales[-1]:.3g}" if len(scales) > 1 else "")
        return f"trains {what}{rate}"

    def __repr__(self) -> str:
        return f"<Stage epoch {self.epoch}: {self.describe()}>"


@dataclass(frozen=True, repr=False)
class StageChange:
    """What :func:`apply_stage` did.

    ``repr`` is one line (``<StageChange epoch 3: trains layer4, head (2 of 6 groups) at lr ×
    0.1–1; 8,424,458 of 23,528,522 parameters train; changed, 30 tensors added>``); the
    fields hold the details.

    Attributes:
        stage: the stage now in force.
        changed: what trains or an LR multiplier differs from the previous epoch's stage
            (only then are the groups' LRs set; otherwise they are left as they are).
        added: names of the parameters that joined the optimizer.
        summary: the freeze summary of the model now.
    """

    stage: Stage
    changed: bool
    added: tuple[str, ...]
    summary: FreezeSummary

    def __repr__(self) -> str:
        added = f", {len(self.added)} tensors added" if self.added else ""
        return (
            f"<StageChange epoch {self.stage.epoch}: {self.stage.describe()}; "
            f"{self.summary.trainable:,} of {self.summary.total:,} parameters train; "
            f"{'changed' if self.changed else 'unchanged'}{added}>"
        )


class UnfreezeSchedule(Protocol):
    """What the engine reads from a schedule."""

    kind: ClassVar[str]
    lr: float
    weight_decay: float
    bn: str

    def plan(self, epoch: int, groups: Sequence[str]) -> Stage: ...


class _ScheduleMethods:
    """``start``/``apply``/``to_dict`` shared by the schedules (thin calls to the module
    functions, which hold the logic)."""

    def start(
        self, model: nn.Module, epoch: int = 0, *, spec: ModelSpec | None = None
    ) -> list[dict[str, Any]]:
        """See :func:`start_stage`."""
        return start_stage(self, model, epoch, spec=spec)

    def apply(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, **kw: Any
    ) -> StageChange:
        """See :func:`apply_stage`."""
        return apply_stage(self, model, optimizer, epoch, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


#: A field's bound, as metadata: the one definition both this module's check and the run
#: configuration's section (torchgraft.engine.config.sections) read. ``("gt", 0)``: a finite
#: number > 0; ``("ge", n)``: >= n; with ``whole``, a whole number.
_POSITIVE = {"bound": ("gt", 0)}
_NON_NEGATIVE = {"bound": ("ge", 0)}


def _positive(default: float | None) -> Any:
    return field(default=default, metadata=_POSITIVE)


def _count(default: int, *, minimum: int) -> Any:
    return field(default=default, metadata={"bound": ("ge", minimum), "whole": True})


#: Fields a run fills from other sections (``optim.lr``, ``optim.weight_decay``,
#: ``freeze.bn``): the config's ``freeze.schedule`` section names only the others.
SET_BY_THE_RUN = ("lr", "weight_decay", "bn")


@dataclass(frozen=True)
class TwoPhase(_ScheduleMethods):
    """fastai's ``fine_tune``: head only, then all groups with discriminative LRs."""

    lr: float = field(metadata=_POSITIVE)
    freeze_epochs: int = _count(1, minimum=0)
    lr_mult: float = _positive(100.0)
    # fastai's fine_tune halves the LR here (0.5). bench/recipes.py (15 runs): at 0.35 one run's
    # validation accuracy fell after the change (3 points, its loss falling), at 0.5 two; at
    # 0.2 or 0.1 the built-in digits end below 99 %.
    unfrozen_scale: float = _positive(0.35)
    frozen_body_scale: float = _positive(0.1)
    weight_decay: float = field(default=0.0, metadata=_NON_NEGATIVE)
    bn: str = "frozen"
    kind: ClassVar[str] = "two_phase"

    def __post_init__(self) -> None:
        _check_fields(self)

    def plan(self, epoch: int, groups: Sequence[str]) -> Stage:
        """Epochs ``< freeze_epochs``: the head (the body's scale is fastai's ``slice(lr)``)."""
        if epoch < self.freeze_epochs:
            scale = {g: 1.0 if g == "head" else self.frozen_body_scale for g in groups}
            return Stage(epoch, ("head",), scale)
        last = len(groups) - 1
        scale = {
            g: self.unfrozen_scale * self.lr_mult ** (-(last - i) / last if last else 0.0)
            for i, g in enumerate(groups)
        }
        return Stage(epoch, tuple(groups), scale)


@dataclass(frozen=True)
class UnfreezeAt(_ScheduleMethods):
    """Lightning's ``BackboneFinetuning``: unfreeze the backbone at ``epoch`` with an LR ratio."""

    lr: float = field(metadata=_POSITIVE)
    epoch: int = _count(10, minimum=0)
    backbone_ratio: float = _positive(0.1)
    growth: float = _positive(1.5)
    weight_decay: float = field(default=0.0, metadata=_NON_NEGATIVE)
    bn: str = "frozen"
    kind: ClassVar[str] = "unfreeze_at"

    def __post_init__(self) -> None:
        _check_fields(self)

    def plan(self, epoch: int, groups: Sequence[str]) -> Stage:
        """Head only before ``epoch``; then ratio x growth^(epochs since), at most 1."""
        ratio = min(1.0, self.backbone_ratio * self.growth ** max(0, epoch - self.epoch))
        scale = {g: 1.0 if g == "head" else ratio for g in groups}
        trainable = ("head",) if epoch < self.epoch else tuple(groups)
        return Stage(epoch, trainable, scale)


@dataclass(frozen=True)
class Progressive(_ScheduleMethods):
    """ULMFiT's gradual unfreezing: one more layer group every ``every`` epochs."""

    lr: float = field(metadata=_POSITIVE)
    every: int = _count(1, minimum=1)
    layer_decay: float | None = _positive(None)
    weight_decay: float = field(default=0.0, metadata=_NON_NEGATIVE)
    bn: str = "frozen"
    kind: ClassVar[str] = "progressive"

    def __post_init__(self) -> None:
        _check_fields(self)

    def plan(self, epoch: int, groups: Sequence[str]) -> Stage:
        """Epoch ``e`` trains the head and the last ``e // every`` groups before it."""
        body = [g for g in groups if g != "head"]
        count = min(len(body), epoch // self.every)
        trainable = (*(body[len(body) - count :] if count else ()), "head")
        last = len(groups) - 1
        decay = self.layer_decay or 1.0
        scale = {g: decay ** (last - i) for i, g in enumerate(groups)}
        return Stage(epoch, trainable, scale)


#: ``kind`` -> schedule class; the ``finetune.schedule`` config section names one.
SCHEDULES: dict[str, type] = {cls.kind: cls for cls in (TwoPhase, UnfreezeAt, Progressive)}


def schedule_from_config(config: Mapping[str, Any]) -> UnfreezeSchedule:
    """A schedule from its config section, e.g. ``{"kind": "two_phase", "lr": 1e-3}``.

    Raises:
        ConfigError: unknown kind or field, or an invalid value (every problem at once).
    """
    data = dict(config)
    kind = data.pop("kind", None)
    if kind not in SCHEDULES:
        close = difflib.get_close_matches(str(kind), SCHEDULES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown schedule kind {kind!r}{hint} (known: {', '.join(SCHEDULES)})")
    cls = SCHEDULES[kind]
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"schedule {kind!r} has no field(s) {unknown}; fields: {allowed}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"schedule {kind!r}: {exc}") from None


def start_stage(
    schedule: UnfreezeSchedule, model: nn.Module, epoch: int = 0, *, spec: ModelSpec | None = None
) -> list[dict[str, Any]]:
    """Freeze ``model`` for ``epoch``'s stage and return the groups to build the optimizer.

    Example:
        >>> schedule = TwoPhase(lr=1e-3, freeze_epochs=1)
        >>> opt = torch.optim.SGD(schedule.start(model), momentum=0.9)
    """
    from ..model.anatomy import spec_of
    from .freezing import freeze

    spec = spec or spec_of(model)
    stage = schedule.plan(epoch, spec.group_names)
    freeze(model, list(stage.trainable), bn=schedule.bn, spec=spec)
    return _wanted(schedule, model, stage, spec)


def apply_stage(
    schedule: UnfreezeSchedule,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    spec: ModelSpec | None = None,
) -> StageChange:
    """Bring ``model`` and ``optimizer`` to ``epoch``'s stage (call at each epoch's start).

    Returns:
        A :class:`StageChange`.

    Raises:
        ConfigError: an optimizer group without ``param_names`` (build it from ``start``).
    """
    from ..model.anatomy import spec_of
    from .freezing import freeze

    spec = spec or spec_of(model)
    stage = schedule.plan(epoch, spec.group_names)
    summary = freeze(model, list(stage.trainable), bn=schedule.bn, spec=spec)
    # The stage carries its epoch number; only what trains and at what LR multiplier count,
    # so the LRs an LR scheduler set are left alone from one epoch of a stage to the next.
    changed = epoch == 0 or not schedule.plan(epoch - 1, spec.group_names).same_as(stage)
    added = _sync(optimizer, _wanted(schedule, model, stage, spec), set_rates=changed)
    return StageChange(stage, changed, tuple(added), summary)


def _wanted(schedule, model, stage: Stage, spec: ModelSpec) -> list[dict[str, Any]]:
    from .optimizer_groups import param_groups

    return param_groups(
        model,
        schedule.lr,
        weight_decay=schedule.weight_decay,
        lr_scale=stage.lr_scale,
        spec=spec,
    )


def _sync(optimizer: torch.optim.Optimizer, wanted, *, set_rates: bool) -> list[str]:
    """Add the wanted parameters the optimizer lacks; set LRs when the stage changed."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    by_name = {g.get("name"): g for g in optimizer.param_groups}
    scheduled = any("initial_lr" in g for g in optimizer.param_groups)
    added: list[str] = []
    for want in wanted:
        new = [(n, p) for n, p in zip(want["param_names"], want["params"], strict=True)]
        new = [(n, p) for n, p in new if id(p) not in held]
        group = by_name.get(want["name"])
        if group is None and new:
            extra = {"initial_lr": want["lr"]} if scheduled else {}
            optimizer.add_param_group(
                {**want, **extra, "params": [p for _, p in new], "param_names": [n for n, _ in new]}
            )
        elif group is not None:
            if new and "param_names" not in group:
                raise ConfigError(
                    f"optimizer group {want['name']!r} has no param_names; build the optimizer "
                    "from schedule.start(model) or torchgraft.param_groups"
                )
            # One group per name keeps state-by-name and LR-by-group unambiguous.
            group["params"].extend(p for _, p in new)
            group["param_names"] = [*group.get("param_names", []), *(n for n, _ in new)]
            if set_rates:
                _set_rate(group, want["lr"], want["weight_decay"])
        added += [n for n, _ in new]
    return added


def _set_rate(group: dict[str, Any], lr: float, weight_decay: float) -> None:
    group["lr"] = lr
    group["weight_decay"] = weight_decay
    if "initial_lr" in group:
        group["initial_lr"] = lr  # a rebuilt LR scheduler starts from the stage's rate


def bound_of(spec: Any) -> tuple[str, float] | None:
    """A schedule field's bound (``("gt", 0)``, ``("ge", n)``) from its metadata, or None."""
    return spec.metadata.get("bound")


def _check_fields(schedule: Any) -> None:
    """Every bounded field within its bound (None where None is the default), and ``bn``
    a BatchNorm policy; every problem at once."""
    problems = []
    for spec in fields(schedule):
        bound, value = bound_of(spec), getattr(schedule, spec.name)
        if bound is None or (value is None and spec.default is None):
            continue
        kind, limit = bound
        whole = spec.metadata.get("whole", False)
        ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > limit if kind == "gt" else value >= limit)
        if not ok:
            what = "a whole number" if whole else "a finite number"
            sign = ">" if kind == "gt" else ">="
            problems.append(f"{spec.name} must be {what} {sign} {limit}, got {value!r}")
    from .freezing import BN_POLICIES

    if schedule.bn not in BN_POLICIES:
        problems.append(f"bn must be one of {', '.join(BN_POLICIES)}, got {schedule.bn!r}")
    if problems:
        raise ConfigError(f"{type(schedule).__name__}: " + "; ".join(problems))
