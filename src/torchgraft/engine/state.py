"""The resume state: everything needed to continue a run exactly where an epoch ended.

At the end of every epoch the engine saves model weights, optimizer state (by parameter
name, so it survives an unfreeze), LR scheduler, EMA weights, every random generator (torch,
CUDA, NumPy, Python, and the data-order generator), the metrics so far and the early-stopping
counters, as ``state/epoch-NNNN.pt``; then ``state/last.json`` names that file with its
sha256; then older state files are removed. Each write is atomic, so at every instant
``last.json`` names a complete file. Temporary files a killed process left behind are never
read, and :func:`clean_temporaries` removes them at the next start.

The file is a torch pickle of tensors and plain data only; it is read back with
``weights_only=True`` (NumPy's generator state is stored as a tensor for that reason).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import CheckpointError
from ..grafting.save import sha256_file

__all__ = [
    "STATE_FORMAT",
    "capture_rng",
    "clean_temporaries",
    "load_state",
    "restore_rng",
    "save_state",
    "state_epoch",
]

STATE_FORMAT = "torchgraft.resume/1"
STATE_DIR = "state"
POINTER = "last.json"


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
    """The last complete epoch of a run (0-based), or None when none completed."""
    pointer = run_dir / STATE_DIR / POINTER
    if not pointer.exists():
        return None
    try:
        return int(json.loads(pointer.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_state(run_dir: Path) -> dict[str, Any]:
    """The state ``last.json`` names, checked against its sha256.

    Raises:
        CheckpointError: no completed epoch to resume from, or a damaged state file.
    """
    pointer_path = run_dir / STATE_DIR / POINTER
    if not pointer_path.exists():
        raise CheckpointError(
            f"{run_dir}: no resume state (state/{POINTER}); the run did not finish an epoch — "
            "start it again instead"
        )
    try:
        pointer = json.loads(pointer_path.read_text())
        path = run_dir / STATE_DIR / Path(pointer["file"]).name
        expected = pointer["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer_path}: unreadable ({exc})") from None
    if not path.exists() or sha256_file(path) != expected:
        raise CheckpointError(
            f"{path}: missing or does not match the sha256 in {POINTER}: the resume state was "
            "changed or damaged; it cannot be resumed exactly"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise CheckpointError(f"{path}: cannot read the resume state ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a torchgraft resume state")
    return state


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove temporary files (``.NAME.*.tmp``) a killed process left in the run directory."""
    removed = []
    for folder in (run_dir, run_dir / STATE_DIR):
        if folder.is_dir():
            for temporary in folder.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
                removed.append(temporary)
    return removed
