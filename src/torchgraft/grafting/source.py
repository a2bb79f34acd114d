"""Where grafted weights come from: a file or folder, a state_dict or a module, read once.

Model *names* are not sources at this level: turning ``torchvision:resnet50`` into weights
needs the zoo, which sits above grafting. :func:`torchgraft.graft` (``zoo/grafts.py``)
resolves names and then calls in here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint.read import Checkpoint, read_checkpoint
from ..errors import CheckpointError
from .structure import natural_key

__all__ = ["Source", "SourceWeights", "looks_like_spec", "read_options", "read_source"]

Source = str | os.PathLike | Mapping[str, Any] | nn.Module


@dataclass(repr=False)
class SourceWeights:
    """A checkpoint plus what is known about where it came from."""

    checkpoint: Checkpoint
    classes: tuple[str, ...] | None = None
    order: tuple[str, ...] | None = None  # real registration order, when a module is known
    #: Tensors derived from others (attention projections fused or split: .projections),
    #: by key, with the stored keys they were made from.
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The stored order's trust, judged before tensors were derived (None: judge now).
    stored_order_trusted: bool | None = None

    def __repr__(self) -> str:
        classes = f", {len(self.classes)} class names" if self.classes else ""
        order = ", registration order known" if self.order else ""
        return f"<SourceWeights {self.checkpoint!r}{classes}{order}>"

    @property
    def order_trusted(self) -> bool:
        """False when the stored order is a sort by name (safetensors stores keys sorted), so
        it says nothing about the registration order. A real registration order is almost
        never alphabetical (``conv1`` comes before ``bn1``)."""
        if self.stored_order_trusted is not None:
            return self.stored_order_trusted
        keys = list(self.checkpoint.tensors)
        return len(keys) < 3 or (keys != sorted(keys) and keys != sorted(keys, key=natural_key))


def read_source(source: Source | SourceWeights, **options: Any) -> SourceWeights:
    """Read a file or folder, a state_dict or a module (``options``: see ``read_checkpoint``).

    Raises:
        CheckpointError: an unreadable file, or a model spec string (resolve those with
            :func:`torchgraft.graft`, which knows the zoo).
    """
    if isinstance(source, SourceWeights):
        return source
    if isinstance(source, nn.Module):
        spec = getattr(source, "torchgraft_spec", None)
        checkpoint = read_checkpoint(source)
        return SourceWeights(checkpoint, spec.classes if spec else None, tuple(checkpoint.tensors))
    if isinstance(source, (str, Path)) and not Path(source).exists() and looks_like_spec(source):
        raise CheckpointError(
            f"'{source}' is not a file; it looks like a model spec. torchgraft.graft and "
            "torchgraft.plan_graft build model specs; torchgraft.grafting takes files, "
            "state_dicts and modules"
        )
    return SourceWeights(read_checkpoint(source, **options))


def read_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's options (``ema``, ``allow_globals``, ``trust``, ``limits``) among graft
    options."""
    return {k: options[k] for k in ("ema", "allow_globals", "trust", "limits") if k in options}


def looks_like_spec(text: str | Path) -> bool:
    """``library:name`` or ``package.module:callable``, not a path."""
    text = str(text)
    return ":" in text and not text.startswith((".", "/", "~")) and "\\" not in text
