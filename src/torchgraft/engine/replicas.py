"""Proof that the processes of a run still train one model.

DistributedDataParallel keeps replicas equal only for what it synchronises: the parameters
that were trainable when it was built, and the buffers it broadcasts. A parameter unfrozen
after the replica was built, a buffer changed outside the forward pass, or a process that
resumed from a different state would let the replicas drift apart silently, and rank 0
would save one of several different models. So at every checkpoint each process hashes every
tensor of its model and the hashes are compared; any difference stops the run, naming the
tensors. The cost is one pass over the weights per checkpoint (about as much as saving them).

BatchNorm statistics are the one thing DDP leaves different by design: it broadcasts rank
0's buffers at the start of each forward pass, so after the last step of an epoch every
process holds the statistics of its own batches. :func:`average_buffers` averages them at the
end of each training pass (timm's ``distribute_bn`` "reduce"), before validation and saving.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..errors import TrainingError
from ..text import printable
from .distributed import Processes

__all__ = ["average_buffers", "check_replicas_agree", "tensor_digests"]


def average_buffers(model: nn.Module, processes: Processes) -> None:
    """Average the floating-point buffers (BatchNorm statistics) over the processes, and
    give every process rank 0's other buffers (counters). Every process must call it."""
    if processes.alone:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                processes.sum(buffer)
                buffer.div_(processes.world)
            else:
                dist.broadcast(buffer, src=0)


def tensor_digests(model: nn.Module) -> dict[str, str]:
    """``{state_dict key: sha1 of the tensor's bytes}`` (exact: any changed bit shows)."""
    digests = {}
    for key, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digests[key] = hashlib.sha1(data.numpy().tobytes()).hexdigest()
    return digests


def check_replicas_agree(model: nn.Module, processes: Processes, epoch: int) -> None:
    """Raise on every process when the processes' models differ (every process must call).

    Raises:
        TrainingError: naming the first differing tensors and the processes that differ.
    """
    if processes.alone:
        return
    every = processes.all_gather(tensor_digests(model))
    reference = every[0]
    differing = sorted(
        {key for digests in every[1:] for key in reference if digests.get(key) != reference[key]}
        | {key for digests in every[1:] for key in digests.keys() - reference.keys()}
    )
    if not differing:
        return
    ranks = [rank for rank, digests in enumerate(every) if digests != reference]
    shown = ", ".join(printable(key) for key in differing[:3])
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    raise TrainingError(
        f"after epoch {epoch + 1} the model of process(es) {ranks} differs from process 0's "
        f"({shown}{more}): the replicas drifted apart, so no checkpoint of this epoch was "
        "written. Please report it with the configuration"
    )
