"""The record of a saved model (``model.json``, or its copy inside ``model.safetensors``),
checked as data before any of it is used.

The record says how to rebuild the architecture, what the outputs are called and how images
must be prepared. It is read from a file that may come from anyone, and the sha256 beside it
proves only that the weights and the record agree with each other. So every field is checked
for type and range here, every problem named, before a model is built, an image resized or a
probability printed:

* ``build`` — :func:`torchgraft.model.build_record.check_recorded_build` (a file never selects code);
* ``classes`` — 1 to :data:`~torchgraft.model.build_record.MAX_CLASSES` names, as many as the spec's
  head has outputs;
* ``preprocessing`` (and the spec's copy) — channels 1–64, sides and the resize before the
  crop at most :data:`MAX_SIDE` pixels (a 40,000² input would cost gigabytes per image), mean
  and std finite with std in [1e-4, 1e4] (a std of 0 divides by zero: every probability NaN);
* ``spec`` — the anatomy fields of :class:`~torchgraft.model.spec.ModelSpec`, of their types;
* ``metrics``, ``epoch``, ``ema``, the hashes — of their types.

The weights themselves are checked where they are read (the reader's limits) and against
the architecture before it is built for real (:func:`.artifacts.build_architecture`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError, SpecError
from ..model.build_record import MAX_CLASSES, Trust, check_recorded_build
from ..model.spec import MAX_SIDE as SPEC_MAX_SIDE
from ..model.spec import ModelSpec
from ..text import printable
from ..values import finite, shown, whole

__all__ = ["MAX_SIDE", "check_model_record", "preprocessing_problems"]

#: Largest image side (input, and resize before the crop) a record may ask for: what a run
#: may be configured with (:data:`torchgraft.model.spec.MAX_SIDE`).
MAX_SIDE = SPEC_MAX_SIDE
_MAX_NAME = 1000
_HEX = frozenset("0123456789abcdef")


def check_model_record(
    document: Any, origin: str, *, trust_run: Trust = False, model_format: str
) -> dict[str, Any]:
    """``document`` checked as a model record; returns it with ``build`` normalised.

    Args:
        document: the parsed JSON.
        origin: the file, as messages name it.
        trust_run: the caller's opt-in for ``package.module:callable`` builders.
        model_format: the format string the record must carry.

    Raises:
        UntrustedRunError: the builder is not torchvision/timm and ``trust_run`` is False.
        CheckpointError: anything else wrong, every problem named.
    """
    if not isinstance(document, Mapping) or document.get("format") != model_format:
        raise CheckpointError(f"{origin}: not a torchgraft model record (format {model_format})")
    classes = document.get("classes")
    problems = _class_problems(classes)
    count = len(classes) if not problems else None
    build = check_recorded_build(document.get("build"), origin, trust_run=trust_run, classes=count)
    problems += [
        f"preprocessing: {p}" for p in preprocessing_problems(document.get("preprocessing"))
    ]
    problems += _spec_problems(document.get("spec"), count)
    problems += _field_problems(document)
    if problems:
        raise CheckpointError(
            f"{origin}: not a valid model record ({'; '.join(problems[:6])}"
            f"{f'; and {len(problems) - 6} more' if len(problems) > 6 else ''}); "
            "it was not written by torchgraft as it is"
        )
    return {**document, "build": build}


def preprocessing_problems(pre: Any) -> list[str]:
    """What is wrong with a preprocessing record (empty: nothing)."""
    if not isinstance(pre, Mapping):
        return [f"must be a mapping, got {shown(pre)}"]
    problems = []
    size = pre.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(whole(v) for v in size)):
        return [f"input_size must be [channels, height, width], got {shown(size)}"]
    channels, height, width = size
    if not 1 <= channels <= 64 or not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        return [f"input_size is outside 1..64 channels, 1..{MAX_SIDE} px a side"]
    for key, low, high in (("mean", -1e4, 1e4), ("std", 1e-4, 1e4)):
        values = pre.get(key)
        if not (isinstance(values, list) and len(values) == channels):
            problems.append(f"{key} must be a list of {channels} numbers, got {shown(values)}")
        elif not all(finite(v) and low <= v <= high for v in values):
            problems.append(f"{key} values must be finite numbers in [{low:g}, {high:g}]")
    crop = pre.get("crop_pct")
    if not (finite(crop) and 0 < crop <= 1):
        problems.append(f"crop_pct must be in (0, 1], got {shown(crop)}")
    elif max(height, width) / crop > MAX_SIDE:
        problems.append(f"resizing to {height}/{crop:g} px before the crop exceeds {MAX_SIDE} px")
    for key in ("interpolation", "crop_mode"):
        if not (isinstance(pre.get(key), str) and 0 < len(pre[key]) <= 20):
            problems.append(f"{key} must be a short name, got {shown(pre.get(key))}")
    if not isinstance(pre.get("fixed_input_size", False), bool):
        problems.append("fixed_input_size must be true or false")
    return problems


def _class_problems(classes: Any) -> list[str]:
    if not (isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES):
        return [f"classes must be a list of 1..{MAX_CLASSES:,} names, got {shown(classes)}"]
    if not all(isinstance(c, str) and len(c) <= _MAX_NAME for c in classes):
        return [f"classes must be names (strings of at most {_MAX_NAME} characters)"]
    return []


def _spec_problems(spec: Any, classes: int | None) -> list[str]:
    if not isinstance(spec, Mapping):
        return [f"spec must be a mapping, got {shown(spec)}"]
    problems = [
        f"spec.preprocessing: {p}" for p in preprocessing_problems(spec.get("preprocessing"))
    ]
    names = {"name": spec.get("name"), "first_conv": spec.get("first_conv") or ""}
    names["weights"] = spec.get("weights") or ""
    if not all(isinstance(v, str) and len(v) <= _MAX_NAME for v in names.values()):
        problems.append("spec.name, first_conv and weights must be strings")
    paths = spec.get("head_paths")
    if not (isinstance(paths, list) and 1 <= len(paths) <= 16 and all(_short(p) for p in paths)):
        problems.append("spec.head_paths must be 1..16 module paths")
    groups = spec.get("layer_groups")
    if not (isinstance(groups, list) and len(groups) <= 10_000 and all(map(_group, groups))):
        problems.append("spec.layer_groups must be a list of {name, members} groups")
    for key, high in (("num_classes", MAX_CLASSES), ("feature_dim", 1 << 24), ("in_chans", 64)):
        if not (whole(spec.get(key)) and 1 <= spec[key] <= high):
            problems.append(f"spec.{key} must be 1..{high:,}, got {shown(spec.get(key))}")
    if classes is not None and spec.get("num_classes") != classes:
        problems.append(f"spec.num_classes must equal the {classes} classes")
    if problems:
        return problems
    try:
        ModelSpec.from_dict(spec)
    except (SpecError, TypeError, ValueError) as exc:
        problems.append(f"spec: {printable(str(exc))[:200]}")
    return problems


def _field_problems(document: Mapping[str, Any]) -> list[str]:
    problems = []
    metrics = document.get("metrics")
    if metrics is not None and not (
        isinstance(metrics, Mapping)
        and len(metrics) <= 100
        and all(isinstance(k, str) and (v is None or finite(v)) for k, v in metrics.items())
    ):
        problems.append("metrics must map names to numbers")
    epoch = document.get("epoch")
    if epoch is not None and not (whole(epoch) and 0 <= epoch < 10**9):
        problems.append(f"epoch must be a whole number, got {shown(epoch)}")
    if not isinstance(document.get("ema", False), bool):
        problems.append("ema must be true or false")
    for key in ("content_sha256", *(("sha256",) if "sha256" in document else ())):
        value = document.get(key)
        if not (isinstance(value, str) and len(value) == 64 and set(value) <= _HEX):
            problems.append(f"{key} must be 64 hex digits")
    return problems


def _group(group: Any) -> bool:
    return (
        isinstance(group, Mapping)
        and _short(group.get("name"))
        and isinstance(group.get("members"), list)
        and len(group["members"]) <= 1_000_000
        and all(_short(m) for m in group["members"])
    )


def _short(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_NAME
