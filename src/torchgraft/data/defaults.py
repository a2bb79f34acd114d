"""The data settings a run leaves unset, chosen from the data and the model — with reasons.

A folder of 8×8 digits prepared at a model's 224 px is upscaled 28×: each epoch costs ~12×
the 64 px one, and accuracy after the first full epoch fell from 86 % to 38 %. A user has
no way to know that, so what depends on the data is decided from the data:

* **Image size** (:func:`choose_image_size`): the median short side of a sample of the
  training images (headers only, :func:`measure_sides`), rounded up to a multiple of
  :data:`SIDE_MULTIPLE` and at least :data:`MIN_SIDE`, without a crop — unless that reaches
  the model's own size, or the model takes one size only: then the model's size and crop.
  Small images train near their own size; photographs at the model's.
* **Batch size** (:func:`choose_batch_size`): 32, or less for a tiny training split, so that
  an epoch still takes :data:`MIN_STEPS` optimizer steps.
* **Augmentation** (:func:`choose_augment`): ``light`` when the median class has fewer than
  :data:`FEW_PER_CLASS` training images, else ``none``.

Each choice is a :class:`DataChoice`: the setting, the value, and one line saying why, which
the run prints in its header and records in ``decisions.json`` (the value itself goes into
``config.yaml``, so a resumed run uses it again). A value the user gave is kept, and said so.
Every choice is a function of the files and the model only: the sample is the same every
time (evenly spaced over the split in its sorted order), never a function of timing.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..model.spec import Preprocessing
from .images import UnreadableImageError, read_size
from .sources import Split

__all__ = [
    "DEFAULT_BATCH",
    "FEW_PER_CLASS",
    "MIN_SIDE",
    "MIN_STEPS",
    "SAMPLE",
    "SIDE_MULTIPLE",
    "DataChoice",
    "choose_augment",
    "choose_batch_size",
    "choose_image_size",
    "held_out_note",
    "measure_sides",
]

#: Images whose headers are read to measure a split (evenly spaced over it).
SAMPLE = 256
#: Chosen sides are multiples of this: the total stride of common backbones (a ResNet's or
#: an EfficientNet's last feature map is 1/32 of the input; a ViT's 16 px patches divide it).
SIDE_MULTIPLE = 32
#: The smallest side chosen: at 32 px a stride-32 backbone ends on one pixel; 64 px is what
#: the built-in 8×8 digits reach 99 % at.
MIN_SIDE = 64
#: Batch size when the training split is large enough (the embedded default's).
DEFAULT_BATCH = 32
#: Optimizer steps an epoch should have at least: a tiny split gets smaller batches (down to
#: 8) rather than one or two steps an epoch.
MIN_STEPS = 8
_SMALLEST_BATCH = 8
#: A training split whose median class has fewer images than this is augmented (``light``).
#: bench/peers.py's folders: at 10 images a class light augmentation was 1.8 points more
#: accurate (3 seeds: 87.0/82.0/83.0 % against 85.0/82.5/79.0 %); at 60 a class it was 4 points
#: less (92.0 against 96.0 %) and costs the feature cache (random input). 30 lies between.
FEW_PER_CLASS = 30


@dataclass(frozen=True)
class DataChoice:
    """One data setting as the run uses it.

    Attributes:
        setting: the config key, e.g. ``"data.image_size"``.
        value: the value used (None: left to the model, whose own value it is).
        why: one line for people: what in the data or the model led to it.
        given: the user set it (``why`` says so; nothing was chosen).
    """

    setting: str
    value: object
    why: str
    given: bool = False

    def to_dict(self) -> dict:
        """The ``decisions.json`` entry."""
        return {"what": self.setting, "chosen": self.value, "why": self.why}

    def line(self) -> str:
        """The run header's line: ``data.image_size 64: why``."""
        shown = "unset (the model's own)" if self.value is None else self.value
        return f"{self.setting} {shown}: {self.why}"


def measure_sides(split: Split, sample: int = SAMPLE) -> list[tuple[int, int]]:
    """``(width, height)`` of up to ``sample`` images of ``split``, evenly spaced over it,
    read from their headers (:func:`~.images.read_size`); files that cannot be read are left
    out (the scan before training reports them). Array splits (the digits) give their
    arrays' shape."""
    count = len(split)
    if count == 0:
        return []
    if split.arrays is not None:
        height, width = split.arrays.shape[1:3]
        return [(int(width), int(height))] * min(count, sample)
    rows = np.unique(np.linspace(0, count - 1, num=min(count, sample)).round().astype(int))
    sides = []
    for row in rows:
        try:
            sides.append(read_size(split.paths[int(row)]))
        except UnreadableImageError:
            continue
    return sides


