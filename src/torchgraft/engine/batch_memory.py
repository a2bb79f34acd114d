"""Batches a run can afford, decided before the first batch is allocated.

``--data.batch_size 100000`` on the 1,797 digits grew to 22 GB and was killed by the kernel.
The data side clamps a batch to its split and estimates the input's bytes
(:mod:`torchgraft.data.batch_size`); what a training step costs beyond its input is the
model's: the tensors autograd keeps for the backward pass. Those are measured here, once, on
a batch of two images: a forward pass with autograd recording, each saved tensor's storage
counted once (a hook on what autograd packs), nothing kept. The pass runs in eval mode —
BatchNorm statistics do not move and no random numbers are drawn, so a measured run trains
bitwise as an unmeasured one — and with the input requiring grad, so every layer's inputs
count as in a full fine-tune (a frozen body keeps less: the estimate is on the safe side).
The backward pass needs about as much again for the gradients of those tensors: twice the
saved bytes per image.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch_size import check_batch, clamp_note
from ..data.loaders import Shard
from ..data.prepare import PreparedData
from ..model.passes import evaluating
from .runtime import Runtime

__all__ = ["check_run_batches", "saved_bytes_per_image"]

#: Images in the measuring pass (two: BatchNorm in train mode could not take one, and a
#: per-image figure needs a batch dimension that is not 1).
_PROBE_IMAGES = 2


def saved_bytes_per_image(model: nn.Module, input_size: tuple[int, ...], runtime: Runtime) -> int:
    """Bytes autograd keeps per image for the backward pass of ``model`` (see the module)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return tensor

    sample = torch.zeros((_PROBE_IMAGES, *input_size), device=runtime.device)
    sample = sample.to(memory_format=runtime.memory_format).requires_grad_(True)
    with (
        evaluating(model, grad=True),
        runtime.autocast(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
        model(sample)
    return total // _PROBE_IMAGES


def check_run_batches(
    config, model: nn.Module, data: PreparedData, runtime: Runtime, processes
) -> list[str]:
    """Refuse a training or evaluation batch whose step would not fit in memory, naming the
    key (:func:`torchgraft.data.batch_size.check_batch`).

    Returns:
        the notes to print: ``data.batch_size`` larger than the training split (its batches
        are the split).

    Raises:
        ConfigError: a batch that does not fit.
    """
    settings = config.data
    shard = Shard(processes.rank, processes.world)
    input_size = tuple(data.preprocessing.input_size)
    train_count = len(data.source.splits["train"])
    note = clamp_note("data.batch_size", settings.batch_size, train_count, "train")
    per_process = data.largest_batch("train", settings.batch_size // processes.world, shard)
    try:
        saved = saved_bytes_per_image(model, input_size, runtime)
    except Exception:  # a model the probe cannot run: its first step will say why itself
        saved = 0
    augment = settings.augment != "none" or config.train.mixup > 0 or config.train.cutmix > 0
    check_batch(
        per_process, input_size, augment=augment, bytes_per_image=2 * saved, key="data.batch_size"
    )
    for split in ("val", "test"):
        if split in data.source.splits:
            batch = data.largest_batch(split, settings.eval_batch, shard)
            check_batch(batch, input_size, key="data.eval_batch_size")
    return [note] if note is not None else []
