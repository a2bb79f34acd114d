"""The resolved configuration as ``torchgraft train --print-config`` shows it.

Printing a configuration is looking before running, so it reads neither the data nor the
weights (a placeholder ``data.source`` that does not exist yet is fine):

* **the YAML** (:func:`config_yaml`) is the configuration exactly as the run would start
  with it, every key present, and loads again as a ``--config``. The settings a run fills in
  when it starts — from the data (``data.image_size``, ``data.batch_size``,
  ``head.num_classes``, …) or from the model — are printed unset, each with a comment saying
  what decides it (:data:`UNSET`); scanning the data to fill them in is the run's job.
* **the planned stages** (:func:`stage_lines`), as YAML comments after it: which epochs train
  which layer groups, and each group's LR multiplier of ``optim.lr``. An unfreezing schedule
  plans by layer group, so the model's group names (``ModelSpec.group_names``) are needed:
  :func:`layer_group_names` builds a torchvision or timm architecture on the ``meta`` device
  (shapes only: no weights, no memory, no download). A ``package.module:callable`` model is
  not built here — printing a config, maybe one read back from a run directory, never runs
  code it names — and neither is a model that fails to build: the stages are then told in
  words, by epoch, without group names (:func:`schedule_in_words`).

:func:`show_config` writes both; the YAML first, so it is on screen before torch loads.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TextIO

import yaml

from ...policies.schedules import SCHEDULES, Stage, UnfreezeSchedule
from .checks import exists
from .sections import RunConfig

__all__ = [
    "UNSET",
    "config_yaml",
    "layer_group_names",
    "never_trained",
    "planned_stages",
    "run_schedule",
    "schedule_in_words",
    "show_config",
    "stage_lines",
]

_AT_START = "when the run starts"
#: ``(section, key)`` -> what decides the value a config leaves unset (None), shown beside it.
UNSET: dict[tuple[str, str], str] = {
    ("model", "in_chans"): "the model's own",
    ("head", "num_classes"): f"the data's classes, counted {_AT_START}",
    ("data", "image_size"): f"chosen from the training images and the model {_AT_START}",
    ("data", "crop_pct"): f"chosen with data.image_size {_AT_START}",
    ("data", "interpolation"): "the model's own",
    ("data", "mean"): "the model's own",
    ("data", "std"): "the model's own",
    ("data", "batch_size"): f"chosen from the size of the training split {_AT_START}",
    ("data", "eval_batch_size"): "twice data.batch_size",
    ("data", "augment"): f"chosen from the training images per class {_AT_START}",
}
#: Comment lines are wrapped to this width (a terminal's, less a margin).
_WIDTH = 96


def show_config(config: RunConfig, out: TextIO, *, origin: Sequence[str] = ()) -> None:
    """Write ``config`` as YAML, then its planned stages as YAML comments, to ``out``.

    Args:
        config: a validated configuration.
        out: where to write (flushed after the YAML: the stages may take seconds).
        origin: where the values came from, in order (``["configs/x.yaml", "overrides"]``),
            named in the first line.
    """
    sources = ", then ".join(["the defaults", *origin])
    out.write(f"# the resolved configuration: {sources}\n")
    out.write(config_yaml(config))
    out.flush()
    schedule = run_schedule(config)
    groups, why = layer_group_names(config) if schedule is not None else (None, "")
    out.write("".join(f"{line}\n" for line in stage_lines(config, groups, why)))
    out.flush()


def config_yaml(config: RunConfig) -> str:
    """``config`` as YAML (every key, in the sections' order), the settings left to the run's
    start marked with a comment (:data:`UNSET`); ``yaml.safe_load`` of it is
    ``config.to_dict()``. Nothing is read from the data or the weights."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"{section}:")
        for key, value in values.items():
            # Key by key, so that a comment is only ever added to a one-line ``key: null``.
            text = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True)
            note = _unset_note(config, section, key) if value is None else None
            if note:
                text = f"{text.rstrip()}  # {note}\n"
            lines.append(textwrap.indent(text, "  ").rstrip("\n"))
    missing = _missing_source(config)
    if missing:
        lines += _prose(missing)
    return "\n".join(lines) + "\n"


def _unset_note(config: RunConfig, section: str, key: str) -> str | None:
    if (section, key) == ("data", "crop_pct") and config.data.image_size is not None:
        return "the model's own crop"
    return UNSET.get((section, key))


def _missing_source(config: RunConfig) -> str | None:
    """A line for a ``data.source`` that does not exist (yet): fine to print, not to run."""
    source = config.data.source
    if source == "digits" or exists(source):
        return None
    shown = source if len(source) <= 80 else f"{source[:77]}..."
    return f"data.source {shown!r} does not exist (yet): the run needs it, printing does not"


