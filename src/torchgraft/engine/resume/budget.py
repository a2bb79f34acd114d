"""A resume's epoch budget: ``train.epochs`` against the epochs the run has done and planned.

* **More** than the run planned extends it. The added epochs are a stage of their own: they
  train the layer groups the unfreezing schedule trains at those epochs, at the schedule's
  learning rates, under a new LR cycle over them (the run's ``schedule.name`` — a one-cycle
  warms up, peaks and anneals to the run's new last epoch). The run's old plan ends where it
  ended: a run interrupted before its last epoch first finishes the cycle of the stage it
  was in, then the added stage starts. The epochs at which a run was extended are kept in
  its resume state (``extended``, saved every epoch, beside ``epochs``, the plan the state
  was saved under), so a run extended twice (6 → 10 → 14) has two such boundaries, and an
  extension survives a kill before its first epoch was saved (:func:`extension_points`).
* **Fewer** than planned, but more than done: the run ends sooner; the stage it is in keeps
  its LR cycle, which is then cut before its end (said when the run resumes).
* **Fewer** than done: refused (:func:`check_epochs`) — epochs cannot be untrained.
* **As many as done** (or early stopping has ended the run): there is nothing to train;
  :func:`finished_line` says so, and the resume trains, builds and writes nothing — unless
  the run was stopped while finishing (after its last epoch's checkpoint, before the test
  split, plots and report were done: ``phases.json``, written last, does not record that
  epoch). Then :func:`finishing_line` says so and the resume does the finishing alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...checkpoint.documents import DocumentLimits, read_json
from ...errors import CheckpointError, ConfigError
from ...model.build_record import FILE_LIBRARIES
from ...wording import in_cli, option
from ..config.load import RunConfig
from .changes import new_run_command
from .state import state_epoch

if TYPE_CHECKING:
    from ..stages import Stages

__all__ = [
    "check_epochs",
    "extension_lines",
    "extension_points",
    "finished_line",
    "finishing_line",
    "interrupted_line",
    "resume_command",
]


def extension_points(state: dict[str, Any], epochs: int) -> list[int]:
    """The epochs at which a run resumed from ``state`` with ``train.epochs`` = ``epochs``
    starts a new stage because it was extended: those the state keeps, and the end of its
    own plan (``state["epochs"]``) when ``epochs`` goes past it; none at or past ``epochs``
    (a run shortened after an extension it never reached)."""
    points = {*state.get("extended", ())}
    planned = state.get("epochs", epochs)  # none recorded (an older state): not extended
    if epochs > planned:
        points.add(planned)
    return sorted(point for point in points if point < epochs)


def check_epochs(folder: Path, state: dict[str, Any], config: RunConfig) -> None:
    """Refuse a ``train.epochs`` below the epochs the run has done.

    Raises:
        ConfigError: naming the key, the value, the epochs done and planned, and what to do.
    """
    done, epochs = state["epoch"] + 1, config.train.epochs
    if epochs >= done:
        return
    fork = new_run_command(folder, {"train.epochs": epochs})
    raise ConfigError(
        f"{folder}: cannot resume with train.epochs {epochs}: the run has done {done} epochs "
        f"already, and a resume cannot take epochs back; give "
        f"{option('train.epochs', done)} or more, or start a new run of {epochs} epochs from "
        f"this one's configuration: {fork}"
    )


def finished_line(folder: Path, state: dict[str, Any], config: RunConfig) -> str | None:
    """What a resume says when there is nothing left to train — every epoch of
    ``train.epochs`` is done, or early stopping ended the run and would end it again — with
    the command that trains longer; None when there are epochs to train."""
    done, epochs, planned = state["epoch"] + 1, config.train.epochs, state["epochs"]
    patience = config.train.early_stopping
    if done < epochs and not _stopped_early(state, config):
        return None
    if done < epochs:
        more = resume_command(config.model.name, folder, {"train.early_stopping": None})
        return (
            f"{folder}: already finished: early stopping ends it after epoch {done} of "
            f"{epochs} ({state['stale']} epochs without a better {config.train.monitor}, "
            f"train.early_stopping {patience}); to train on: {more}"
        )
    if done < planned:  # an interrupted run, cut to the epochs it has done
        return (
            f"{folder}: nothing to train: train.epochs {epochs} and {done} epochs are done "
            f"(the run plans {planned}); nothing was changed. To continue the run: "
            f"{resume_command(config.model.name, folder)}"
        )
    more = resume_command(config.model.name, folder, {"train.epochs": 2 * done})
    return f"{folder}: already finished ({done} of {done} epochs); to train longer: {more}"


def _stopped_early(state: dict[str, Any], config: RunConfig) -> bool:
    """Early stopping ended the run before ``train.epochs`` (and would end it again)."""
    patience = config.train.early_stopping
    done = state["epoch"] + 1
    return done < config.train.epochs and patience is not None and state["stale"] >= patience


#: Written last by a run's finishing (engine.fit); ``epochs``: the epochs done by then.
PHASES = "phases.json"
_PHASES_LIMITS = DocumentLimits(max_bytes=64 * 1024, max_depth=4, max_nodes=1_000)


def finishing_line(folder: Path, state: dict[str, Any], config: RunConfig) -> str | None:
    """What a resume says when every epoch is trained (or early stopping ended the run) but
    the run was stopped while finishing — its ``phases.json`` missing, damaged, or recording
    fewer epochs than the state (a run extended, then stopped while finishing again); None
    otherwise. A ``phases.json`` without ``epochs`` (written before it was recorded) counts
    as finished."""
    done, epochs, planned = state["epoch"] + 1, config.train.epochs, state["epochs"]
    stopped_early = _stopped_early(state, config)
    if not (stopped_early or done >= max(epochs, planned)):
        return None
    path = folder / PHASES
    try:
        record = read_json(path, CheckpointError, _PHASES_LIMITS) if os.path.lexists(path) else {}
    except CheckpointError:
        record = {}
    finished = isinstance(record, dict) and "phases" in record
    recorded = record.get("epochs", done) if finished else None
    if isinstance(recorded, int) and recorded >= done:
        return None
    trained = (
        f"early stopping ended training after epoch {done} of {epochs}"
        if stopped_early
        else f"every epoch is done ({done} of {epochs})"
    )
    return (
        f"{folder}: {trained}; the run stopped while finishing: its test metrics, plots and "
        "report are made again"
    )


def interrupted_line(config: RunConfig, folder: Path) -> str:
    """What an interrupted run says: the command that continues it from the last epoch whose
    state is on disk (with the opt-in its builder needs), or that no epoch was saved."""
    saved = state_epoch(folder)
    if saved is None:
        return f"interrupted before an epoch was saved: nothing to resume in {folder}"
    command = resume_command(config.model.name, folder)
    return f"interrupted; continue with: {command} (epoch {saved + 1} is the last saved)"


def resume_command(model_name: str, folder: Path, overrides: dict[str, Any] | None = None):
    """The command (or ``tg.fit`` call) that resumes the run in ``folder`` (whose
    ``model.name`` is ``model_name``) with ``overrides``, with the opt-in its builder needs
    (``--trust-run`` for a model built from the run's files)."""
    words = [option("resume", str(folder))]
    library, colon, _ = model_name.partition(":")
    if not (colon and library in FILE_LIBRARIES):
        words.append(option("trust_run", True))
    overrides = overrides or {}
    if in_cli():
        words += [
            f"--{key} {'null' if value is None else value}" for key, value in overrides.items()
        ]
        return f"torchgraft train {' '.join(words)}"
    if overrides:
        words.append(f"overrides={overrides!r}")
    return f"tg.fit({', '.join(words)})"


def extension_lines(stages: Stages, state: dict[str, Any], first: int) -> list[str]:
    """What a resume at epoch ``first`` (0-based) does to the run's plan, in words: the stage
    its extension starts, or the cut of a shortened run's cycle; nothing when neither."""
    epochs = stages.epochs
    planned = state.get("epochs", epochs)
    name = stages.config.schedule.name
    if epochs > planned:
        span = (
            f"epoch {epochs} is" if epochs == planned + 1 else f"epochs {planned + 1}–{epochs} are"
        )
        what = "the same layers, at the run's learning rates"
        if stages.schedule is not None:
            what = f"{stages.describe(planned)}, at the schedule's learning rates"
        line = (
            f"train.epochs {epochs} (the run planned {planned}): {span} a new stage ({what}) "
            f"with a new {name} LR cycle"
        )
        if any(stages.starts_stage(epoch) for epoch in range(planned + 1, epochs)):
            line += " (and each later stage of the schedule in them its own, as always)"
        if first < planned:
            done = f"epoch {planned}" if first + 1 == planned else f"epochs {first + 1}–{planned}"
            line += f"; {done} first finish the cycle of the current stage"
        return [line]
    # Shortened: is the stage in progress (its LR cycle restored) planned past the new end?
    if (
        planned > epochs
        and epochs not in state.get("extended", ())  # an extension's boundary: it ends there
        and not stages.starts_stage(first)
        and stages.stage_bounds(first, epochs=epochs + 1)[1] > epochs
    ):
        return [
            f"train.epochs {epochs} (the run planned {planned}): the run ends after epoch "
            f"{epochs}, before the {name} LR cycle of its current stage ends: the cycle is "
            "cut there"
        ]
    return []
