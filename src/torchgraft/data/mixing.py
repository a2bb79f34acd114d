"""Mixup and CutMix from timm, for batches of any size.

timm's ``Mixup`` mixes a batch with its own reverse and refuses an odd batch size; the last
batch of an epoch is often odd. Here the largest even part is mixed and a last odd sample
keeps its own (label-smoothed) target.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

__all__ = ["BatchMixer"]


class BatchMixer:
    """``(images, labels) -> (mixed images, soft targets)`` for any batch size."""

    def __init__(self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int):
        self.mixup = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.smoothing, self.num_classes = label_smoothing, num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        even = len(images) - len(images) % 2
        if even == len(images):
            return self.mixup(images, labels)
        if even == 0:
            return images, mixup_target(labels, self.num_classes, 1.0, self.smoothing)
        mixed, targets = self.mixup(images[:even], labels[:even])
        last = mixup_target(labels[even:], self.num_classes, 1.0, self.smoothing)
        return torch.cat([mixed, images[even:]]), torch.cat([targets, last])
