"""The run directory: one folder per run, every file in it written atomically.

::

    runs/2026-11-29_120000-tf_efficientnet_lite0/
      config.yaml          the resolved configuration (what --resume reads back)
      graft.json           how the pretrained weights entered the model (GraftReport)
      policy.json          freeze summary and optimizer groups of each unfreezing stage
      bad_images.txt       files left out with --data.on_bad_image skip (only then)
      metrics.csv          one row per epoch and split (scalars)
      metrics.jsonl        the same rows with per-class metrics and confusion matrices
      curves.png  lr.png  confusion.png
      model.safetensors    the best model …
      model.json           … how to rebuild it, its classes, preprocessing, metrics, sha256
      state/               the resume state of the last complete epoch
      report.html          one self-contained page of all the above (refreshed each epoch)
      torchrun.json        under torchrun: the rendezvous id and the number of processes

Metrics files are rewritten whole (they are small) after the epoch's resume state is on
disk, so a row never describes an epoch a resume would repeat.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import ConfigError, OutputError
from ..wording import option

__all__ = ["CSV_FIELDS", "RunDirectory", "writing_into"]

#: Columns of metrics.csv, in order.
CSV_FIELDS = (
    "epoch",
    "split",
    "stage",
    "loss",
    "acc1",
    "acc5",
    "precision",
    "recall",
    "f1",
    "lr",
    "count",
    "seconds",
    "cached",
)


class RunDirectory:
    """Paths and writers of one run's folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, parent: str | Path, name: str | None, model_name: str) -> RunDirectory:
        """A new, empty run folder ``parent/name`` (default name: time stamp + model).

        Raises:
            ConfigError: ``name`` given and that folder already holds a run.
        """
        parent = Path(parent)
        if name is None:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
            short = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name.split(":")[-1])[:40]
            name = f"{stamp}-{short}"
            candidate, suffix = parent / name, 1
            while candidate.exists():
                suffix += 1
                candidate = parent / f"{name}-{suffix}"
        else:
            candidate = parent / name
            if candidate.exists() and any(candidate.iterdir()):
                raise ConfigError(
                    f"output.name: {candidate} already holds files; choose another name, or "
                    f"continue that run with {option('resume', str(candidate))}"
                )
        candidate.mkdir(parents=True, exist_ok=True)
        return cls(candidate)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, document: Any) -> Path:
        return atomic_write_text(
            self.file(name), json.dumps(document, indent=2, default=str) + "\n"
        )

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.file(name), text)

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite metrics.jsonl (every field) and metrics.csv (:data:`CSV_FIELDS`)."""
        lines = "".join(json.dumps(row, default=_json_default) + "\n" for row in rows)
        atomic_write_text(self.file("metrics.jsonl"), lines)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_FIELDS})
        atomic_write_text(self.file("metrics.csv"), buffer.getvalue())


@contextlib.contextmanager
def writing_into(folder: Path, *, resumable: bool = True) -> Iterator[None]:
    """Turn a failed write into ``folder`` (a full disk, a read-only folder, a file-size
    limit) into an :class:`~torchgraft.errors.OutputError` that names the folder.

    Every write goes through :mod:`torchgraft.atomic`, so the files saved before the failure
    are intact; the error says so, and how to go on.

    Args:
        folder: the run directory (or the folder it was to be created in).
        resumable: a run exists there that ``resume`` can continue.

    Raises:
        OutputError: from the ``OSError`` the block raised (exit status 2 on the CLI).
    """
    try:
        yield
    except (OutputError, BrokenPipeError):
        raise  # already said by an inner block; or stdout's reader went away, not the folder
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        then = (
            f"what was saved before is intact: make room (or make it writable) and continue "
            f"with {option('resume', str(folder))}, or choose another output.dir"
            if resumable
            else "make room (or make it writable), or choose another output.dir"
        )
        raise OutputError(f"cannot write into {folder}: {reason}; {then}") from exc


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _json_default(value: Any) -> Any:
    return str(value)