def run_schedule(config: RunConfig) -> UnfreezeSchedule | None:
    """The run's unfreezing schedule (None: a fixed ``freeze.policy``), its learning rate and
    weight decay from ``optim`` and its BatchNorm policy from ``freeze.bn``, as the run
    builds it."""
    chosen = config.freeze.schedule
    if chosen is None:
        return None
    fields = chosen.model_dump()
    kind = fields.pop("kind")
    return SCHEDULES[kind](
        lr=config.optim.lr, weight_decay=config.optim.weight_decay, bn=config.freeze.bn, **fields
    )


def planned_stages(
    schedule: UnfreezeSchedule, groups: Sequence[str], epochs: int
) -> list[tuple[int, int, Stage]]:
    """``(first, last, stage)`` for each run of epochs (0-based, ``last`` included) over which
    ``schedule`` trains the same groups at the same LR multipliers, in order."""
    runs: list[tuple[int, int, Stage]] = []
    for epoch in range(epochs):
        stage = schedule.plan(epoch, groups)
        if runs and runs[-1][2].same_as(stage):
            runs[-1] = (runs[-1][0], epoch, runs[-1][2])
        else:
            runs.append((epoch, epoch, stage))
    return runs


def never_trained(
    schedule: UnfreezeSchedule, groups: Sequence[str], epochs: int, *, horizon: int = 100_000
) -> dict[str, int | None]:
    """The layer groups ``schedule`` trains in none of a run's ``epochs`` epochs, stem first,
    each with the first epoch (0-based) at which it would train them in a longer run — None
    when not within ``horizon`` more epochs. Empty when every group trains.

    Epochs are walked from the first until every group has trained (a few, for the
    schedules there are), not over the whole run."""
    first: dict[str, int | None] = dict.fromkeys(groups)
    missing, epoch = set(groups), 0
    while missing and epoch < epochs + horizon:
        for group in missing.intersection(schedule.plan(epoch, groups).trainable):
            first[group] = epoch
            missing.discard(group)
        epoch += 1
    return {g: e for g, e in first.items() if e is None or e >= epochs}


def layer_group_names(config: RunConfig) -> tuple[tuple[str, ...] | None, str]:
    """The layer groups of ``model.name``, stem first, from its architecture built on the
    ``meta`` device without weights; or None and why not (a ``package.module:callable``
    model, or one that cannot be built: the run will say why, with a typed error)."""
    name = config.model.name
    library, _, arch = name.partition(":")
    if library not in ("torchvision", "timm"):
        return None, f"{name} is not built here: building it would run its code"
    from ...zoo import build_model
    from ...zoo.meta_build import build_on_meta

    # A timm tag names weights; the architecture, all that is built here, is the same.
    spec = f"{library}:{arch.partition('.')[0]}" if library == "timm" else name
    try:
        model = build_on_meta(lambda: build_model(spec, **config.model.kwargs).model)
    except Exception as exc:  # any failure: the stages in words; a run reports it, typed
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{name} could not be built: {reason[:160]}"
    return model.torchgraft_spec.group_names, ""


def stage_lines(config: RunConfig, groups: Sequence[str] | None = None, why: str = "") -> list[str]:
    """What trains when, as YAML comment lines: the stages of the unfreezing schedule by
    epoch (1-based, as the run counts them) with each group's LR multiplier, over the
    layer ``groups`` (None: in words, with ``why`` the names are missing); for a fixed
    policy, one line."""
    schedule, epochs = run_schedule(config), config.train.epochs
    if schedule is None:
        lines = _prose(
            f"no unfreezing schedule: freeze.policy {config.freeze.policy!r} holds for all "
            f"{epochs} epochs"
        )
        for text in _adapters(config):
            lines += _prose(text, indent=2)
        return lines
    head = f"planned stages of freeze.schedule ({schedule.kind}) over train.epochs {epochs}"
    rate = f"each LR is optim.lr ({config.optim.lr:g}) × the multiplier shown"
    if groups is None:
        lines = _prose(f"{head}; {rate}:")
        for text in [*schedule_in_words(schedule, epochs), f"(in words, no group names: {why})"]:
            lines += _prose(text, indent=2)
    else:
        lines = _prose(
            f"{head}, for the {len(groups)} layer groups of {config.model.name}; {rate}:"
        )
        runs = planned_stages(schedule, groups, epochs)
        width = max(len(_epochs(first, last)) for first, last, _ in runs)
        for first, last, stage in runs:
            lines += _stage_lines(_epochs(first, last).ljust(width), stage)
        never = list(never_trained(schedule, groups, epochs))
        if never:
            lines += _prose(f"never trained in these {epochs} epochs: {', '.join(never)}", 2)
    for text in [*_adapters(config), *_endings(config)]:
        lines += _prose(text, indent=2)
    return lines


