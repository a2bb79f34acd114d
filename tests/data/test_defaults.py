"""Data settings chosen from the data: image size and crop from the training images' sides,
batch size from the training split's size, each with its reason (torchgraft.data.defaults).
The subprocess side (the header, config.yaml, decisions.json) is tests/cli/test_data_defaults.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from handmade_models import LeNet, TinyCNN
from torchgraft.data.defaults import (
    DataChoice,
    choose_augment,
    choose_batch_size,
    choose_image_size,
    measure_sides,
)
from torchgraft.data.images import UnreadableImageError, load_image, read_size
from torchgraft.data.sources import Split, discover
from torchgraft.engine.setup import _runs_at
from torchgraft.model.spec import Preprocessing

#: A model preprocessing like Lite0's or a ResNet's: 224 px, crop 0.875.
MODEL = Preprocessing(input_size=(3, 224, 224), crop_pct=0.875)


def sides(short: int, count: int = 9) -> list[tuple[int, int]]:
    """``count`` images ``short`` px on their short side (landscape and portrait mixed)."""
    return [(short, short * 2) if i % 2 else (short * 3 // 2, short) for i in range(count)]


@pytest.mark.parametrize(
    ("short", "size"),
    [(8, 64), (28, 64), (64, 64), (65, 96), (100, 128), (190, 192)],
)
def test_small_images_train_near_their_own_size_without_a_crop(short, size):
    image_size, crop = choose_image_size(sides(short), MODEL)
    assert (image_size.value, crop.value) == (size, 1.0)
    assert image_size.setting == "data.image_size"
    assert crop.setting == "data.crop_pct"
    assert f"{short} px on the short side" in image_size.why
    assert "224 px would upscale them" in image_size.why


@pytest.mark.parametrize("short", [200, 224, 500, 3000])
def test_large_images_train_at_the_models_own_size_and_crop(short):
    image_size, crop = choose_image_size(sides(short), MODEL)
    assert (image_size.value, crop.value) == (224, 0.875)
    assert "the model's own size" in image_size.why


def test_the_median_decides_not_an_outlier():
    mixed = sides(8, 20) + sides(4000, 3)
    assert choose_image_size(mixed, MODEL)[0].value == 64


def test_a_model_with_a_non_square_input_keeps_its_height_and_width():
    wide = Preprocessing(input_size=(3, 224, 320), crop_pct=0.9)
    image_size, crop = choose_image_size(sides(500), wide)
    assert image_size.value is None  # unset: the model's own 224x320, not squared
    assert crop.value == 0.9
    assert "224×320 px" in crop.why
    assert image_size.line().startswith("data.image_size unset (the model's own): ")


def test_a_fixed_size_model_keeps_its_size():
    fixed = Preprocessing(input_size=(3, 224, 224), crop_pct=0.9, fixed_input_size=True)
    image_size, crop = choose_image_size(sides(8), fixed)
    assert (image_size.value, crop.value) == (224, 0.9)
    assert "224 px images only" in image_size.why


def test_a_model_that_does_not_run_at_the_small_size_keeps_its_own():
    asked = []
    image_size, crop = choose_image_size(sides(8), MODEL, runs_at=lambda s: asked.append(s))
    assert asked == [64]
    assert (image_size.value, crop.value) == (224, 0.875)
    assert "does not run at 64 px" in image_size.why


def test_nothing_measured_keeps_the_models_size():
    assert choose_image_size([], MODEL)[0].value == 224


def test_runs_at_asks_the_model_itself():
    # LeNet's flatten fits 32x32 only; TinyCNN pools adaptively and takes any size.
    assert _runs_at(LeNet(), 1, 32)
    assert not _runs_at(LeNet(), 1, 64)
    model = TinyCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _runs_at(model, 3, 64)
    assert model.training  # modes as they were
    after = model.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


@pytest.mark.parametrize(
    ("images", "processes", "batch"),
    [(5000, 1, 32), (256, 1, 32), (255, 1, 16), (128, 1, 16), (127, 1, 8), (30, 1, 8), (30, 3, 9)],
)
def test_a_tiny_training_split_gets_smaller_batches(images, processes, batch):
    choice = choose_batch_size(images, processes)
    assert choice.value == batch
    assert choice.value % processes == 0
    assert isinstance(choice, DataChoice)
    assert choice.setting == "data.batch_size"
    assert f"{images:,} training images" in choice.why


@pytest.mark.parametrize(("per_class", "preset"), [(1, "light"), (29, "light"), (30, "none")])
def test_few_images_per_class_are_augmented(per_class, preset):
    choice = choose_augment([label for label in range(4) for _ in range(per_class)])
    assert (choice.setting, choice.value, choice.given) == ("data.augment", preset, False)
    assert f"{per_class} training images per class (median)" in choice.why


def test_the_median_class_decides_the_augmentation():
    # One large class among small ones is still few-shot data; one small class is not.
    few = [0] * 500 + [1] * 10 + [2] * 10
    many = [0] * 5 + [1] * 40 + [2] * 40
    assert choose_augment(few).value == "light"
    assert choose_augment(many).value == "none"


def test_without_flips_the_reason_says_crops_only():
    assert "and flips" in choose_augment([0, 1]).why
    assert "and flips" not in choose_augment([0, 1], hflip=False).why
    assert "random crops" in choose_augment([0, 1], hflip=False).why


def write(path, size, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, fmt)
    return path


def test_measure_reads_headers_of_an_even_sample_and_skips_unreadable_files(tmp_path):
    paths = [write(tmp_path / f"{i:03d}.png", (10 + i, 40)) for i in range(10)]
    paths.append(tmp_path / "broken.png")
    paths[-1].write_bytes(b"not an image")
    split = Split("train", [0] * len(paths), paths)
    assert measure_sides(split) == [(10 + i, 40) for i in range(10)]
    assert measure_sides(split, sample=3) == [(10, 40), (15, 40)]  # rows 0, 5 (10: broken)


def test_measure_of_the_digits_reads_their_arrays():
    source = discover("digits")
    assert set(measure_sides(source.splits["train"])) == {(8, 8)}
    assert source.val_held_out


def test_read_size_reads_the_header_only_and_refuses_what_is_no_image(tmp_path):
    photo = write(tmp_path / "photo.jpg", (640, 480), "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:-200])  # header intact, the last pixels gone
    assert read_size(photo) == read_size(cut) == (640, 480)
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg"):
        load_image(cut)  # only a decode finds the cut
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableImageError, match=r"pipe\.png"):
        read_size(fifo)  # refused from its stat, never opened (no hang)
    (tmp_path / "notes.png").write_text("a shopping list")
    with pytest.raises(UnreadableImageError, match=r"notes\.png"):
        read_size(tmp_path / "notes.png")


def test_a_folder_with_its_own_val_split_holds_nothing_out(tmp_path):
    for split in ("train", "val"):
        for label in ("a", "b"):
            for i in range(3):
                write(tmp_path / split / label / f"{i}.png", (20, 20))
    assert not discover(str(tmp_path)).val_held_out
    assert discover(str(tmp_path / "train")).val_held_out
