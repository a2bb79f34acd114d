"""Transforms built from the model's preprocessing: resize and crop, augmentation, normalisation.

Every sample goes through the same two steps, whether it is decoded once and kept in memory
or streamed from disk:

1. *base* (deterministic, PIL → uint8 tensor): resize the short side to
   ``size / crop_pct`` with the model's interpolation and take the centre ``size × size``
   crop — the evaluation preprocessing of timm and torchvision;
2. *augment* (training only, uint8 tensor → uint8 tensor): a preset made of torchvision's
   ``transforms.v2`` (``none``, ``light``, ``strong``), applied to the base image.

Normalisation (``(x / 255 - mean) / std``) happens on the batch, on the device, so the data
path moves 1-byte pixels. Because augmentation starts from the base image in both cases, an
in-memory run and a streamed run see exactly the same base pixels (the same augmented ones
too, statistically: streaming draws the workers' seeds from torch's generator, so the
random crops themselves differ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from ..errors import ConfigError
from ..model.spec import MAX_SIDE, Preprocessing
from .images import to_uint8_tensor

__all__ = [
    "AUGMENT_PRESETS",
    "Normalizer",
    "base_transform",
    "resolve_preprocessing",
    "train_augment",
]

AUGMENT_PRESETS = ("none", "light", "strong")

_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


def resolve_preprocessing(
    model_pre: Preprocessing,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The model's preprocessing with the run's overrides (None keeps the model's value).

    Mean and std given with another number of channels than the model's are refused by the
    caller's config check; a single value is repeated for every channel.
    """
    channels = model_pre.input_size[0]
    changes: dict = {}
    if image_size is not None:
        changes["input_size"] = (channels, image_size, image_size)
    if crop_pct is not None:
        changes["crop_pct"] = crop_pct
    if interpolation is not None:
        changes["interpolation"] = interpolation
    if mean is not None:
        changes["mean"] = _per_channel(mean, channels)
    if std is not None:
        changes["std"] = _per_channel(std, channels)
    resolved = dataclasses.replace(model_pre, **changes)
    _check_sides(resolved)
    return resolved


def _check_sides(pre: Preprocessing) -> None:
    """Refuse images larger than :data:`~torchgraft.model.spec.MAX_SIDE` a side, as prepared
    (``data.crop_pct`` 1e-9 asked Pillow for a side of 1.6e10 pixels: an OverflowError)."""
    side = max(pre.input_size[1:])
    resize = side if pre.crop_pct >= 1 else side / pre.crop_pct
    if resize > MAX_SIDE:
        raise ConfigError(
            f"data.image_size {side} with data.crop_pct {pre.crop_pct:g} resizes images to "
            f"{resize:,.0f} px a side before the crop, over the {MAX_SIDE:,} px torchgraft "
            "prepares; use a smaller image_size or a crop_pct closer to 1"
        )


def base_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → uint8 tensor (C, H, W): resize the short side, centre crop."""
    height, width = pre.input_size[1:]
    mode = _INTERPOLATIONS.get(pre.interpolation, InterpolationMode.BILINEAR)
    resize = max(height, width) if pre.crop_pct >= 1 else round(max(height, width) / pre.crop_pct)
    pipeline = v2.Compose(
        [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop((height, width))]
    )

    def transform(image: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(pipeline(image))

    return transform


def train_augment(
    preset: str, pre: Preprocessing, *, hflip: bool = True
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The augmentation of a preset, on one uint8 image tensor; None for ``none``.

    * ``light``: random resized crop (scale 0.35–1) and, with ``hflip``, horizontal flips.
    * ``strong``: random resized crop (scale 0.08–1, as timm and torchvision train ImageNet),
      flips, RandAugment (2 operations, magnitude 9) and random erasing (p = 0.25).

    Random draws use torch's global generator (its state is part of a run's resume state).
    """
    if preset == "none":
        return None
    size = tuple(pre.input_size[1:])
    mode = _INTERPOLATIONS.get(pre.interpolation, InterpolationMode.BILINEAR)
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    if preset == "light":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=mode, antialias=True),
            *flip,
        ]
    elif preset == "strong":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=mode, antialias=True),
            *flip,
            v2.RandAugment(num_ops=2, magnitude=9, interpolation=mode),
            v2.RandomErasing(p=0.25),
        ]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}; use one of {AUGMENT_PRESETS}")
    return v2.Compose(steps)


class Normalizer:
    """uint8 batches (B, C, H, W) → float ``(x / 255 - mean) / std``, on ``device``, in
    ``memory_format`` (channels-last for convolutional models)."""

    def __init__(
        self,
        pre: Preprocessing,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(pre.mean, device=device).view(shape) * 255.0
        self.std = torch.tensor(pre.std, device=device).view(shape) * 255.0
        self.device, self.memory_format = device, memory_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True).float()
        return ((batch - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def _per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values * channels if len(values) == 1 else values
