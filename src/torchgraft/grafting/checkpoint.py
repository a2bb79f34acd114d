"""What a checkpoint is once read: flat tensors, and what was unwrapped or set aside.

:func:`from_object` turns whatever a file held (or a state_dict or module in memory) into a
:class:`Checkpoint`: containers such as ``{"state_dict": ...}`` unwrapped and named, nested
dicts flattened with ``.``, non-tensor entries (epoch, optimizer state) set aside and listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..wording import listing

__all__ = ["CONTAINER_KEYS", "EMA_KEYS", "MAX_DEPTH", "Checkpoint", "from_object"]

#: Keys that wrap a state_dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")
#: Keys that wrap an exponential-moving-average copy of the weights.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema", "model_ema_state_dict")
#: Nesting deeper than this is not a state_dict (and a crafted cycle must not recurse forever).
MAX_DEPTH = 32


@dataclass(repr=False)
class Checkpoint:
    """A checkpoint read into memory (tensors possibly memory-mapped).

    Attributes:
        tensors: flat ``{name: tensor}`` in stored order (safetensors: sorted by name).
        format: ``torch``, ``torch-legacy``, ``lightning``, ``safetensors``, ``hf-folder``,
            ``state_dict`` (in memory) or ``module`` (an ``nn.Module``).
        origin: the file or folder read, or a description of the in-memory object.
        container: the key path unwrapped to reach the tensors (``"state_dict"``,
            ``"model.state_dict"``), or None.
        set_aside: non-tensor entries found beside the tensors, with their type names.
        metadata: format metadata (safetensors header metadata, Lightning version, …).
        files: every file read (a sharded folder: the index and each shard), e.g. to hash.
    """

    tensors: dict[str, torch.Tensor]
    format: str
    origin: str
    container: str | None = None
    set_aside: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def num_elements(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __repr__(self) -> str:
        # One line; the tensors are in .tensors (a default repr would print every one).
        kind = self.format + (f", {self.container}" if self.container else "")
        aside = f"; set aside: {listing(self.set_aside)}" if self.set_aside else ""
        origin = self.origin if len(self.origin) <= 60 else "…" + self.origin[-59:]
        return (
            f"<Checkpoint {origin} [{kind}]: {len(self.tensors)} tensors "
            f"({listing(self.tensors, 2)}), {self.num_elements:,} elements{aside}>"
        )


def from_object(obj: Any, kind: str, origin: str, ema: bool) -> Checkpoint:
    """Unwrap containers, flatten nested dicts and set non-tensor entries aside."""
    if isinstance(obj, nn.Module):
        if ema:
            raise CheckpointError(f"{origin}: a module holds no separate EMA weights")
        return Checkpoint(dict(obj.state_dict()), "module", origin)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    path: list[str] = []
    set_aside: dict[str, str] = {}
    current: Mapping[str, Any] = obj
    while len(path) < MAX_DEPTH and (key := _container_key(current, ema and not path)):
        for other, value in current.items():
            if other != key:
                set_aside[".".join([*path, str(other)])] = _describe(value)
        path.append(key)
        current = current[key]
        if isinstance(current, nn.Module):
            current = current.state_dict()
    if ema and not path:
        raise CheckpointError(
            f"{origin}: no EMA weights found (looked for {', '.join(EMA_KEYS)}); drop the EMA option"
        )
    tensors: dict[str, torch.Tensor] = {}
    _flatten(current, "", tensors, set_aside, origin, 0, set())
    if not tensors:
        keys = sorted(map(str, current))[:10]
        raise CheckpointError(f"{origin}: no tensors found; its keys are {keys}")
    return Checkpoint(tensors, kind, origin, ".".join(path) or None, set_aside)


def _container_key(mapping: Mapping[str, Any], ema: bool) -> str | None:
    # A level holding tensors directly is a state_dict itself, whatever its keys are called.
    if any(isinstance(v, torch.Tensor) for v in mapping.values()):
        return None
    for key in EMA_KEYS if ema else CONTAINER_KEYS:
        value = mapping.get(key)
        if isinstance(value, nn.Module) or _holds_tensors(value, 0, set()):
            return key
    return None


def _holds_tensors(value: Any, depth: int, seen: set[int]) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if not isinstance(value, Mapping) or depth >= MAX_DEPTH or id(value) in seen:
        return False
    seen.add(id(value))  # shared or cyclic sub-dicts (pickles can make them) are walked once
    return any(_holds_tensors(v, depth + 1, seen) for v in value.values())


def _flatten(
    mapping: Mapping[str, Any],
    prefix: str,
    out: dict[str, torch.Tensor],
    aside: dict[str, str],
    origin: str,
    depth: int,
    seen: set[int],
) -> None:
    seen.add(id(mapping))
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if name in out:  # {"a.b": t, "a": {"b": t2}} would otherwise lose one silently
                raise CheckpointError(f"{origin}: two tensors flatten to the same name '{name}'")
            out[name] = value
        elif id(value) not in seen and _holds_tensors(value, depth + 1, set()):
            _flatten(value, f"{name}.", out, aside, origin, depth + 1, seen)
        else:
            aside[name] = _describe(value)


def _describe(value: Any) -> str:
    if isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 40:
        return f"{type(value).__name__} = {value!r}"
    if isinstance(value, (Mapping, list, tuple, set)):
        holds = " (holds tensors)" if _holds_tensors(value, 0, set()) else ""
        return f"{type(value).__name__} of {len(value)}{holds}"
    return type(value).__name__
