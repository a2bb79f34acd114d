"""The resume state file: what a run saves after every epoch, and reading it back.

At the end of every epoch the engine saves model weights, optimizer state (by parameter
name, so it survives an unfreeze), LR scheduler, EMA weights, every random generator (torch,
CUDA, NumPy, Python, and the data-order generator), the metrics so far, the early-stopping
counters and the run's epoch plan (its ``train.epochs`` and the epochs at which it was
extended), as ``state/epoch-NNNN.pt``; then ``state/last.json`` names that file with its
sha256; then older state files are removed. Each write is atomic, so at every instant
``last.json`` names a complete file. Temporary files a killed process left behind are never
read, and :func:`clean_temporaries` removes them at the next start.

The file is a torch pickle of tensors and plain data only; it is read back through the
checkpoint reader like any torch file — scanned within its limits, then ``weights_only=True``
(NumPy's generator state is stored as a tensor for that reason) — and its fields are checked
for type before a run restores them: a run directory may be a stranger's.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import atomic_path, atomic_write_text
from ...checkpoint.documents import DocumentLimits, read_json
from ...checkpoint.read import read_torch_data
from ...checkpoint.write import sha256_file
from ...errors import CheckpointError
from ...values import whole

__all__ = [
    "POINTER",
    "STATE_DIR",
    "STATE_FORMAT",
    "capture_rng",
    "clean_temporaries",
    "load_state",
    "restore_rng",
    "save_state",
    "state_epoch",
    "state_file",
]

STATE_FORMAT = "torchgraft.resume/1"
STATE_DIR = "state"
POINTER = "last.json"
_STATE_NAME = re.compile(r"epoch-\d{4,9}\.pt")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POINTER_LIMITS = DocumentLimits(max_bytes=64 * 1024, max_depth=4)


def capture_rng(data_generator: torch.Generator) -> dict[str, Any]:
    """Every generator a training epoch draws from."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": python_gauss},
        "data": data_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], data_generator: torch.Generator) -> None:
    """Put every generator back as :func:`capture_rng` found it."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    data_generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, epoch: int, payload: dict[str, Any]) -> Path:
    """Write the state after ``epoch`` (0-based) and point ``last.json`` at it."""
    folder = run_dir / STATE_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        _save(handle, {"format": STATE_FORMAT, "epoch": epoch, **payload})
    pointer = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "file": path.name,
        "sha256": sha256_file(path),
    }
    atomic_write_text(folder / POINTER, json.dumps(pointer, indent=2) + "\n")
    for old in folder.glob("epoch-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


class _RecordingFile:
    """A file that remembers the ``OSError`` of a failed write."""

    def __init__(self, handle):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _save(handle, payload: dict[str, Any]) -> None:
    """``torch.save`` into an open file, raising the ``OSError`` of a failed write.

    torch reports a failed write (a full disk, a read-only folder, a file-size limit) as a
    ``RuntimeError`` ("unexpected pos …") that has lost the reason; the caller needs the
    ``OSError`` to say what happened and where (:func:`.run_dir.writing_into`).
    """
    recording = _RecordingFile(handle)
    try:
        torch.save(payload, recording)
    except RuntimeError:
        if recording.error is not None:
            raise recording.error from None
        raise


def state_epoch(run_dir: Path) -> int | None:
    """The last complete epoch of a run (0-based), or None when none completed (or the
    pointer cannot be read: :func:`load_state` says why)."""
    try:
        return _read_pointer(run_dir)["epoch"]
    except CheckpointError:
        return None


def state_file(run_dir: Path) -> Path:
    """The state file ``last.json`` names (or the ``state/`` folder when it names none)."""
    try:
        return run_dir / STATE_DIR / _read_pointer(run_dir)["file"]
    except CheckpointError:
        return run_dir / STATE_DIR


def load_state(run_dir: Path) -> dict[str, Any]:
    """The state ``last.json`` names, checked against its sha256, read through the checkpoint
    reader (a regular file, scanned within its limits, ``weights_only``) and checked for
    the types :class:`~torchgraft.engine.session.Session` restores.

    The builder its fingerprint records is not judged here (a report reads the state too and
    builds nothing): whoever builds from it checks it (:mod:`torchgraft.model.build_record`).

    Raises:
        CheckpointError: no completed epoch to resume from, or a damaged or crafted state.
    """
    pointer = _read_pointer(run_dir)
    path = run_dir / STATE_DIR / pointer["file"]
    try:
        matches = sha256_file(path) == pointer["sha256"]
    except OSError:
        matches = False
    if not matches:
        raise CheckpointError(
            f"{path}: missing or does not match the sha256 in {POINTER}: the resume state was "
            "changed or damaged; it cannot be resumed exactly"
        )
    state = read_torch_data(path)
    problems = _state_problems(state, pointer["epoch"])
    if problems:
        raise CheckpointError(f"{path}: not a torchgraft resume state ({'; '.join(problems[:4])})")
    return state


def _read_pointer(run_dir: Path) -> dict[str, Any]:
    """``state/last.json``, checked: epoch, a state file name in ``state/``, a sha256."""
    pointer_path = run_dir / STATE_DIR / POINTER
    if not os.path.lexists(pointer_path):
        raise CheckpointError(
            f"{run_dir}: no resume state (state/{POINTER}); the run did not finish an epoch — "
            "start it again instead"
        )
    pointer = read_json(pointer_path, CheckpointError, _POINTER_LIMITS)
    if not (
        isinstance(pointer, dict)
        and whole(pointer.get("epoch"), 0, 10**9)
        and isinstance(pointer.get("file"), str)
        and _STATE_NAME.fullmatch(pointer["file"])
        and isinstance(pointer.get("sha256"), str)
        and _SHA256.fullmatch(pointer["sha256"])
    ):
        raise CheckpointError(
            f"{pointer_path}: not a resume pointer torchgraft wrote (epoch, file "
            "state/epoch-NNNN.pt, sha256)"
        )
    return pointer


#: What :meth:`Session._restore` reads, by type (a crafted state of other types is refused).
_STATE_TYPES = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "step": int,
    "lr_trace": list,
    "history": list,
    "policies": list,
    "stage_steps": list,
    "best": dict,
    "stale": int,
    "rng": dict,
    "fingerprint": dict,
}


def _state_problems(state: Any, epoch: int) -> list[str]:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return [f"format is not {STATE_FORMAT}"]
    problems = (
        [] if state.get("epoch") == epoch else [f"its epoch is not {epoch}, as {POINTER} says"]
    )
    for key, kind in _STATE_TYPES.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            problems.append(f"{key!r} is not a {kind.__name__}")
    model = state.get("model")
    if isinstance(model, dict) and not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        problems.append("'model' must map names to tensors")
    fingerprint = state.get("fingerprint")
    if isinstance(fingerprint, dict) and not (
        isinstance(fingerprint.get("build"), dict)
        and isinstance(fingerprint.get("classes"), list)
        and isinstance(fingerprint.get("keys"), dict)
    ):
        problems.append("'fingerprint' must hold build, classes and keys")
    return problems + _plan_problems(state, epoch)


def _plan_problems(state: dict[str, Any], epoch: int) -> list[str]:
    """The run's epoch plan, optional (a state saved before it was kept holds neither field):
    ``epochs`` past the saved epoch, ``extended`` increasing epochs within it."""
    problems = []
    epochs = state.get("epochs")
    if "epochs" in state and not whole(epochs, epoch + 1, 10**9):
        problems.append(f"'epochs' is not a whole number from {epoch + 1} (the epochs done) up")
    extended = state.get("extended")
    if "extended" in state and not (
        isinstance(extended, list)
        and all(whole(point, 1, 10**9) for point in extended)
        and extended == sorted(set(extended))
    ):
        problems.append("'extended' is not an increasing list of epochs")
    return problems


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove temporary files (``.NAME.*.tmp``) a killed process left in the run directory."""
    removed = []
    for folder in (run_dir, run_dir / STATE_DIR):
        if folder.is_dir():
            for temporary in folder.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
                removed.append(temporary)
    return removed
