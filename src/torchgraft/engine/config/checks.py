"""What the run configuration's types cannot say, and how every problem is told.

:func:`describe_errors` turns pydantic's errors into one line per problem (dotted key, the
value found, the closest known key); :func:`reference_problems` checks the names and files a
config refers to (on the raw values, so they are reported together with type errors);
:func:`semantic_problems` finds combinations that contradict each other.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .sections import SCHEDULE_MODELS, DataConfig, ModelConfig, RunConfig, WeightsConfig

__all__ = ["describe_errors", "exists", "reference_problems", "semantic_problems", "summary"]


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per problem; the members of a union (``int | 'auto'``) that each refused a
    value share its key's line, joined with "or"."""
    lines: list[str | list[Any]] = []
    plain: dict[str, list[Any]] = {}  # key -> [key, value found, messages]
    for error in errors:
        key, line = _describe(error)
        if line is not None:
            lines.append(line)
        elif key in plain:
            plain[key][2].append(error["msg"])
        else:
            plain[key] = [key, error.get("input"), [error["msg"]]]
            lines.append(plain[key])
    return [
        line
        if isinstance(line, str)
        else f"{line[0]}: {'; or '.join(line[2])}, got {_show(line[1])}"
        for line in lines
    ]


def _describe(error: Mapping[str, Any]) -> tuple[str, str | None]:
    """The dotted key of one pydantic error and its line (None: a plain "msg, got value")."""
    path, section = _key_path(error["loc"])
    key = ".".join(path)
    kind = error["type"]
    if kind == "extra_forbidden":
        return key, f"{key}: unknown key{_suggestion(path, section)}"
    if kind == "missing":
        return key, f"{key}: required"
    if kind == "union_tag_invalid":
        expected = [t.strip("' ") for t in str(error["ctx"]["expected_tags"]).split(",")]
        tag = str(error["ctx"]["tag"])
        close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return key, f"{key}.kind: unknown kind {tag!r}{hint} (known: {', '.join(expected)})"
    return key, None


def _key_path(location: Sequence[Any]) -> tuple[list[str], Any]:
    """The dotted key of a pydantic error location, and the section class holding its last
    part (None past a leaf value).

    pydantic also puts union members into the location: the schedule kind (``'two_phase'``,
    which picks the section to look in) and a leaf's type (``'constrained-int'``,
    ``"literal['auto']"``, ``'list[str]'``), which is not a key.
    """
    section: Any = RunConfig
    holder: Any = None
    path: list[str] = []
    for part in location:
        if section is None and part in SCHEDULE_MODELS:
            section = SCHEDULE_MODELS[part]
        elif section is not None:
            holder = section
            path.append(str(part))
            field = section.model_fields.get(part)
            annotation = field.annotation if field is not None else None
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            section = annotation if is_section else None
        elif isinstance(part, int):  # a list index
            path.append(str(part))
    return path, holder


def _suggestion(path: list[str], section: Any) -> str:
    """``"; did you mean 'optim.lr'?"`` from the fields of the enclosing section."""
    if section is None:
        return ""
    names = list(section.model_fields)
    close = difflib.get_close_matches(path[-1], names, n=1, cutoff=0.6)
    prefix = ".".join(path[:-1])
    if close:
        return f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    return f" (known: {', '.join(names)})"


def semantic_problems(config: RunConfig) -> list[str]:
    """What types cannot say: combinations that contradict each other."""
    problems = []
    schedule = config.freeze.schedule
    if schedule is not None:
        if config.freeze.policy != "none":
            problems.append(
                f"freeze.policy: got {config.freeze.policy!r}, but the unfreezing schedule "
                f"(freeze.schedule, kind {schedule.kind!r}) decides what trains; "
                "set freeze.schedule: null to use a fixed policy"
            )
        for name in ("backbone_lr", "layer_decay"):
            if getattr(config.optim, name) is not None:
                problems.append(
                    f"optim.{name}: got {getattr(config.optim, name)!r}, but the unfreezing "
                    f"schedule (freeze.schedule, kind {schedule.kind!r}) sets the LR of each "
                    f"layer group; set freeze.schedule: null to use optim.{name}"
                )
    if config.peft.enabled and config.freeze.bn in ("train", "stats"):
        problems.append(
            f"freeze.bn: got {config.freeze.bn!r}, but with adapters (peft.method "
            f"{config.peft.method!r}) BatchNorm statistics must stay as the frozen weights saw "
            "them: the adapters file does not carry statistics, and the merged model would "
            "not be what was trained; use frozen or fixed"
        )
    if config.graft.strategy == "rules" and not config.graft.rules:
        problems.append("graft.rules: strategy 'rules' needs a rules file, got none")
    if config.graft.rules and config.graft.strategy != "rules":
        problems.append(
            f"graft.rules: got {config.graft.rules!r}, but rules are only used with "
            f"graft.strategy: rules (got {config.graft.strategy!r})"
        )
    mean, std = config.data.mean, config.data.std
    if mean is not None and std is not None and len(mean) != len(std):
        problems.append(
            f"data.std: needs as many values as data.mean ({len(mean)}), got {len(std)}: {std}"
        )
    return problems


def reference_problems(data: Mapping[str, Any], check_paths: bool, check_names: bool) -> list[str]:
    """Names and files the config refers to, checked on the raw values (so they are reported
    together with type errors): the model name, and the files when ``check_paths``."""

    def value(section: str, key: str, default: Any) -> Any:
        node = data.get(section)
        return node.get(key, default) if isinstance(node, Mapping) else default

    problems = []
    name = value("model", "name", ModelConfig().name)
    problem = None
    if check_names and isinstance(name, str):
        from ...zoo.names import check_spec_name  # imports torch and the model library

        problem = check_spec_name(name)
    if problem:
        problems.append(f"model.name: {problem}")
    if not check_paths:
        return problems
    source = value("data", "source", DataConfig().source)
    if isinstance(source, str) and source != "digits" and not exists(source):
        problems.append(
            f"data.source: no such file or folder {source!r} (use a folder of class "
            "subfolders, a folder with train/ and val/, a .csv of path,label, or digits)"
        )
    rules = value("graft", "rules", None)
    if isinstance(rules, str) and not exists(rules, file=True):
        problems.append(f"graft.rules: no such file {rules!r}")
    weights = value("weights", "source", WeightsConfig().source)
    if not isinstance(weights, str):
        return problems
    if weights.startswith("package://"):
        from ...resources import package_file_problem

        problem = package_file_problem(weights)
        if problem:
            problems.append(f"weights.source: {problem}")
    elif _looks_like_path(weights) and not exists(weights):
        problems.append(f"weights.source: no such file or folder {weights!r}")
    return problems


def exists(path: str, *, file: bool = False) -> bool:
    """Whether a path a config names exists (a regular file, with ``file``). A name the
    system cannot even look up (too long, a NUL byte) does not: the config names the path
    at fault instead of the lookup failing."""
    try:
        return Path(path).is_file() if file else Path(path).exists()
    except (OSError, ValueError):
        return False


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.lower().endswith((".pt", ".pth", ".bin", ".ckpt", ".safetensors"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid config: {problems[0]}"
    listed = "".join(f"\n  {p}" for p in problems)
    return f"invalid config, {len(problems)} problems:{listed}"
