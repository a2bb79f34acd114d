"""torch pickles, read safely: ``weights_only=True`` always, opt-ins by name, typed errors.

``torch.load`` is always called with ``weights_only`` passed explicitly, so the environment
variables that change its default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) cannot turn the unsafe
path on. A pickle that needs globals outside torch's allow-list is refused with their names
(found by parsing, never by running it); ``allow_globals`` (scoped to one load) and ``trust``
are the explicit opt-ins.
"""

from __future__ import annotations

import _compat_pickle  # the stdlib's Python 2 -> 3 name table, as pickle uses it
import importlib
import pickletools
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from ..wording import option

__all__ = ["short_reason", "torch_load"]

#: An importable ``module.Name`` (a damaged pickle can name garbage).
_GLOBAL_NAME = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*")
#: Lines of torch.load's error messages that give advice rather than the reason.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please")


def torch_load(path: Path, kind: str, allow_globals: Sequence[str], trust: bool, mmap: bool) -> Any:
    if kind == "torch":
        _check_zip(path)
    mmap = mmap and kind == "torch"  # legacy files cannot be mapped: read them whole
    if trust:
        warnings.warn(
            f"loading {path} with weights_only=False: code inside the file can run. "
            "Only do this for files you created yourself.",
            UserWarning,
            stacklevel=3,
        )
        try:
            return _load(path, weights_only=False, mmap=mmap)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot be read as a torch file: {short_reason(exc)}"
            ) from None
    allowed = [(_import_global(name), name) for name in allow_globals]
    # The allow-list is scoped to this load; refused globals are computed inside the scope
    # so that those the caller allowed are not reported back.
    with torch.serialization.safe_globals(allowed):
        try:
            return _load(path, weights_only=True, mmap=mmap)
        except Exception as exc:
            error, wanted = exc, _refused_globals(path, kind, exc)
    if wanted:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: the pickle wants {', '.join(wanted)}, outside torch's "
            "safe list (unpickling them could run code). If you trust the file, allow them by "
            f"name ({option('allow_globals', wanted)}) or use {option('trust', True)}",
            wanted,
        )
    raise CheckpointError(f"{path}: cannot be read as a torch file: {short_reason(error)}")


def _load(path: Path, weights_only: bool, mmap: bool) -> Any:
    # weights_only is always passed explicitly: environment variables that change torch.load's
    # default must not decide what runs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        if path.suffix == ".safetensors":  # torch.load would hand the name to safetensors
            with path.open("rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=weights_only)
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def _check_zip(path: Path) -> None:
    """Give a precise error for zips that are damaged or are not ``torch.save`` archives."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:  # BadZipFile, but also struct/overflow errors on crafted bytes
        raise CheckpointError(
            f"{path}: a damaged or truncated zip archive ({short_reason(exc)}); re-download or re-save it"
        ) from None
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive, which cannot be read without running its code; "
            "save model.state_dict() with torch.save, or load it with torch.jit.load yourself"
        )
    if not any(name.endswith("/data.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a zip archive but not a torch checkpoint (no data.pkl; holds "
            f"{', '.join(names[:3]) or 'nothing'})"
        )


def _refused_globals(path: Path, kind: str, exc: Exception) -> list[str]:
    """The globals a refused pickle wanted; empty when it failed for another reason."""
    # A damaged pickle can fail on a garbled GLOBAL ("torch._u."): that is corruption.
    named = re.findall(r"GLOBAL ((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\b(?!\.)", str(exc))
    if not named:
        return []  # a corrupt or unsupported pickle, not a refusal
    try:
        if kind == "torch":
            found = [
                _py3_name(*name.rsplit(".", 1))
                for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
            ]
        else:
            # No public helper for legacy files: list their GLOBALs statically, minus the
            # allow-list (private, hence the fallback to the name in torch's message).
            from torch import _weights_only_unpickler as wou

            allowed = {**wou._get_allowed_globals(), **wou._get_user_allowed_globals()}
            found = [name for name in _pickle_globals(path) if name not in allowed]
    except Exception:
        found = []
    found = [name for name in dict.fromkeys(found) if _GLOBAL_NAME.fullmatch(name)]
    # torch's message drops "builtins." ("GLOBAL exec"); names must be importable as given.
    return found or [name if "." in name else f"builtins.{name}" for name in named]


def _pickle_globals(path: Path, pickles: int = 5) -> list[str]:
    """GLOBAL names in the first pickles of a legacy torch file, found by parsing only.

    ``pickletools.genops`` decodes opcodes without executing any of them.
    """
    found: list[str] = []
    with path.open("rb") as handle:
        for _ in range(pickles):  # magic, protocol, sys info, the object, storage keys
            try:
                for opcode, arg, _pos in pickletools.genops(handle):
                    if opcode.name == "GLOBAL":
                        found.append(_py3_name(*str(arg).split(" ", 1)))
            except Exception:
                break
    return found


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 imports it (protocol-2 pickles say ``__builtin__.exec``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _import_global(name: str) -> Any:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # "pkg.mod.Outer.Inner": longest module first
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            break
        return obj
    raise CheckpointError(
        f"cannot allow global '{name}': no importable module.attribute by that name"
    )


def short_reason(exc: BaseException) -> str:
    """The reason inside an exception's message, without torch's paragraphs of advice."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    if match:
        return match.group(1)[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    return (reasons or lines or [type(exc).__name__])[0][:200]
