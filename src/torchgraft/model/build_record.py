"""Model builds read from files: a record read from a file never selects code.

A run's ``model.json``, the record inside its ``model.safetensors`` and the fingerprint of a
resume state say how to rebuild the architecture: a zoo spec, the builder's options, the
input channels and the head. Those files may come from anyone (a run directory shared by a
colleague, downloaded, or edited by an attacker; their hashes prove only that they agree with
each other), so what they say is checked here as data before the zoo sees it:

* the builder must be ``torchvision:NAME`` or ``timm:NAME`` — a name looked up in those
  libraries' registries, which imports nothing else. A ``package.module:callable`` would
  import that module and call the callable: only with the caller's explicit opt-in
  (``trust_run=True``, ``--trust-run``), and even then never with call syntax
  (``f('x')``): arguments are not taken from a file;
* the builder's options are plain values (numbers, strings, booleans, None, short lists of
  those), and none of them may load weights or files of its own (``pretrained``,
  ``checkpoint_path``, ``pretrained_cfg_overlay``, ``weights`` …): the weights of a run come
  from its own weights file, through the reader, and nowhere else;
* the head and stem are small whole numbers.

Every refusal names the file and the field; an untrusted builder is an
:class:`~torchgraft.errors.UntrustedRunError`, raised before anything is imported.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from ..errors import CheckpointError, UntrustedRunError
from ..values import finite, shown, whole
from ..wording import option

__all__ = [
    "FILE_LIBRARIES",
    "MAX_CLASSES",
    "MAX_HIDDEN",
    "Trust",
    "check_recorded_build",
    "check_recorded_builder",
]

#: Libraries whose builders a file may name: a registry lookup, no import of the file's choosing.
FILE_LIBRARIES = ("torchvision", "timm")
#: Heads a file may ask for (ImageNet-22k has 21,841 classes).
MAX_CLASSES = 1_000_000
#: Width of a hidden head layer a file may ask for.
MAX_HIDDEN = 65_536
#: Input channels a file may ask for.
MAX_CHANNELS = 64
#: Builder options that read weights or files, or reach a hub: never from a file.
LOADING_OPTIONS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "checkpoint_path",
        "cache_dir",
        "weights",
        "weights_backbone",
        "read_options",
    }
)
#: The caller's opt-in: True (any builder), or the builders the caller names itself.
Trust = bool | Collection[str]
_LIBRARY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_LOCAL_NAME = re.compile(r"[A-Za-z_][\w.]{0,199}:[A-Za-z_][\w.]{0,199}")
_OPTION_NAME = re.compile(r"[A-Za-z_]\w{0,99}")
_MAX_OPTIONS = 64
_MAX_LIST = 64


def check_recorded_builder(spec: Any, origin: str, *, trust_run: Trust = False) -> str:
    """The builder spec a file records, if a file may select it.

    Args:
        spec: the value read from the file.
        origin: the file and field, as the message names them (``runs/x/model.json: build.model``).
        trust_run: the caller's opt-in for ``package.module:callable`` builders: True, or the
            builders the caller itself names in this call (a run that trains ``my.pkg:Net``
            and then reads back its own record trusts exactly that one).

    Raises:
        UntrustedRunError: a builder outside :data:`FILE_LIBRARIES` without ``trust_run``.
        CheckpointError: not a spec at all, or call syntax (never accepted from a file).
    """
    if not isinstance(spec, str) or not spec:
        raise CheckpointError(f"{origin}: a model spec is a string, got {shown(spec)}")
    library, colon, name = spec.partition(":")
    if colon and library in FILE_LIBRARIES and _LIBRARY_NAME.fullmatch(name):
        return spec
    quoted = ascii(spec[:120])
    if "(" in spec or not _LOCAL_NAME.fullmatch(spec):
        raise CheckpointError(
            f"{origin}: refused: {quoted} is not a model spec a file may hold (a file may name "
            f"{' or '.join(f'{lib}:NAME' for lib in FILE_LIBRARIES)}, or with your opt-in a "
            "package.module:callable without arguments)"
        )
    if trust_run is not True and spec not in (trust_run or ()):
        raise UntrustedRunError(
            f"{origin}: refused: the model is built by {quoted}, which is not a torchvision or "
            "timm model: building it would import and run that code, chosen by the file. "
            f"If you made this run or trust whoever did, pass {option('trust_run', True)}"
        )
    return spec


def check_recorded_build(
    build: Any, origin: str, *, trust_run: Trust = False, classes: int | None = None
) -> dict[str, Any]:
    """A ``build`` record (``model``, ``kwargs``, ``in_chans``, ``num_classes``, ``head``)
    checked field by field; returns it as plain data.

    Args:
        build: the value read from the file.
        origin: the file, as the message names it.
        trust_run: the caller's opt-in (see :func:`check_recorded_builder`).
        classes: how many class names the record holds beside it (None: not known).

    Raises:
        UntrustedRunError / CheckpointError: as :func:`check_recorded_builder`, or a field of
            the wrong type or out of range (every problem named).
    """
    if not isinstance(build, Mapping):
        raise CheckpointError(f"{origin}: 'build' must be a mapping, got {shown(build)}")
    model = check_recorded_builder(
        build.get("model"), f"{origin}: build.model", trust_run=trust_run
    )
    problems = _option_problems(build.get("kwargs"))
    in_chans = build.get("in_chans")
    if in_chans is not None and not whole(in_chans, 1, MAX_CHANNELS):
        problems.append(f"build.in_chans must be null or 1..{MAX_CHANNELS}, got {shown(in_chans)}")
    num_classes = build.get("num_classes")
    if not whole(num_classes, 1, MAX_CLASSES):
        problems.append(f"build.num_classes must be 1..{MAX_CLASSES:,}, got {shown(num_classes)}")
    elif classes is not None and num_classes < classes:
        problems.append(f"build.num_classes is {num_classes}, fewer than the {classes} classes")
    head = build.get("head") or {}
    if not isinstance(head, Mapping):
        problems.append(f"build.head must be a mapping, got {shown(head)}")
        head = {}
    dropout, hidden = head.get("dropout"), head.get("hidden")
    if dropout is not None and not (finite(dropout) and 0 <= dropout < 1):
        problems.append(f"build.head.dropout must be null or in [0, 1), got {shown(dropout)}")
    if hidden is not None and not whole(hidden, 1, MAX_HIDDEN):
        problems.append(f"build.head.hidden must be null or 1..{MAX_HIDDEN:,}, got {shown(hidden)}")
    if problems:
        raise CheckpointError(f"{origin}: not a valid build record: {'; '.join(problems)}")
    return {
        "model": model,
        "kwargs": dict(build.get("kwargs") or {}),
        "in_chans": in_chans,
        "num_classes": num_classes,
        "head": {"dropout": dropout, "hidden": hidden},
    }


def _option_problems(kwargs: Any) -> list[str]:
    """What is wrong with recorded builder options (plain values; nothing that loads)."""
    if kwargs is None:
        return []
    if not isinstance(kwargs, Mapping) or len(kwargs) > _MAX_OPTIONS:
        return [f"build.kwargs must be a mapping of at most {_MAX_OPTIONS} options"]
    problems = []
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key):
            problems.append(f"build.kwargs holds a key that is not an option name ({shown(key)})")
        elif key in LOADING_OPTIONS:
            problems.append(
                f"build.kwargs.{key} would load weights or files other than the run's own "
                "(never taken from a file)"
            )
        elif not _plain_value(value):
            problems.append(
                f"build.kwargs.{key} must be a number, string, boolean, null or a short list "
                f"of those, got {shown(value)}"
            )
    return problems


def _plain_value(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return not isinstance(value, str) or len(value) <= 200
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, list) and depth == 0 and len(value) <= _MAX_LIST:
        return all(_plain_value(item, 1) for item in value)
    return False
