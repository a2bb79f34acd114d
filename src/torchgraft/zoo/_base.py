"""What every zoo adapter returns, and the helpful-miss message they share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..model.spec import ModelSpec

__all__ = ["BuiltModel", "ZooEntry", "did_you_mean"]


@dataclass
class BuiltModel:
    """An architecture, its spec, and the pretrained weights still to be grafted into it.

    Attributes:
        model: the architecture with its native head (or the requested one when no weights).
        spec: its anatomy.
        source: the pretrained state_dict (None without weights). Every weight enters the
            final model through a graft of this source, so every load has a report.
        source_name: where ``source`` came from, for the report.
    """

    model: nn.Module
    spec: ModelSpec
    source: Mapping[str, torch.Tensor] | None = None
    source_name: str | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One line of ``torchgraft models``."""

    spec: str
    head_paths: tuple[str, ...]
    weights: tuple[str, ...]


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean 'x' or 'y'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = [f"'{prefix}{c}'" for c in close]
    return (
        "; did you mean " + (" or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted)) + "?"
    )
