"""How far the run behind an export got: the epochs done against those planned.

An export is made from the run's saved best model whenever it is asked for, also from a run
killed at epoch 3 of 6. That is allowed (a long run's model is often worth trying before it
ends), but never silent: :func:`run_progress` tells a finished run from an unfinished one,
the export's sidecar records it (``finished``, ``epochs_done``, ``epochs_planned``,
``stopped_early``) and ``torchgraft export`` prints :meth:`RunProgress.unfinished` — the
epoch reached and the command that finishes the run.

- **done**: the epochs whose resume state is on disk (``state/last.json``'s epoch + 1), the
  epochs ``train --resume`` continues after;
- **planned**: ``train.epochs`` of the run's ``config.yaml``;
- **stopped early**: ``train.early_stopping`` was met at the last saved epoch — as many epochs
  since the best one (model.json's ``epoch``) as the patience allows, which is how
  :class:`~torchgraft.engine.session.Session` stops. Such a run is finished.

A model file outside a run directory, or a run whose files do not say (no config.yaml, no
resume state), is neither: ``finished`` is None and nothing is printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...checkpoint.documents import DocumentLimits, read_yaml
from ...text import printable
from ...values import whole

__all__ = ["RunProgress", "run_progress"]

_CONFIG_LIMITS = DocumentLimits(max_bytes=1 << 20)


@dataclass(frozen=True)
class RunProgress:
    """Epochs done of those planned; ``finish`` is the command that finishes the run."""

    done: int | None = None
    planned: int | None = None
    stopped_early: bool = False
    best_epoch: int | None = None  # 1-based: the epoch of the saved (exported) model
    finish: str | None = None

    @property
    def finished(self) -> bool | None:
        """True when every planned epoch ran (or early stopping ended it), None: unknown."""
        if self.done is None or self.planned is None:
            return None
        return self.stopped_early or self.done >= self.planned

    def record(self) -> dict[str, Any]:
        """The sidecar's fields (JSON: null where unknown)."""
        return {
            "finished": self.finished,
            "epochs_done": self.done,
            "epochs_planned": self.planned,
            "stopped_early": self.stopped_early,
        }

    def unfinished(self, run: object) -> str | None:
        """One line for the person exporting ``run`` when it is unfinished, else None."""
        if self.finished is not False:
            return None
        model = f" (epoch {self.best_epoch})" if self.best_epoch is not None else ""
        return (
            f"{printable(run)} is unfinished: epoch {self.done} of {self.planned} is the last "
            f"one saved, so this export holds its best model so far{model}; finish the run "
            f"with: {self.finish} (unless it is still training), then export again"
        )


def run_progress(folder: Path, document: Mapping[str, Any]) -> RunProgress:
    """How far the run in ``folder`` got; ``document`` is its checked ``model.json``.

    Never raises: a file that cannot be read makes the answer unknown, not the export fail
    (the export checks what it needs itself).
    """
    from ..resume import state_epoch

    try:
        config = read_yaml(folder / "config.yaml", ValueError, _CONFIG_LIMITS)
    except (OSError, ValueError):
        return RunProgress()
    train = config.get("train") if isinstance(config, Mapping) else None
    planned = train.get("epochs") if isinstance(train, Mapping) else None
    last = state_epoch(folder)
    if not whole(planned, 1, 10**9) or last is None:
        return RunProgress()
    done = last + 1
    best = document.get("epoch")
    best = best if whole(best, 0, 10**9) else None
    patience = train.get("early_stopping")
    stopped = whole(patience, 1, 10**9) and best is not None and last - best >= patience
    return RunProgress(
        done=done,
        planned=planned,
        stopped_early=bool(stopped) and done < planned,
        best_epoch=None if best is None else best + 1,
        finish=_finish(folder, config),
    )


def _finish(folder: Path, config: Mapping[str, Any]) -> str:
    """The command (or call) that continues the run, with the opt-in its builder needs."""
    from ..resume import resume_command

    model = config.get("model")
    name = model.get("name") if isinstance(model, Mapping) else None
    return resume_command(str(name), folder)
