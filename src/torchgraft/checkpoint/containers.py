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
from .untrusted import UnusableTensor

__all__ = ["CONTAINER_KEYS", "EMA_KEYS", "MAX_DEPTH", "Checkpoint", "from_object", "key_text"]

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
    """Unwrap containers, flatten nested dicts and set non-tensor entries aside.

    Names built from keys are data: keys that are not strings are written as short text
    (``<tuple>``), never by calling the key's own ``str``, and messages quote them escaped.
    """
    if isinstance(obj, nn.Module):
        if ema:
            raise CheckpointError(f"{origin}: a module holds no separate EMA weights")
        return Checkpoint(dict(obj.state_dict()), "module", origin)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    walk = _Walk()
    path: list[str] = []
    set_aside: dict[str, str] = {}
    current: Mapping[str, Any] = obj
    while len(path) < MAX_DEPTH and (key := walk.container_key(current, ema and not path)):
        for other, value in current.items():
            if other != key:
                set_aside[".".join([*path, key_text(other)])] = walk.describe(value)
        path.append(key)
        current = current[key]
        if isinstance(current, nn.Module):
            current = current.state_dict()
    if ema and not path:
        raise CheckpointError(
            f"{origin}: no EMA weights found (looked for {', '.join(EMA_KEYS)}); drop the EMA option"
        )
    tensors: dict[str, torch.Tensor] = {}
    walk.flatten(current, "", tensors, set_aside, origin, 0, set())
    if not tensors:
        keys = sorted(key_text(k) for k in current)[:10]
        raise CheckpointError(f"{origin}: no tensors found; its keys are {ascii(keys)[:400]}")
    return Checkpoint(tensors, kind, origin, ".".join(path) or None, set_aside)


def key_text(key: Any) -> str:
    """A key as a name: strings as they are, small numbers written out, others by type."""
    if type(key) is str:
        return key
    if type(key) is int and -(10**30) < key < 10**30:
        return str(key)
    if type(key) in (bool, float) or key is None:
        return repr(key)
    return f"<{type(key).__name__}>"


class _Walk:
    """The walks over one checkpoint's dicts, with what they learnt cached.

    Pickles can share one sub-dict under many keys (a few bytes each): without the cache,
    asking "does it hold tensors?" once per key would walk it once per key.
    """

    def __init__(self) -> None:
        self.holds: dict[int, bool] = {}

    def container_key(self, mapping: Mapping[str, Any], ema: bool) -> str | None:
        # A level holding tensors directly is a state_dict itself, whatever its keys are called.
        if any(isinstance(v, torch.Tensor) for v in mapping.values()):
            return None
        for key in EMA_KEYS if ema else CONTAINER_KEYS:
            value = mapping.get(key)
            if isinstance(value, nn.Module) or self.holds_tensors(value):
                return key
        return None

    def holds_tensors(self, value: Any) -> bool:
        """Whether ``value`` is a tensor or a dict holding one within ``MAX_DEPTH`` levels."""
        if isinstance(value, torch.Tensor):
            return True
        if not isinstance(value, Mapping):
            return False
        if id(value) not in self.holds:
            self.holds[id(value)] = self._search(value)
        return self.holds[id(value)]

    def _search(self, root: Mapping) -> bool:
        # Breadth-first, without recursion; shared and cyclic sub-dicts are visited once.
        seen = {id(root)}
        level = [root]
        for _ in range(MAX_DEPTH):
            below = []
            for mapping in level:
                for value in mapping.values():
                    if isinstance(value, torch.Tensor) or self.holds.get(id(value)):
                        return True
                    if isinstance(value, Mapping) and id(value) not in seen:
                        seen.add(id(value))
                        below.append(value)
            if not below:
                return False
            level = below
        return False

    def flatten(
        self,
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
            name = f"{prefix}{key_text(key)}"
            if isinstance(value, torch.Tensor):
                if name in out:  # {"a.b": t, "a": {"b": t2}} would otherwise lose one silently
                    raise CheckpointError(
                        f"{origin}: two tensors flatten to the same name {ascii(name)[:200]}"
                    )
                out[name] = value
            elif depth + 1 < MAX_DEPTH and id(value) not in seen and self.holds_tensors(value):
                self.flatten(value, f"{name}.", out, aside, origin, depth + 1, seen)
            else:
                aside[name] = self.describe(value)

    def describe(self, value: Any) -> str:
        if isinstance(value, UnusableTensor):
            return value.what
        if isinstance(value, (int, float, str, bool)) and _short(value):
            return f"{type(value).__name__} = {value!r}"
        if isinstance(value, (Mapping, list, tuple, set)):
            holds = " (holds tensors)" if self.holds_tensors(value) else ""
            return f"{type(value).__name__} of {len(value)}{holds}"
        return type(value).__name__


def _short(value: int | float | str) -> bool:
    """Whether ``repr(value)`` fits in 40 characters, found without writing out a huge
    number (which raises past 4,300 digits) or string."""
    if isinstance(value, int) and int.bit_length(value) > 133:
        return False
    if isinstance(value, str) and len(value) > 40:
        return False
    return len(repr(value)) <= 40
