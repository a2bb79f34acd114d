"""A run directory read to be continued, and the refusal of a run that is no longer the same.

:func:`read_run` reads what a resume needs, as data (the files may be a stranger's), and
refuses before anything is built or written what cannot continue: overrides that change
what the run is (:func:`.changes.check_overrides`) and a ``train.epochs`` below the epochs
done (:func:`.budget.check_epochs`). Once the model and data are built, :func:`check_same_run`
compares them with the fingerprint the state saved (a hand-edited ``config.yaml``, files
added to the data folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...adapters import adapter_config
from ...errors import ConfigError
from ...model.build_record import Trust, check_recorded_builder
from ..artifacts import build_document, read_model_document
from ..config.load import RunConfig, load_config
from ..run_dir import RunDirectory
from .budget import check_epochs
from .changes import check_overrides, saved_config
from .state import clean_temporaries, load_state

if TYPE_CHECKING:
    from ...data.prepare import PreparedData
    from ..setup import ModelSetup

__all__ = ["check_same_run", "read_run", "resumed_config", "run_fingerprint"]

#: A key of the model's build record -> the config key that sets it.
_BUILD_KEYS = {
    "model": "model.name",
    "kwargs": "model.kwargs",
    "in_chans": "model.in_chans",
    "num_classes": "head.num_classes",
}


def read_run(
    resume: str | Path, overrides, trusted: Trust
) -> tuple[RunConfig, RunDirectory, dict[str, Any]]:
    """A run directory to continue: its config.yaml (with ``overrides``), its resume state and
    its best model's record, each read as data (the files may be a stranger's): the model is
    named by a file, so it must be a torchvision/timm model or ``trusted``.

    A state saved before the run's epoch plan was kept gets it from config.yaml
    (``epochs``; ``extended``: none).

    Raises:
        ConfigError: not a run directory; an override that changes what the run is; fewer
            ``train.epochs`` than the epochs done.
        CheckpointError, UntrustedRunError: see :func:`.state.load_state` and the builder's
            opt-in.
    """
    directory, saved, config = resumed_config(resume, overrides)
    path = directory.file("config.yaml")
    clean_temporaries(directory.path)
    check_recorded_builder(config.model.name, f"{path}: model.name", trust_run=trusted)
    state = load_state(directory.path)
    state.setdefault("epochs", max(saved.train.epochs, state["epoch"] + 1))
    state.setdefault("extended", [])
    check_epochs(directory.path, state, config)
    if os.path.lexists(directory.path / "model.safetensors"):
        # The best model is kept unless the resumed epochs beat it: a damaged file would
        # otherwise end the run as its result, unread and unchecked.
        read_model_document(directory.path, trust_run=trusted)
    return config, directory, state


def resumed_config(
    resume: str | Path, overrides, *, check_paths: bool = True
) -> tuple[RunDirectory, RunConfig, RunConfig]:
    """The run directory ``resume``, its config.yaml as saved, and the same with
    ``overrides``, checked as a resume checks them before anything is built or written (``--print-config --resume``
    shows no configuration a resume would refuse).

    Raises:
        ConfigError: not a run directory; an override that changes what the run is.
    """
    directory = RunDirectory(Path(resume))
    path = directory.file("config.yaml")
    if not os.path.lexists(path):
        raise ConfigError(
            f"{resume}: not a run directory (no config.yaml); give the folder train created"
        )
    # Model names are checked against the saved state, not imported to be checked.
    config = load_config(path, overrides, check_paths=check_paths, check_names=False)
    saved = saved_config(directory.path)
    check_overrides(directory.path, saved, config)
    return directory, saved, config


def run_fingerprint(setup: ModelSetup, data: PreparedData) -> dict[str, Any]:
    """What must not change for a run to be resumed: model build, classes, data, tensors."""
    return {
        "build": setup.build,
        "classes": list(data.classes),
        "data": data.source.fingerprint(),
        "keys": {k: list(v.shape) for k, v in setup.model.state_dict().items()},
        # the adapters' record (plain data): a resume re-creates them before loading
        "adapters": adapter_config(setup.model) if setup.adapters is not None else None,
    }


def check_same_run(
    state: dict[str, Any], config: RunConfig, setup: ModelSetup, data: PreparedData
) -> None:
    """Refuse to resume when the model, the classes or the data differ from the saved run.

    Raises:
        ConfigError: naming each difference (a model setting by its config key).
    """
    saved, now = state["fingerprint"], run_fingerprint(setup, data)
    asked = build_document(config, config.head.num_classes or len(data.classes))
    differences = _build_differences(saved["build"], asked)
    if saved["classes"] != now["classes"]:
        differences.append(f"classes were {saved['classes']}, now {now['classes']}")
    if saved["data"] != now["data"]:
        differences.append("the dataset changed (files added, removed, relabelled or resized)")
    if saved["keys"] != now["keys"]:
        differences.append("the model's tensors changed")
    if differences:
        raise ConfigError(
            "cannot resume exactly: " + "; ".join(differences) + "; start a new run instead"
        )


def _build_differences(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """``model.name was 'a', now 'b'``: the build record's differences, by config key (the
    head's options one by one)."""
    pairs = []
    for key, value in asked.items():
        if key == "head" and isinstance(value, dict):
            before = saved.get("head") if isinstance(saved.get("head"), dict) else {}
            pairs += [(f"head.{k}", before.get(k), v) for k, v in value.items()]
        else:
            pairs.append((_BUILD_KEYS.get(key, key), saved.get(key), value))
    return [f"{key} was {old!r}, now {new!r}" for key, old, new in pairs if old != new]
