"""An adapted model's result as it is kept: merged into plain weights, and the adapters alone.

A run with adapters saves, for its best epoch, the model a user loads without any adapter
code — the adapters merged into their base weights, checked (:func:`~.merge.merge_adapters`
on a copy: the outputs before and after agree within the tolerance, or the merge is refused
loudly) — and the adapters with the head, for users who keep one base model and many tasks.
The model being trained is never changed: the merge runs on a deep copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .merge import MergeReport, merge_adapters
from .state import adapter_config, adapter_state_dict

__all__ = ["AdaptedSnapshot", "adapted_snapshot"]


@dataclass(frozen=True)
class AdaptedSnapshot:
    """Copies of an adapted model's result at one moment.

    Attributes:
        merged: the plain architecture's state_dict, adapters merged (its keys are exactly
            those of the model built without adapters).
        adapters: the adapters' tensors and the head's (:func:`~.state.adapter_state_dict`).
        config: the adapters' record (:func:`~.state.adapter_config`).
        merge: the merge check.
    """

    merged: dict[str, torch.Tensor]
    adapters: dict[str, torch.Tensor]
    config: dict[str, Any]
    merge: MergeReport


def adapted_snapshot(model: nn.Module) -> AdaptedSnapshot:
    """The merged weights and the adapters of ``model`` (unchanged), copied.

    Raises:
        AdapterMergeError: the merged model does not compute what the adapted one does.
        AdapterError: the model has no adapters added by torchgraft.
    """
    adapters = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
    config = adapter_config(model)
    plain = copy.deepcopy(model)
    report = merge_adapters(plain)
    merged = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    return AdaptedSnapshot(merged, adapters, config, report)
