"""Resuming a run: the state saved after every epoch, and continuing from it exactly.

Everything of resume is here, one concept per module:

* :mod:`.state` — the state file: written after every epoch (:func:`save_state`), pointed to
  by ``state/last.json`` with its sha256, read back through the checkpoint reader and checked
  by type (:func:`load_state`); every random generator (:func:`capture_rng`).
* :mod:`.restore` — what a session saves (:func:`session_state`) and how it is put back
  (:func:`restore_session`).
* :mod:`.run` — a run directory read to continue (:func:`read_run`) and the refusal of a run
  whose model, classes or data changed (:func:`check_same_run`).
* :mod:`.changes` — the config keys a resume may change (:data:`SAFE_ON_RESUME`), the
  refusal of the others, and the run's record of its resumes (``resumes.json``).
* :mod:`.budget` — ``train.epochs`` on resume: a run extended (a stage of its own, a new LR
  cycle), shortened, or already finished.

A torchrun restart finds its earlier attempt's folder in :mod:`..distributed`; the model is
rebuilt by :func:`..setup.rebuilt_model`.
"""

from __future__ import annotations

from .budget import (
    PHASES,
    check_epochs,
    extension_lines,
    extension_points,
    finished_line,
    finishing_line,
    interrupted_line,
    resume_command,
)
from .changes import (
    RESUMES,
    SAFE_ON_RESUME,
    changed_keys,
    check_overrides,
    new_run_command,
    record_resume,
    saved_config,
)
from .restore import restore_session, session_state
from .run import check_same_run, read_run, resumed_config, run_fingerprint
from .state import (
    STATE_FORMAT,
    capture_rng,
    clean_temporaries,
    load_state,
    restore_rng,
    save_state,
    state_epoch,
    state_file,
)

__all__ = [
    "PHASES",
    "RESUMES",
    "SAFE_ON_RESUME",
    "STATE_FORMAT",
    "capture_rng",
    "changed_keys",
    "check_epochs",
    "check_overrides",
    "check_same_run",
    "clean_temporaries",
    "extension_lines",
    "extension_points",
    "finished_line",
    "finishing_line",
    "interrupted_line",
    "load_state",
    "new_run_command",
    "read_run",
    "record_resume",
    "restore_rng",
    "restore_session",
    "resume_command",
    "resumed_config",
    "run_fingerprint",
    "save_state",
    "saved_config",
    "session_state",
    "state_epoch",
    "state_file",
]
