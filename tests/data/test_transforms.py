"""Transforms from the model's preprocessing: overrides, the base resize-and-crop, the
augmentation presets and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.data.transforms import (
    Normalizer,
    base_transform,
    resolve_preprocessing,
    train_augment,
)
from torchgraft.model.spec import Preprocessing

MODEL = Preprocessing(
    input_size=(3, 224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bicubic",
    crop_pct=0.875,
)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _halves(width: int, height: int) -> Image.Image:
    """Red left half, blue right half."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = RED
    array[:, width // 2 :] = BLUE
    return Image.fromarray(array)


def _ramp(size: int = 32) -> torch.Tensor:
    """A uint8 (3, size, size) image that brightens from left to right in every channel."""
    row = torch.linspace(0, 255, size).round().to(torch.uint8)
    return row.expand(3, size, size).contiguous()


# --- resolve_preprocessing -----------------------------------------------------------------


def test_resolve_without_overrides_keeps_the_model_values():
    assert resolve_preprocessing(MODEL) == MODEL


def test_resolve_overrides_each_field():
    pre = resolve_preprocessing(
        MODEL,
        image_size=96,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
    )
    assert pre.input_size == (3, 96, 96)  # channels come from the model
    assert pre.crop_pct == 1.0
    assert pre.interpolation == "bilinear"
    assert pre.mean == (0.1, 0.2, 0.3)
    assert pre.std == (0.4, 0.5, 0.6)
    assert MODEL.input_size == (3, 224, 224)  # the model's own value is untouched


def test_resolve_single_mean_and_std_repeat_per_channel():
    pre = resolve_preprocessing(MODEL, mean=[0.5], std=[0.25])
    assert pre.mean == (0.5, 0.5, 0.5)
    assert pre.std == (0.25, 0.25, 0.25)
    grey = resolve_preprocessing(MODEL.with_channels(1), image_size=28, mean=[0.5])
    assert grey.input_size == (1, 28, 28)
    assert grey.mean == (0.5,)


def test_resolve_none_keeps_each_value():
    pre = resolve_preprocessing(MODEL, image_size=None, crop_pct=None, mean=None, std=(0.3,))
    assert pre.input_size == MODEL.input_size
    assert pre.crop_pct == MODEL.crop_pct
    assert pre.mean == MODEL.mean
    assert pre.interpolation == MODEL.interpolation
    assert pre.std == (0.3, 0.3, 0.3)


# --- base_transform ------------------------------------------------------------------------


def test_base_transform_shape_and_dtype():
    pre = Preprocessing(input_size=(3, 24, 24), crop_pct=0.875)
    out = base_transform(pre)(_halves(61, 37))
    assert out.shape == (3, 24, 24)
    assert out.dtype == torch.uint8
    grey = base_transform(Preprocessing(input_size=(1, 24, 24)))(_halves(40, 40).convert("L"))
    assert grey.shape == (1, 24, 24)


def _colour(out: torch.Tensor, colour) -> torch.Tensor:
    """Whether every pixel of ``out`` (C, H, W) is ``colour``."""
    return bool((out == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all())


def test_non_square_image_resized_on_its_short_side_and_centre_cropped():
    # 100x50 → short side 32 → 64x32 → centre 32x32 crop (columns 16..47 of the resize):
    # red on the left, blue on the right, the border in the middle.
    out = base_transform(Preprocessing(input_size=(3, 32, 32), crop_pct=1.0))(_halves(100, 50))
    assert _colour(out[:, :, :14], RED)
    assert _colour(out[:, :, 18:], BLUE)


def test_non_square_image_is_not_squashed():
    # Four vertical stripes: the centre crop of the short-side resize sees only the middle
    # two; squashing the whole width into 32 columns would show all four.
    stripes = np.zeros((50, 100, 3), dtype=np.uint8)
    for i, colour in enumerate([RED, GREEN, BLUE, WHITE]):
        stripes[:, 25 * i : 25 * (i + 1)] = colour
    pre = Preprocessing(input_size=(3, 32, 32), crop_pct=1.0)
    wide = base_transform(pre)(Image.fromarray(stripes))
    assert _colour(wide[:, :, 2:14], GREEN)
    assert _colour(wide[:, :, 18:30], BLUE)
    # The same image on its side: horizontal bands, the crop keeps the middle rows.
    tall = base_transform(pre)(Image.fromarray(np.ascontiguousarray(stripes.transpose(1, 0, 2))))
    assert _colour(tall[:, 2:14], GREEN)
    assert _colour(tall[:, 18:30], BLUE)


def test_base_transform_keeps_a_square_image_of_the_same_size():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = base_transform(Preprocessing(input_size=(3, 16, 16), crop_pct=1.0))(
        Image.fromarray(array)
    )
    assert torch.equal(out, torch.from_numpy(array).permute(2, 0, 1))


def test_crop_pct_below_one_crops_the_border_away():
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[0, :] = array[-1, :] = array[:, 0] = array[:, -1] = 255  # a 1-pixel white frame
    image = Image.fromarray(array)
    full = base_transform(Preprocessing(input_size=(3, 32, 32), crop_pct=1.0))(image)
    cropped = base_transform(Preprocessing(input_size=(3, 28, 28), crop_pct=0.875))(image)
    assert full.shape == (3, 32, 32)
    assert cropped.shape == (3, 28, 28)
    assert full[:, 0].max() > 0  # without the crop, the frame shows at the edge
    assert cropped.max() == 0  # resized to 32, then its centre 28x28: the frame is gone


# --- train_augment -------------------------------------------------------------------------


def test_augment_none_is_none():
    assert train_augment("none", MODEL) is None


def test_augment_unknown_preset():
    with pytest.raises(ValueError, match="'heavy'"):
        train_augment("heavy", MODEL)


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_augment_keeps_shape_and_dtype_is_random_and_reproducible(preset):
    pre = Preprocessing(input_size=(3, 32, 32))
    augment = train_augment(preset, pre)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
    torch.manual_seed(123)
    first, second = augment(image), augment(image)
    for out in (first, second):
        assert out.shape == (3, 32, 32)
        assert out.dtype == torch.uint8
    assert not torch.equal(first, second)
    torch.manual_seed(123)
    assert torch.equal(augment(image), first)
    assert torch.equal(augment(image), second)


def _flipped(out: torch.Tensor) -> bool:
    """Whether a crop of :func:`_ramp` came out mirrored (bright on the left)."""
    return out[:, :, 0].float().mean() > out[:, :, -1].float().mean()


def test_hflip_false_never_flips():
    augment = train_augment("light", Preprocessing(input_size=(3, 32, 32)), hflip=False)
    image = _ramp()
    torch.manual_seed(0)
    assert not any(_flipped(augment(image)) for _ in range(60))


def test_hflip_true_flips_sometimes():
    augment = train_augment("light", Preprocessing(input_size=(3, 32, 32)), hflip=True)
    image = _ramp()
    torch.manual_seed(0)
    flips = sum(_flipped(augment(image)) for _ in range(60))
    assert 10 < flips < 50


# --- Normalizer ----------------------------------------------------------------------------


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_normalizer(memory_format):
    pre = Preprocessing(input_size=(3, 5, 6), mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    batch = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    out = Normalizer(pre, torch.device("cpu"), memory_format)(batch)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    expected = (batch.double() / 255 - mean.double()) / std.double()
    assert out.dtype == torch.float32
    assert out.shape == (4, 3, 5, 6)
    assert (out.double() - expected).abs().max() < 1e-6
    assert out.is_contiguous(memory_format=memory_format)


def test_images_larger_than_torchgraft_prepares_are_refused_naming_the_keys():
    from torchgraft.errors import ConfigError
    from torchgraft.model.spec import MAX_SIDE

    model = Preprocessing(input_size=(3, 224, 224), crop_pct=0.875)
    assert resolve_preprocessing(model, image_size=MAX_SIDE, crop_pct=1.0).input_size[1] == MAX_SIDE
    for changes in ({"crop_pct": 1e-9}, {"image_size": MAX_SIDE + 1}, {"image_size": MAX_SIDE}):
        with pytest.raises(ConfigError, match=r"data.image_size \d+ with data.crop_pct"):
            resolve_preprocessing(model, **changes)  # the last: 8192 / 0.875 before the crop
