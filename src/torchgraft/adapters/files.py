"""Adapters on disk: ``adapters.safetensors`` and its sidecar ``adapters.safetensors.json``.

Written by the checkpoint writer (:func:`torchgraft.checkpoint.write.save_grafted`): both
files atomically, the sidecar carrying the sha256 of the tensors beside it and the adapter
record (:func:`~.state.adapter_config`). The sidecar is named by the one rule for sidecars
(:mod:`torchgraft.sidecars`: the file's name + ``.json``).

Read back through torchgraft's readers only — the tensors through
:func:`torchgraft.read_checkpoint` (safetensors, never a pickle), the sidecar through the
bounded document reader — with the hash compared and the record checked field by field
before anything of it is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.documents import read_json
from ..checkpoint.read import read_checkpoint
from ..checkpoint.write import save_grafted, sha256_file
from ..errors import CheckpointError
from ..sidecars import sidecar_path
from .state import adapter_config, adapter_state_dict, check_record

__all__ = ["ADAPTERS_FILE", "read_adapters", "save_adapters", "write_adapters"]

ADAPTERS_FILE = "adapters.safetensors"
#: What the sidecar says it is, so another sidecar is not taken for an adapter record.
KIND = "torchgraft adapters"


def save_adapters(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the model's adapters and head to ``directory/adapters.safetensors`` + sidecar.

    Returns:
        the path of ``adapters.safetensors``.

    Raises:
        AdapterError: the model has no adapters added by torchgraft.
        OutputError / OSError: the folder cannot be written (an earlier pair is kept).
    """
    return write_adapters(directory, adapter_state_dict(model), adapter_config(model))


def write_adapters(
    directory: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """:func:`save_adapters` from copies taken earlier (a run's best epoch): ``tensors`` and
    ``config`` as :func:`~.state.adapter_state_dict` and :func:`~.state.adapter_config` gave
    them; ``extra`` (plain data: the merge check) goes into the sidecar beside them."""
    check_record(config)
    path = Path(directory) / ADAPTERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**dict(extra or {}), "kind": KIND, "adapters": dict(config)}
    return save_grafted(path, dict(tensors), record)


def read_adapters(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter tensors and record saved by :func:`save_adapters` in ``directory``.

    Returns:
        ``(state, config)``, ready for :func:`torchgraft.adapters.load_adapters`.

    Raises:
        CheckpointError: a file missing or unreadable, not safetensors, or a pair that does
            not belong together (the tensors' sha256 differs from the sidecar's).
        AdapterError: a record that is not a valid adapter record.
    """
    path = Path(directory) / ADAPTERS_FILE
    sidecar = sidecar_path(path)
    record = read_json(sidecar, CheckpointError)
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise CheckpointError(
            f"{sidecar}: not a torchgraft adapter record (its 'kind' is not {KIND!r})"
        )
    checkpoint = read_checkpoint(path)
    if checkpoint.format != "safetensors":
        raise CheckpointError(f"{path}: expected safetensors, found a {checkpoint.format} file")
    if record.get("sha256") != sha256_file(path):
        raise CheckpointError(
            f"{path}: its sha256 differs from the one in {sidecar.name}; the two files are not "
            "a pair (one was replaced or edited). Save the adapters again"
        )
    check_record(record.get("adapters"))
    return dict(checkpoint.tensors), dict(record["adapters"])