def _stage_lines(epochs: str, stage: Stage) -> list[str]:
    """``#   epochs 3–4  neck × 0.5, head × 1``, wrapped between groups, never inside one."""
    every = len(stage.trainable) == len(stage.lr_scale)
    items = _rates(stage)
    if every and len({stage.lr_scale[g] for g in stage.trainable}) == 1:
        return [
            f"#   {epochs}  all {len(stage.trainable)} groups × {stage.lr_scale[stage.trainable[0]]:.3g}"
        ]
    first = f"#   {epochs}  " + (f"all {len(stage.trainable)} groups: " if every else "")
    hang = "#" + " " * (len(epochs) + 5)
    lines, line, fresh = [], first, True
    for item in items:
        if not fresh and len(line) + len(item) + 2 > _WIDTH:
            lines.append(line + ",")
            line, fresh = hang, True
        line += item if fresh else f", {item}"
        fresh = False
    return [*lines, line]


def _rates(stage: Stage) -> list[str]:
    """``group × multiplier`` for each trainable group, stem first; three or more neighbours
    at the same multiplier as one item (``stem … neck (13 groups) × 0.338``)."""
    runs: list[list[str]] = []
    scale = [stage.lr_scale.get(g, 1.0) for g in stage.trainable]
    for index, group in enumerate(stage.trainable):
        if runs and scale[index] == scale[index - 1]:
            runs[-1].append(group)
        else:
            runs.append([group])
    items, index = [], 0
    for run in runs:
        shown = f"{scale[index]:.3g}"
        if len(run) >= 3:
            items.append(f"{run[0]} … {run[-1]} ({len(run)} groups) × {shown}")
        else:
            items += [f"{g} × {shown}" for g in run]
        index += len(run)
    return items


def _prose(text: str, indent: int = 0) -> list[str]:
    """``text`` as YAML comment lines no wider than :data:`_WIDTH`; an indented line's
    continuations hang under its text."""
    lead = " " * indent
    return [
        f"# {part}".rstrip()
        for part in textwrap.wrap(
            text,
            _WIDTH - 2,
            initial_indent=lead,
            subsequent_indent=lead + ("  " if indent else ""),
            break_on_hyphens=False,
        )
    ]


def _epochs(first: int, last: int) -> str:
    """0-based bounds as the run prints them: ``epoch 3`` or ``epochs 3–4``."""
    return f"epoch {first + 1}" if first == last else f"epochs {first + 1}–{last + 1}"


def _adapters(config: RunConfig) -> list[str]:
    """What "trains" means for a group when the run adds adapters (the peft section)."""
    peft = config.peft
    if not peft.enabled:
        return []
    targets = "auto" if peft.targets == "auto" else ", ".join(peft.targets)
    return [
        f"peft.method {peft.method} (rank {peft.rank}, alpha {peft.alpha:g}, targets "
        f"{targets}): a group that trains trains its adapters, its own weights stay frozen; "
        "the head trains whole"
    ]


def _endings(config: RunConfig) -> list[str]:
    """What may end the run before its planned last epoch."""
    train = config.train
    lines = []
    if train.early_stopping is not None:
        lines.append(
            f"train.early_stopping {train.early_stopping} may end the run before its last stage"
        )
    if train.max_steps is not None:
        lines.append(f"train.max_steps {train.max_steps} ends the run after that many steps")
    return lines


def schedule_in_words(schedule: UnfreezeSchedule, epochs: int) -> list[str]:
    """The stages of ``schedule`` over ``epochs`` by epoch, without the model's group names
    (the head is always a group; the stem is the first)."""
    return _WORDS[schedule.kind](schedule, epochs)


def _two_phase(schedule, epochs: int) -> list[str]:
    frozen = min(schedule.freeze_epochs, epochs)
    lines = [f"{_epochs(0, frozen - 1)}: the head alone × 1"] if frozen else []
    if frozen < epochs:
        top = schedule.unfrozen_scale
        lines.append(
            f"{_epochs(frozen, epochs - 1)}: every layer group, the head × {top:.3g} and each "
            f"group below it less, geometrically, down to the stem × {top / schedule.lr_mult:.3g}"
        )
    return lines


def _unfreeze_at(schedule, epochs: int) -> list[str]:
    start = min(schedule.epoch, epochs)
    lines = [f"{_epochs(0, start - 1)}: the head alone × 1"] if start else []
    if start < epochs:
        lines.append(
            f"{_epochs(start, epochs - 1)}: every layer group, the head × 1 and the others "
            f"× {schedule.backbone_ratio:.3g} at first, then × {schedule.growth:.3g} more each "
            "epoch, up to × 1"
        )
    return lines


def _progressive(schedule, epochs: int) -> list[str]:
    every = schedule.every
    lines = [f"{_epochs(0, min(every, epochs) - 1)}: the head alone × 1"]
    if every < epochs:
        decay = (
            f" × {schedule.layer_decay:.3g} per group below the head"
            if schedule.layer_decay
            else ""
        )
        lines.append(
            f"from epoch {every + 1}: one more layer group every {every} epochs, from the head "
            f"down (epoch {every + 1}: the head and the group below it), until every group "
            f"trains or the run ends; each group{decay or ' × 1'}"
        )
    return lines


#: ``kind`` -> the stages of that schedule in words.
_WORDS = {"two_phase": _two_phase, "unfreeze_at": _unfreeze_at, "progressive": _progressive}
