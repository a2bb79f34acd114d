"""A session's state for an exact resume: what :mod:`.state` saves of it, and putting it back.

:func:`session_state` gathers everything a session needs to continue after an epoch;
:func:`restore_session` puts it back into a session whose optimizer was built for the epoch
before the first one to run: the LR scheduler is rebuilt over that epoch's stage and loaded
(so the stage keeps the LR cycle it was saved with, exactly), then the optimizer state (by
parameter name), EMA, counters, metrics and every random generator. The epochs at which the
run was extended (:func:`.budget.extension_points`) are given to the session's stages first:
they bound the stages the scheduler is built over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ...policies.optimizer_state import load_optimizer_state_by_name, optimizer_state_by_name
from ...text import printable
from .budget import extension_points
from .state import capture_rng, restore_rng

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["restore_session", "session_state"]


def session_state(session: Session, epoch: int) -> dict[str, Any]:
    """Everything needed to resume ``session`` after ``epoch``. With several processes every
    one must call it (their random generators are gathered); rank 0's is the complete state."""
    trainer = session.trainer
    rng = capture_rng(session.generator)
    ranks = session.processes.gather(rng)
    return {
        "model": session.model.state_dict(),
        "optimizer": optimizer_state_by_name(trainer.optimizer),
        "scheduler": trainer.scheduler.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "step": trainer.step,
        "lr_trace": [list(item) for item in trainer.lr_trace],
        "history": session.history,
        "policies": session.policies,
        "stage_steps": session.stage_steps,
        "best": session.best,
        "stale": session.stale,
        "rng": rng,
        "rng_ranks": ranks if not session.processes.alone else None,
        # The plan this state belongs to: a resume with more epochs extends it from here.
        "epochs": session.stages.epochs,
        "extended": list(session.stages.extended),
    }


def restore_session(session: Session, state: dict[str, Any], first: int, origin: str) -> None:
    """Put ``state`` back into a session whose optimizer was built for epoch ``first``.

    Raises:
        CheckpointError: the state does not fit this run (changed, or hand-made).
    """
    try:
        _restore(session, state, first)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        # The state's types were checked when it was read (load_state); what is left is
        # content that does not fit this run: changed, or hand-made.
        raise CheckpointError(
            f"{origin}: does not fit this run ({type(exc).__name__}: "
            f"{printable(str(exc))[:200]}); it was changed after it was saved, or "
            "written by another version of torchgraft"
        ) from exc


def _restore(session: Session, state: dict[str, Any], first: int) -> None:
    """:func:`restore_session`'s work, raising what a state that does not fit raises."""
    trainer = session.trainer
    # First: the stage the scheduler is rebuilt over ends where the run was extended.
    session.stages.extended = extension_points(state, session.stages.epochs)
    trainer.scheduler = session.stages.scheduler(
        trainer.optimizer, first - 1, trainer.steps_per_epoch(session.train_batches)
    )
    trainer.scheduler.load_state_dict(state["scheduler"])
    # After the scheduler: building it set each group's LR from its first step; the
    # saved group settings (lr, initial_lr) put back the rates of the moment of saving.
    load_optimizer_state_by_name(trainer.optimizer, state["optimizer"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
    trainer.step = state["step"]
    trainer.lr_trace = [tuple(item) for item in state["lr_trace"]]
    trainer.processes = session.processes
    session.history, session.policies = list(state["history"]), list(state["policies"])
    session.stage_steps, session.best, session.stale = (
        list(state["stage_steps"]),
        dict(state["best"]),
        state["stale"],
    )
    processes = session.processes
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == processes.world:
        restore_rng(ranks[processes.rank], session.generator)
    else:
        restore_rng(state["rng"], session.generator)
        saved = len(ranks) if ranks is not None else 1
        if saved != processes.world:
            session.notes.append(
                f"resumed with {processes.describe()} where the run had {saved}: it "
                "continues from the saved epoch, but not bitwise as an uninterrupted run "
                "(the data shares and random streams differ)"
            )
