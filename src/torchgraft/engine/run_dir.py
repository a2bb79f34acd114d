"""The run directory: one folder per run, every file in it written atomically.

::

    runs/2026-11-29_120000-tf_efficientnet_lite0/
      config.yaml          the resolved configuration (what --resume reads back)
      graft.json           how the pretrained weights entered the model (GraftReport)
      policy.json          freeze summary and optimizer groups of each unfreezing stage
      decisions.json       what the engine chose (precision, cache, ...) and why
      bad_images.txt       files left out with --data.on_bad_image skip (only then)
      metrics.csv          one row per epoch and split (scalars)
      metrics.jsonl        the same rows with per-class metrics and confusion matrices
      curves.png  lr.png  confusion.png
      model.safetensors    the best model …
      model.json           … how to rebuild it, its classes, preprocessing, metrics, sha256
      state/               the resume state of the last complete epoch
      report.html          one self-contained page of all the above (refreshed each epoch)
      phases.json          the wall time of the last train command that ran, by phase, and
                           the epochs done when it finished (written last)
      resumes.json         each resume that trained: after which epoch, what it changed
      torchrun.json        under torchrun: the rendezvous id and the number of processes

Metrics files are rewritten whole (they are small) after the epoch's resume state is on
disk, so a row never describes an epoch a resume would repeat.

A run owns its folder alone. :meth:`RunDirectory.create` makes it with one ``mkdir`` of its
final name, which fails when anything is there, so two runs started together never share
one: with ``output.name`` the second is refused (:class:`~torchgraft.errors.ConfigError`,
naming the folder); a stamped default name takes the next free ``-2``, ``-3``, … A folder
this process made and left empty (a start that failed: train's run folder, lr-find's, and
``output.dir`` itself when this process made it) is removed when the process exits, and the
thread that made a run folder may use it again before then (``tg.fit`` tried again). A
folder that holds anything — a resumed run's, another run's — is never removed.
:func:`run_file` says which paths are the run's own (:data:`RUN_FILES`, anything in a
sub-folder, hidden temporaries), for writers that must never replace them (``export -o``).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import datetime
import errno
import io
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, landing, within
from ..errors import ConfigError, OutputError
from ..text import printable
from ..wording import option

__all__ = [
    "CSV_FIELDS",
    "RUN_FILES",
    "RunDirectory",
    "is_run_directory",
    "make_folder",
    "make_stamped_folder",
    "run_file",
    "writing_into",
]

#: Every name a run writes at the top of its folder (the layout above), and the picture
#: ``torchgraft eval`` adds. Everything in a sub-folder (``state/``) is the run's too, and so
#: is every hidden name (the temporary file of a write in progress).
#: tests/security/test_output_run_files.py checks this against the files of a real run.
RUN_FILES = frozenset(
    {
        "config.yaml",
        "graft.json",
        "policy.json",
        "decisions.json",
        "bad_images.txt",
        "metrics.csv",
        "metrics.jsonl",
        "curves.png",
        "lr.png",
        "confusion.png",
        "model.safetensors",
        "model.json",
        "state",
        "report.html",
        "phases.json",
        "resumes.json",
        "test_metrics.json",
        "torchrun.json",
        "eval_confusion.png",
    }
)
#: How many ``-N`` suffixes a stamped name tries before giving up (a second's worth of runs).
_MAX_SUFFIX = 1000

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
        """A new, empty run folder ``parent/name``, made by this call and by no other.

        The default name is a time stamp and the model; when that folder exists (a run
        started in the same second), ``-2``, ``-3``, … are tried. An existing folder is
        never adopted, not even an empty one (another run may have made it a moment ago),
        with one exception: an empty folder this thread made in an earlier call. That
        call's run is over (a thread runs one at a time) and wrote nothing, so its start
        failed, and the same command can be tried again (the folder is removed at exit).

        Raises:
            ConfigError: ``name`` given and something is already there (says to choose
                another name, or to resume the run that is there).
            OSError: ``parent`` cannot be made or written in.
        """
        parent = Path(parent)
        if name is None:
            return cls(make_stamped_folder(parent, model_name))
        folder = parent / name
        try:
            _make_alone(folder)  # exclusive: checking first and creating then would race
        except FileExistsError:
            if not _failed_here(folder):
                raise ConfigError(_taken(folder)) from None
        return cls(folder)

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


def is_run_directory(folder: str | os.PathLike) -> bool:
    """Does ``folder`` hold a run (its ``config.yaml``)?"""
    return (Path(folder) / "config.yaml").is_file()


def run_file(folder: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """Why an atomic write to ``path`` would replace a file of the run in ``folder``, or None.

    The run's files are the names in :data:`RUN_FILES` (whether written yet or not: a run
    may still be going, or write them at its end), hidden names, and everything in a
    sub-folder. Names are compared ignoring case, as a case-insensitive filesystem would.

    Returns:
        e.g. ``"the run's own config.yaml"``, ``"inside the run's state/ folder"``; None when
        ``path`` is outside ``folder`` or a new top-level name no run writes.
    """
    where, folder = landing(path), Path(folder)
    if not within(where, folder):
        return None
    if _same_folder(where, folder):
        return "the run's folder itself"
    if not _same_folder(where.parent, folder):
        try:
            inside = where.relative_to(folder.resolve()).parts[0] + "/"
        except ValueError:  # the same folder reached under another name
            inside = "a sub-"
        return f"inside the run's {inside} folder"
    name = where.name.casefold()
    if name in {own.casefold() for own in RUN_FILES}:
        return f"the run's own {where.name}"
    if name.startswith("."):
        return f"a hidden file of the run ({where.name})"
    return None


def _same_folder(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def make_stamped_folder(parent: Path, model_name: str, kind: str = "") -> Path:
    """``parent/<time stamp>-<model>[-kind]``, or the first of ``…-2``, ``…-3`` nobody made
    yet: each name is taken by one ``mkdir``, so two runs (or sweeps) started in the same
    second never share a folder. Removed at exit if it is still empty (a start that failed).

    Raises:
        OutputError: every suffix is taken. OSError: ``parent`` cannot be made.
    """
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    short = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name.split(":")[-1])[:40]
    base = f"{stamp}-{short}" + (f"-{kind}" if kind else "")
    for suffix in range(1, _MAX_SUFFIX + 1):
        folder = parent / (base if suffix == 1 else f"{base}-{suffix}")
        try:
            _make_alone(folder)  # the name is ours only if this call made it
        except FileExistsError:
            continue
        return folder
    raise OutputError(
        f"cannot make a run folder in {printable(parent)}: {base} and {base}-2 … "
        f"-{_MAX_SUFFIX} all exist; set output.name"
    )


def _taken(folder: Path) -> str:
    shown = printable(folder)
    if not folder.is_dir():
        return f"output.name: {shown} exists and is not a folder; choose another name"
    with contextlib.suppress(OSError):
        if not any(folder.iterdir()):
            return (
                f"output.name: {shown} already exists, empty (a start that failed or was "
                "killed leaves one; another run may also have just made it): remove it if no "
                "run is using it, or choose another name"
            )
    return (
        f"output.name: {shown} already holds files; choose another name, or continue that "
        f"run with {option('resume', str(folder))}"
    )


#: Folders this process made: (path, device, inode, thread), removed at exit if empty.
_MADE_HERE: list[tuple[Path, int, int, int]] = []


def make_folder(folder: str | os.PathLike) -> Path:
    """``folder`` and its missing parents, like ``mkdir -p``; those this call made are
    removed at exit if still empty (a start that failed leaves nothing behind).

    Raises:
        OSError: a parent cannot be made (no permission); NotADirectoryError: a file is
            in the way.
    """
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    for path in missing:  # outermost first; each one only if nobody made it meanwhile
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        _remove_at_exit_if_empty(path)
    if not folder.is_dir():  # a file in the way (FileExistsError would read "name taken")
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(folder))
    return folder


def _make_alone(folder: Path) -> None:
    """Make ``folder`` with one exclusive ``mkdir`` (its parents as :func:`make_folder`),
    removed at exit if left empty.

    Raises:
        FileExistsError: something is there already (the name is not ours).
    """
    for _ in range(3):
        make_folder(folder.parent)
        try:
            os.mkdir(folder)
            break
        except FileNotFoundError:
            continue  # the parent was removed in between (a failed run that made it exited)
    else:
        os.mkdir(folder)  # the parent keeps vanishing: let the OSError say so
    _remove_at_exit_if_empty(folder)


def _remove_at_exit_if_empty(folder: Path) -> None:
    """A start that fails after the folder is made (bad data, a typo in the model) must not
    leave an empty folder behind: with ``output.name`` it would refuse the next attempt."""
    if not _MADE_HERE:
        atexit.register(_remove_empty_folders)
    info = folder.stat()
    _MADE_HERE.append((folder.absolute(), info.st_dev, info.st_ino, threading.get_ident()))


def _failed_here(folder: Path) -> bool:
    """Is ``folder`` an empty run folder this thread made, so a start that failed?"""
    with contextlib.suppress(OSError):
        info, absolute = folder.stat(), folder.absolute()
        mine = (absolute, info.st_dev, info.st_ino, threading.get_ident())
        return mine in _MADE_HERE and not any(folder.iterdir())
    return False


def _remove_empty_folders() -> None:
    # Innermost first: a run folder, then the output.dir it emptied by going.
    for folder, device, inode, _ in reversed(_MADE_HERE):
        with contextlib.suppress(OSError):
            info = folder.stat()
            if (info.st_dev, info.st_ino) == (device, inode):  # still the folder we made
                folder.rmdir()  # fails unless empty: a run that wrote anything keeps it


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _json_default(value: Any) -> Any:
    return str(value)
