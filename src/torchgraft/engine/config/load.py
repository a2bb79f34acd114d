"""The run configuration: one typed, nested document, validated before any tensor exists.

Values come, later ones winning, from the defaults (the embedded default run, see
:mod:`.sections`), a YAML file (``--config run.yaml``) and dotted overrides
(``--train.epochs 1``, ``--optim.lr=0.01`` or ``optim.lr=0.01``).

Parsing and type checks are pydantic's; :func:`load_config` adds what pydantic cannot know
(files that must exist, model names the zoo must know, combinations that contradict each
other, :mod:`.checks`) and reports *every* problem at once in one
:class:`~torchgraft.errors.ConfigError`, each with its dotted key, the value found and, for
unknown keys, the closest known one. Nothing here imports torch unless the model name is
checked (``check_names``): validation errors are instant, and so is ``--print-config`` of
a config without an unfreezing schedule (:mod:`.show`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ...checkpoint.documents import UNBUILDABLE, DocumentLimits, check_yaml_bounds, read_yaml
from ...errors import ConfigError
from .checks import describe_errors, reference_problems, semantic_problems, summary
from .sections import (
    CONFIG_OPTIONS,
    DEFAULT_SOURCE_MODEL,
    DEFAULT_WEIGHTS,
    DataConfig,
    FreezeConfig,
    GraftConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PeftConfig,
    ProgressiveConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    TwoPhaseConfig,
    UnfreezeAtConfig,
    WeightsConfig,
)

__all__ = [
    "CONFIG_OPTIONS",
    "DEFAULT_SOURCE_MODEL",
    "DEFAULT_WEIGHTS",
    "DataConfig",
    "FreezeConfig",
    "GraftConfig",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PeftConfig",
    "ProgressiveConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TwoPhaseConfig",
    "UnfreezeAtConfig",
    "WeightsConfig",
    "load_config",
    "parse_overrides",
]

#: A config is a few hundred values; no config nests deeper than a schedule inside a section.
_LIMITS = DocumentLimits(max_bytes=4 << 20, max_depth=32, max_nodes=100_000)


def load_config(
    source: str | Path | Mapping[str, Any] | RunConfig | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    check_paths: bool = True,
    check_names: bool = True,
) -> RunConfig:
    """The validated configuration from defaults, a YAML file or mapping, and overrides.

    Args:
        source: a YAML file, a mapping (nested sections), a :class:`RunConfig`, or None for
            the embedded default.
        overrides: ``["--train.epochs", "1", "optim.lr=0.01"]`` or ``{"train.epochs": 1}``.
        check_paths: also check that the files and folders named exist.
        check_names: also check that the zoo knows the model name (imports torch and the
            model library: seconds, so ``--print-config`` skips it).

    Returns:
        A :class:`RunConfig`.

    Raises:
        ConfigError: listing every problem, each with its dotted key and the value found.

    Example:
        >>> config = load_config(None, ["--train.epochs", "1"])
        >>> config.train.epochs
        1
    """
    data = _source_data(source)
    pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    problems: list[str] = []
    # A new schedule kind first: it starts that kind afresh, and the other overrides refine it.
    for key, value in sorted(pairs.items(), key=lambda pair: not pair[0].endswith(".kind")):
        _set_dotted(data, key, value, problems)
    problems += reference_problems(data, check_paths, check_names)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems += describe_errors(exc.errors())
        raise ConfigError(summary(problems)) from None
    problems += semantic_problems(config)
    if problems:
        raise ConfigError(summary(problems))
    return config


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """Dotted overrides from command-line words, values parsed as YAML scalars/lists.

    ``--train.epochs 1``, ``--train.epochs=1`` and ``train.epochs=1`` all give
    ``{"train.epochs": 1}``; ``--data.mean '[0.5, 0.5, 0.5]'`` gives a list; ``null`` gives None.

    Raises:
        ConfigError: a word that is not an override, or a key without a value.
    """
    result: dict[str, Any] = {}
    problems = []
    words = list(arguments)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        key, has_value, raw = word.lstrip("-").partition("=")
        key = key.replace("-", "_")  # --data.on-bad-image and --data.on_bad_image are the same
        if not key or ("." not in key and not word.startswith("--")):
            problems.append(f"{word!r} is not an override; write --section.key VALUE")
            continue
        if not has_value:
            if index >= len(words) or (words[index].startswith("--") and "." in words[index]):
                problems.append(f"--{key} needs a value")
                continue
            raw = words[index]
            index += 1
        result[key] = _scalar(raw)
    if problems:
        raise ConfigError(summary(problems))
    return result


def _scalar(raw: str) -> Any:
    if not raw.strip():
        return raw
    try:  # too deep or an alias bomb: a ConfigError, raised from here
        check_yaml_bounds(raw, f"the override value {raw[:40]!r}", ConfigError, _LIMITS)
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # a plain string such as a path with a colon
    except UNBUILDABLE as exc:
        if isinstance(exc, ConfigError):
            raise
        # words YAML cannot make a value of (2001-02-30, !!int): the option's own type check
        # says what is wrong with them
        return raw


def _source_data(source: Any) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, RunConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        return _plain(source)
    path = Path(source)
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such config file")
    # A regular file of bounded size, nesting and alias expansion (--config /dev/zero, a
    # FIFO or a YAML alias bomb is refused, not read until memory runs out).
    document = read_yaml(path, ConfigError, _LIMITS)
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"{path}: a config is a mapping of sections (model:, data:, train: …), "
            f"got a {type(document).__name__}"
        )
    return _plain(document)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def _set_dotted(data: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            # A sub-section not written yet starts from its default (freeze.schedule.lr_mult=5
            # changes the default schedule rather than making one without a kind).
            child = node[part] = _default_subsection(parts[: depth + 1])
        if not isinstance(child, dict):
            problems.append(f"{'.'.join(parts[: depth + 1])}: is a value, not a section")
            return
        node = child
    if parts[-1] == "kind" and node.get("kind", value) != value:
        node.clear()  # another kind's fields (e.g. the default two_phase's) do not apply
    node[parts[-1]] = value


def _default_subsection(path: list[str]) -> dict[str, Any]:
    if len(path) < 2:
        return {}
    value: Any = RunConfig()
    for part in path:
        value = getattr(value, part, None)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else {}