def choose_image_size(
    sides: list[tuple[int, int]],
    model: Preprocessing,
    *,
    runs_at: Callable[[int], bool] = lambda side: True,
) -> tuple[DataChoice, DataChoice]:
    """``data.image_size`` and ``data.crop_pct`` for images of ``sides`` and a model whose
    preprocessing is ``model`` (see the module docstring).

    Args:
        sides: ``(width, height)`` of the measured images (:func:`measure_sides`).
        model: the model's own preprocessing (its size, its crop, whether it is fixed).
        runs_at: whether the model runs on square images of a side (one forward pass, asked
            only for a side below the model's own); False keeps the model's size.
    """
    default = max(model.input_size[1:])
    keep = functools.partial(_model_own, model)
    if model.fixed_input_size:
        return keep(f"the model takes {default} px images only")
    if not sides:
        return keep(f"no training image could be measured: the model's {default} px")
    short = statistics.median_low(min(side) for side in sides)
    measured = f"training images {short} px on the short side (median of {len(sides):,})"
    side = max(MIN_SIDE, SIDE_MULTIPLE * math.ceil(short / SIDE_MULTIPLE))
    if side >= default:
        return keep(f"{measured}: the model's own size")
    if not runs_at(side):
        return keep(f"{measured}, but the model does not run at {side} px: its own size")
    return (
        DataChoice(
            "data.image_size",
            side,
            f"{measured}: near their own size; the model's {default} px would upscale them "
            f"{default / short:.1f}×",
        ),
        DataChoice("data.crop_pct", 1.0, "no crop: images near their own size keep every pixel"),
    )


def _model_own(model: Preprocessing, why: str) -> tuple[DataChoice, DataChoice]:
    """The model's own size and crop. A model whose input is not square keeps its height and
    width: the size is then left unset (None), which the preprocessing reads as the model's."""
    height, width = model.input_size[1:]
    size = height if height == width else None
    shown = f"{height} px" if size is not None else f"{height}×{width} px"
    return (
        DataChoice("data.image_size", size, why),
        DataChoice("data.crop_pct", model.crop_pct, f"the model's own crop at {shown}"),
    )


def held_out_note(fraction: float, seed: int, origin: str) -> DataChoice:
    """What a run without a validation split of its own validates on."""
    return DataChoice(
        "data.val_fraction",
        fraction,
        f"{origin} has no validation split: {fraction:.0%} of each class's images are held "
        f"out for it (data.split_seed {seed})",
    )


def choose_batch_size(train_images: int, processes: int = 1) -> DataChoice:
    """``data.batch_size`` (the global batch) for a training split of ``train_images``:
    :data:`DEFAULT_BATCH`, or the largest power of two that still gives :data:`MIN_STEPS`
    steps an epoch (at least 8), rounded up to a multiple of ``processes`` (each takes an
    equal part of the global batch)."""
    batch = DEFAULT_BATCH
    while batch > _SMALLEST_BATCH and train_images < MIN_STEPS * batch:
        batch //= 2
    batch = processes * math.ceil(batch / processes)  # each process an equal part
    if batch == DEFAULT_BATCH:
        why = f"{train_images:,} training images: the default {batch}"
    else:
        steps = math.ceil(train_images / batch)
        why = f"only {train_images:,} training images: batches of {batch}, {steps} steps an epoch"
    return DataChoice("data.batch_size", batch, why)


def choose_augment(labels: Sequence[int], *, hflip: bool = True) -> DataChoice:
    """``data.augment`` for a training split with these ``labels``: ``light`` (random resized
    crops, and flips with ``hflip``) when its median class has fewer than
    :data:`FEW_PER_CLASS` images, ``none`` otherwise (the head's epochs then train from the
    feature cache: the body runs once per image)."""
    # median_low: a count some class really has (the median of 10 classes can be 144.5)
    per_class = statistics.median_low(Counter(labels).values()) if labels else 0
    shown = f"{per_class:,} training images per class (median)"
    if per_class < FEW_PER_CLASS:
        what = "random crops and flips" if hflip else "random crops"
        why = (
            f"{shown}, fewer than {FEW_PER_CLASS}: {what}, so that the few images are not memorised"
        )
        return DataChoice("data.augment", "light", why)
    why = f"{shown}, {FEW_PER_CLASS} or more: the head's epochs train from cached features"
    return DataChoice("data.augment", "none", why)
