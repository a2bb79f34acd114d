"""Settle order-only ties with the weights' own BatchNorm statistics.

Pretrained weights carry a record of the activations they were trained on: each BatchNorm's
running mean and variance describe, per channel, what reaches it. When only an order that
proves nothing paired same-shaped siblings and no source architecture is at hand, every
assignment of a block's tie groups is grafted into a copy of the target and a probe batch is
run through it (eval mode: nothing is updated); each BatchNorm inside the block is scored by
how far the statistics of its input are from the running statistics it was given — the mean
over channels of the Gaussian divergence ``KL(input || stored)`` — and the block's score is
the sum. The assignment with the lowest score wins when the runner-up scores at least
:data:`MARGIN` times more; otherwise the group stays unproven (and a graft refuses it unless
accepted). Every decision and its scores are written into the plan's notes.

What it can and cannot tell apart, measured on the ImageNet EfficientNet-Lite0 weights
(docs/grafting.md): two same-shaped norms of one block (after the expansion and after the
depthwise conv) by a factor of 46–1389; two identical consecutive blocks hardly at all
(1.02–1.03), since a residual block barely changes the statistics of what flows past it —
those stay unproven. Randomly initialised weights carry no such record: their scores are
noise, no margin appears, and nothing is settled.

The probe batch: the caller's images when it has any, otherwise smooth random images (low
frequencies, as photographs have) normalised with the model's preprocessing, at a reduced
size for speed (:data:`PROBE_SIZE`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..model.anatomy import spec_of
from ..model.passes import evaluating
from .graft_plan import GraftPlan
from .resolve import settle

__all__ = ["MARGIN", "PROBE_SIZE", "has_statistics", "settle_by_statistics", "synthetic_images"]

#: The runner-up's score must be at least this multiple of the winner's.
MARGIN = 2.0
#: Side of the synthetic probe images, and how many.
PROBE_SIZE = 64
PROBE_COUNT = 8


def has_statistics(tensors: Mapping[str, torch.Tensor]) -> bool:
    """True when the source holds BatchNorm running statistics that were updated (a trained
    network's record, not the 0/1 of a fresh layer)."""
    return any(
        key.endswith(("running_var", "moving_variance"))
        and value.is_floating_point()
        and value.numel()
        and not torch.all(value == 1)
        for key, value in tensors.items()
    )


def synthetic_images(model: nn.Module, count: int = PROBE_COUNT, seed: int = 0) -> torch.Tensor:
    """Smooth random images normalised with ``model``'s preprocessing (see the docstring)."""
    spec = spec_of(model)
    channels, height, width = spec.preprocessing.input_size
    size = (min(height, PROBE_SIZE), min(width, PROBE_SIZE))
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, channels, 7, 7, generator=generator)
    images = F.interpolate(low, size=size, mode="bicubic", align_corners=False)
    images = (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    mean = torch.tensor(spec.preprocessing.mean[:channels]).view(1, -1, 1, 1)
    std = torch.tensor(spec.preprocessing.std[:channels]).view(1, -1, 1, 1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return ((images - mean) / std).to(device)


def settle_by_statistics(
    plan: GraftPlan,
    target: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    rebuild,
    images: torch.Tensor | None = None,
) -> GraftPlan:
    """``plan`` with the tie groups that the BatchNorm statistics decide by a clear margin
    proven (evidence ``bn-statistics``); the others unchanged. See the module docstring."""
    if not plan.ties or not has_statistics(tensors):
        return plan
    example = images if images is not None else synthetic_images(target)

    def judge(target_block, _source_block, trials, run, moved):
        watched = None if target_block else _watched(target, moved)
        scores = [_score(run(trial), target_block, example, watched) for trial in trials]
        if any(score is None for score in scores):
            return None, ""
        ranked = sorted(range(len(trials)), key=scores.__getitem__)
        best, runner_up = scores[ranked[0]], scores[ranked[1]]
        margin = runner_up / max(best, 1e-12)
        decided = margin >= MARGIN
        note = (
            f"bn-statistics: {target_block or 'the model'}: "
            f"{'settled' if decided else 'NOT settled'}, divergence {best:.3g} vs "
            f"{runner_up:.3g} for the runner-up (margin {margin:.3g}×, needed {MARGIN:g}×)"
        )
        return (ranked[0] if decided else None), note

    settled, summary = settle(plan, target, tensors, rebuild, judge, "bn-statistics")
    settled.notes.append(
        f"bn-statistics: {summary['settled']} of {summary['blocks']} block(s) of same-shaped "
        "siblings settled by the source's own BatchNorm statistics"
    )
    return settled


class _Stop(Exception):
    """Raised after the scored block ran: the rest of the forward pass is not needed."""


def _watched(model: nn.Module, moved: list[str]) -> set[str]:
    """The norms a trial of a whole-model group can disturb directly: the moved norms, and
    the first norm after each moved module (registration order). Summed over the whole
    model, the score would be dominated by every other norm and no margin would show."""
    names = [name for name, _ in model.named_modules()]
    norms = {name for name, m in model.named_modules() if _is_norm(m)}
    watched = set()
    for module in moved:
        if module in norms:
            watched.add(module)
            continue
        after = names[names.index(module) + 1 :] if module in names else []
        watched.update(
            next(([n] for n in after if n in norms and not n.startswith(module + ".")), [])
        )
    return watched


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None


def _score(
    model: nn.Module, block: str, images: torch.Tensor, watched: set[str] | None = None
) -> float | None:
    """Sum over the BatchNorms under ``block`` (or only the ``watched`` ones) of the mean
    per-channel divergence between their input's statistics and their running statistics
    (None: no BatchNorm there)."""
    divergences: list[float] = []
    root = model.get_submodule(block) if block else model
    hooks = [
        (module, "pre", _measure(divergences))
        for name, module in root.named_modules(prefix=block)
        if _is_norm(module) and (watched is None or name in watched)
    ]
    if not hooks:
        return None
    if block:
        hooks.append((root, "forward", _stop))
    try:
        with evaluating(model, hooks, grad=False):
            model(images)
    except _Stop:  # raised through evaluating: modes and hooks are back already
        pass
    return sum(divergences)


def _measure(divergences: list[float]):
    def hook(module, args):
        values = args[0].detach().float().transpose(0, 1).flatten(1)
        eps = module.eps
        mean, var = values.mean(1), values.var(1) + eps
        stored_mean, stored_var = module.running_mean.float(), module.running_var.float() + eps
        kl = 0.5 * (
            torch.log(stored_var / var) + (var + (mean - stored_mean) ** 2) / stored_var - 1
        )
        divergences.append(float(kl.mean()))

    return hook


def _stop(_module, _args, _output):
    raise _Stop
