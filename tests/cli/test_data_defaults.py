"""``torchgraft train`` on a user's folder chooses its image size, batch size and augmentation
from the data, says so in the header, and records the choice (config.yaml, decisions.json); a value
given on the command line wins. Real subprocesses of the installed console script."""

from __future__ import annotations

import json

import yaml
from PIL import Image

from support import run_cli, tiny_config, write_digit_folder


def train(console_script, env, tmp_path, images, *args):
    config = tiny_config(images, tmp_path / "runs", train={"epochs": 1, "max_steps": 1})
    for key in ("image_size", "batch_size", "augment"):
        del config["data"][key]  # left to the data, as a user's config would
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_cli(console_script, "train", "--config", path, *args, env=env)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "run"
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    decisions = {d["what"]: d for d in json.loads((run / "decisions.json").read_text())}
    return done.stdout, data, decisions


def test_a_folder_of_tiny_images_trains_near_their_size(console_script, subprocess_env, tmp_path):
    images = write_digit_folder(tmp_path / "digits", per_class=10, size=8)  # 8x8 PNGs
    out, data, decisions = train(console_script, subprocess_env, tmp_path, images)
    assert "data.image_size 64: training images 8 px on the short side" in out
    assert "the model's 224 px would upscale them 28.0×" in out
    assert "data.batch_size 8: only 24 training images" in out
    assert "has no validation split: 20% of each class's images are held out" in out
    assert (data["image_size"], data["crop_pct"], data["batch_size"]) == (64, 1.0, 8)
    assert decisions["data.image_size"]["chosen"] == 64
    assert "8 px on the short side" in decisions["data.image_size"]["why"]
    assert decisions["data.batch_size"]["chosen"] == 8
    # 8 training images a class: augmented, so the body does not learn them by heart.
    line = "data.augment light: 8 training images per class (median), fewer than 30: random crops"
    assert line in out
    assert data["augment"] == "light"
    assert decisions["data.augment"]["chosen"] == "light"
    assert "(cached features)" not in out  # random input: the body runs every step


def test_a_folder_with_enough_images_per_class_is_not_augmented(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "digits", per_class=40, size=8)  # 32 a class train
    out, data, decisions = train(console_script, subprocess_env, tmp_path, images)
    assert "data.augment none: 32 training images per class (median), 30 or more" in out
    assert data["augment"] == "none"
    assert decisions["data.augment"]["chosen"] == "none"


def test_a_folder_of_photographs_trains_at_the_models_size(
    console_script, subprocess_env, tmp_path
):
    for label in ("cat", "dog"):
        for i in range(6):
            folder = tmp_path / "photos" / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (400 + i, 300), (40 * i, 90, 200)).save(folder / f"{i}.jpg")
    out, data, decisions = train(console_script, subprocess_env, tmp_path, tmp_path / "photos")
    assert "data.image_size 224: training images 300 px on the short side" in out
    assert "the model's own size" in out
    # TinyCNN's preprocessing is torchgraft's default for a model it does not know.
    assert (data["image_size"], data["crop_pct"]) == (224, 0.875)
    assert decisions["data.crop_pct"]["chosen"] == 0.875


def test_the_command_line_overrides_the_choice(console_script, subprocess_env, tmp_path):
    images = write_digit_folder(tmp_path / "digits", per_class=10, size=8)
    out, data, decisions = train(
        console_script,
        subprocess_env,
        tmp_path,
        images,
        "--data.image_size", "40", "--data.batch_size", "4", "--data.augment", "none",
    )  # fmt: skip
    assert "data.image_size" not in out
    assert "data.batch_size" not in out
    assert "data.augment" not in out
    assert data["augment"] == "none"
    # A size given without a crop takes the model's own crop, as before.
    assert (data["image_size"], data["crop_pct"], data["batch_size"]) == (40, 0.875, 4)
    assert decisions["data.image_size"] == {"what": "data.image_size", "chosen": 40, "why": "given"}
