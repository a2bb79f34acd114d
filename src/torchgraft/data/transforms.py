"""Transforms built from the model's preprocessing: resize and crop, augmentation, normalisation.

Every sample goes through the same two steps, whether it is decoded once and kept in memory
or streamed from disk:

1. *base* (deterministic, PIL → uint8 tensor): resize the short side to
   ``size / crop_pct`` with the model's interpolation and take the centre ``size × size``
   crop — the evaluation preprocessing of timm and torchvision, done by Pillow exactly as
   torchvision's ``v2.Resize`` and ``v2.CenterCrop`` do it on a PIL image (the same sizes,
   filters and anchors), so that predicting and evaluating do not import torchvision;
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
from typing import TYPE_CHECKING

import torch
from PIL import Image

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

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

AUGMENT_PRESETS = ("none", "light", "strong")

#: Interpolation names torchgraft knows; any other is bilinear. The Pillow filter of each is
#: the one torchvision uses for its ``InterpolationMode`` of that name on a PIL image.
_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's ``InterpolationMode`` for ``name`` (bilinear for names not known)."""
    from torchvision.transforms import InterpolationMode  # seconds: only for augmentation

    return InterpolationMode(name) if name in _PIL_FILTERS else InterpolationMode.BILINEAR


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
    """PIL image → uint8 tensor (C, H, W): resize the short side, centre crop.

    The pixels of torchvision's ``v2.Compose([v2.Resize(short, interpolation),
    v2.CenterCrop((height, width))])`` on a PIL image, computed by Pillow the way those
    transforms compute them (torchvision itself takes seconds to import)."""
    height, width = pre.input_size[1:]
    resample = _PIL_FILTERS.get(pre.interpolation, Image.Resampling.BILINEAR)
    resize = max(height, width) if pre.crop_pct >= 1 else round(max(height, width) / pre.crop_pct)

    def transform(image: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(
            _center_crop(_resize_short_side(image, resize, resample), height, width)
        )

    return transform


def _resize_short_side(image: Image.Image, size: int, resample: int) -> Image.Image:
    """``image`` with its short side ``size`` and its long side scaled in proportion,
    truncated (torchvision's ``_compute_resized_output_size`` for one size); unchanged when
    it has those sides already (Pillow filters antialias when they shrink)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), resample=resample)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """The centre ``height × width`` of ``image``, anchored where torchvision anchors it
    (``round((side - crop) / 2)``, halves to even). The resized image always covers the
    crop (its short side is at least the crop's longer one); were it smaller, Pillow's crop
    would fill the outside with zeros, as torchvision's padding does."""
    image_width, image_height = image.size
    top = round((image_height - height) / 2.0)
    left = round((image_width - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


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
    from torchvision.transforms import v2  # seconds to import: only when a run trains

    size = tuple(pre.input_size[1:])
    mode = _interpolation_mode(pre.interpolation)
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
