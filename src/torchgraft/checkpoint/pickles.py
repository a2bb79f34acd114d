"""torch pickles, read safely: scanned first, ``weights_only=True`` always, opt-ins by name.

A torch file is checked and its pickle scanned (:mod:`.torch_files`, :mod:`.pickle_scan`)
before torch's unpickler runs any of it: globals outside the allowed set, nesting, sizes and
counts over the reader's limits, and calls that could cost any amount are refused there.
Only then is ``torch.load`` called, always with ``weights_only`` passed explicitly, so the
environment variables that change its default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) cannot
turn the unsafe path on. ``allow_globals`` (checked by :mod:`.allowed_globals`, scoped to one
load) and ``trust`` are the explicit opt-ins; ``trust`` skips the scan, since a trusted file
may run code anyway.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from ..wording import option
from .allowed_globals import GLOBAL_NAME, imported_denial, resolve_allowed, torch_safe_names
from .limits import ReaderLimits
from .reasons import short_reason
from .torch_files import check_torch_file

__all__ = ["short_reason", "torch_load"]

#: Refused globals named in one message; the rest are counted.
_SHOWN = 10


def torch_load(
    path: Path,
    kind: str,
    allow_globals: Sequence[str],
    trust: bool,
    mmap: bool,
    limits: ReaderLimits,
) -> Any:
    """Check, scan and load a ``torch`` (zip) or ``torch-legacy`` file.

    Raises:
        UnsafeCheckpointError: the pickle wants globals outside the allowed set (all named).
        CheckpointError: anything else: damage, a crafted file, a limit exceeded.
    """
    if isinstance(allow_globals, str):  # "a.B" would otherwise allow "a", ".", "B"
        allow_globals = [allow_globals]
    allowed = {} if trust else resolve_allowed(allow_globals)
    # torch >= 2.10 lets APPEND fill instances of allowed list subclasses, and nothing else
    # but lists; the scan holds every torch to that.
    lists = frozenset(
        n for n, obj in allowed.items() if isinstance(obj, type) and issubclass(obj, list)
    )
    check = check_torch_file(
        path, kind, torch_safe_names() | frozenset(allowed), limits, not trust, lists
    )
    if check.refused:
        raise _refusal(path, check.refused)
    mmap = mmap and kind == "torch"  # legacy files cannot be mapped: read them whole
    if trust:
        warnings.warn(
            f"loading {path} with weights_only=False: code inside the file can run. "
            "Only do this for files you created yourself.",
            UserWarning,
            stacklevel=3,
        )
        return _load(path, weights_only=False, mmap=mmap)
    # The allowances are scoped to this load, each under exactly the name that was checked.
    with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
        return _load(path, weights_only=True, mmap=mmap)


def _load(path: Path, weights_only: bool, mmap: bool) -> Any:
    # weights_only is always passed explicitly: environment variables that change torch.load's
    # default must not decide what runs.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if path.suffix == ".safetensors":  # torch.load would hand the name to safetensors
                with path.open("rb") as handle:
                    return torch.load(handle, map_location="cpu", weights_only=weights_only)
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a torch file: {short_reason(exc)}"
        ) from None


def _refusal(path: Path, wanted: list[str]) -> UnsafeCheckpointError:
    """The refusal naming every global wanted; names from the file are shown escaped."""
    never = {name: reason for name in wanted if (reason := imported_denial(name))}
    shown = ", ".join(_shown(name) for name in wanted[:_SHOWN])
    if len(wanted) > _SHOWN:
        shown += f" and {len(wanted) - _SHOWN} more"
    message = (
        f"{path}: refusing to load: the pickle wants {shown}, outside torch's safe list "
        "(unpickling them could run code)."
    )
    if never:
        name, reason = next(iter(never.items()))
        message += (
            f" {_shown(name)} can never be allowed by name ({reason}); only "
            f"{option('trust', True)} loads this file, and then the file's code runs"
        )
    else:
        message += (
            f" If you trust the file, allow them by name ({option('allow_globals', wanted)}) "
            f"or use {option('trust', True)}"
        )
    return UnsafeCheckpointError(message, list(wanted))


def _shown(name: str) -> str:
    """A global's name as a message shows it: as is when plain, else escaped and cut."""
    return name if GLOBAL_NAME.fullmatch(name) and len(name) <= 200 else ascii(name[:200])
