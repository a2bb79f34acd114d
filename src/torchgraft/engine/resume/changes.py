"""What a resume may change in a run's configuration, and the record of what it changed.

A resume continues *the same run*: its ``config.yaml`` with dotted overrides. An override
that changes what the run trains or how (the model, the head, the data, the image size, the
optimizer, the LR schedule, the seed, …) would leave a run whose first epochs were one
thing and whose last are another, and whose ``config.yaml`` describes neither: such
overrides are refused together, before anything is built or written
(:func:`check_overrides`), with the command that starts a new run from this one's
configuration instead. The keys a resume may change are an explicit allow-list
(:data:`SAFE_ON_RESUME`): how long the run goes on, and where and how fast the same steps
run. A ``data.source`` that names the very same folder or file (another spelling of its
path) is not a change of data.

Every resume that trains is recorded in the run directory's ``resumes.json``
(:func:`record_resume`): a list, oldest first, of the epoch it resumed after, the time, and
each key it changed with its old and new values. ``config.yaml`` takes the new values — it
is the plan the next resume continues — so ``resumes.json`` is where what changed, and when,
is kept.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ...checkpoint.documents import DocumentLimits, read_json
from ...errors import CheckpointError, ConfigError
from ...wording import in_cli
from ..config.load import RunConfig, load_config
from ..run_dir import RunDirectory

__all__ = [
    "RESUMES",
    "SAFE_ON_RESUME",
    "changed_keys",
    "check_overrides",
    "new_run_command",
    "record_resume",
    "saved_config",
]

#: The run directory's record of its resumes.
RESUMES = "resumes.json"
_LIMITS = DocumentLimits(max_bytes=4 << 20, max_depth=8)

#: The keys a resume may change, each with why that leaves the run the same run. Every
#: other key describes what trains, on what, and how; docs/training.md has the table.
SAFE_ON_RESUME: dict[str, str] = {
    "train.epochs": "how long the run goes on: more epochs extend it, fewer end it sooner",
    "train.early_stopping": "when the run stops, not how an epoch trains",
    "train.device": "where the same steps run",
    "train.threads": "how many CPU threads run the same steps",
    "train.feature_cache": "cached features train the head as full passes do, in the same "
    "batch order",
    "model.channels_last": "the memory layout of the same tensors",
    "model.compile": "the same forward pass, compiled",
    "data.workers": "how many processes read the same images",
    "data.in_memory": "the same decoded images, kept in memory or streamed",
    "data.memory_limit_mb": "how much memory the same data may take",
    "data.eval_batch_size": "how many images are evaluated at once: the metrics are the same",
    "output.plots": "whether PNG plots are drawn",
}

_ABSENT = "(unset)"


def changed_keys(saved: RunConfig, config: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every value of ``config`` that differs from
    ``saved``, in the sections' order; a sub-section present on one side only (another
    ``freeze.schedule`` kind, or none) is one difference."""
    return list(_differences(saved.to_dict(), config.to_dict(), ""))


def _differences(old: Any, new: Any, key: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict) and old.get("kind") == new.get("kind"):
        for name in dict.fromkeys([*old, *new]):
            inner = f"{key}.{name}" if key else str(name)
            yield from _differences(old.get(name, _ABSENT), new.get(name, _ABSENT), inner)
    elif old != new:
        yield key, old, new


def check_overrides(folder: Path, saved: RunConfig, config: RunConfig) -> None:
    """Refuse, at once, every override that changes what the run is.

    Args:
        folder: the run directory (named in the message).
        saved: its ``config.yaml`` as saved.
        config: the same with the resume's overrides.

    Raises:
        ConfigError: one or more keys outside :data:`SAFE_ON_RESUME` changed; the message
            names each with its old and new value, and the command that starts a new run
            from this one's configuration with them.
    """
    refused = [
        (key, old, new)
        for key, old, new in changed_keys(saved, config)
        if key not in SAFE_ON_RESUME and not _same_data(key, old, new)
    ]
    if not refused:
        return
    listed = [f"{key} was {_shown(old)}, now {_shown(new)}" for key, old, new in refused]
    fork = new_run_command(folder, {key: new for key, _, new in refused})
    if len(refused) == 1:
        found = f"an override that changes what the run is: {listed[0]}. "
    else:
        found = "".join(f"\n  {line}" for line in listed)
        found = f"overrides that change what the run is:{found}\n"
    raise ConfigError(
        f"{folder}: cannot resume with {found}A resume continues the same run; it may change "
        f"only how long it goes on and where and how fast it runs "
        f"({', '.join(SAFE_ON_RESUME)}). To train with "
        f"{'this setting' if len(refused) == 1 else 'these settings'}, start a new run from "
        f"this one's configuration: {fork}{_moved_data(refused)}"
    )


def _same_data(key: str, old: Any, new: Any) -> bool:
    """``data.source`` spelled another way: the same existing folder or file."""
    if key != "data.source" or not isinstance(old, str) or not isinstance(new, str):
        return False
    try:
        return os.path.samefile(old, new)
    except OSError:  # one of them does not exist (or cannot be looked at): not the same
        return False


def _moved_data(refused: list[tuple[str, Any, Any]]) -> str:
    """For a refused ``data.source`` whose saved path is gone: how to resume moved data."""
    for key, old, _ in refused:
        if key == "data.source" and isinstance(old, str) and not os.path.lexists(old):
            return (
                f". If the data moved: a resume reads it where config.yaml says ({old!r}); "
                "put it back there, or link that path to it"
            )
    return ""


def new_run_command(folder: Path, overrides: Mapping[str, Any]) -> str:
    """The command (or ``tg.fit`` call) that starts a new run from ``folder``'s
    configuration with ``overrides`` and another ``output.name`` (``NEW``)."""
    settings = {**overrides, "output.name": "NEW"}
    config = str(Path(folder) / "config.yaml")
    if in_cli():
        words = " ".join(f"--{key} {_shell_value(value)}" for key, value in settings.items())
        return f"torchgraft train --config {shlex.quote(config)} {words}"
    return f"tg.fit({config!r}, {settings!r})"


def _shell_value(value: Any) -> str:
    """An override value as one shell word, written as YAML (``null``, ``true``, ``[1, 2]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return shlex.quote(text)


def _shown(value: Any) -> str:
    return value if value == _ABSENT else repr(value)


def record_resume(directory: RunDirectory, config: RunConfig, done: int) -> None:
    """Append this resume to the run's ``resumes.json`` (written atomically): after ``done``
    epochs, now, and each key ``config`` changes in its ``config.yaml`` (read before it takes
    the new values), with the old and new value — all of them safe: :func:`check_overrides`
    ran.

    Raises:
        CheckpointError: the existing ``resumes.json`` is not a list of records.
    """
    path = directory.file(RESUMES)
    record = read_json(path, CheckpointError, _LIMITS) if os.path.lexists(path) else []
    if not (isinstance(record, list) and all(isinstance(entry, dict) for entry in record)):
        raise CheckpointError(
            f"{path}: not the record of resumes torchgraft writes (a list of objects); "
            "move it away to resume"
        )
    changes = [
        {"key": key, "was": old, "now": new}
        for key, old, new in changed_keys(saved_config(directory.path), config)
    ]
    entry = {
        "after_epoch": done,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "changes": changes,
    }
    directory.write_json(RESUMES, [*record, entry])


def saved_config(folder: Path) -> RunConfig:
    """``folder``'s ``config.yaml`` as saved, without the checks of the files and model it
    names (a resume checks them on the configuration it runs)."""
    return load_config(folder / "config.yaml", check_paths=False, check_names=False)
