"""The folders of bench/peers.py, built deterministically from files that ship with packages.

Every dataset is a folder ``train/<class>/…`` and ``val/<class>/…``, the layout both
``torchgraft train --data.source`` and fastai's ``ImageDataLoaders.from_folder`` read:

* **digits**: torchgraft's bundled UCI digits (values scaled to 0–255), one 8×8 grayscale
  PNG each, split 80/20 by torchgraft's own ``stratified_split`` (seed 0), the split of
  ``torchgraft train`` with no arguments.
* **photos**: crops of the real photographs that scikit-image and scikit-learn ship
  (:data:`PHOTOGRAPHS`), one class per photograph, as JPEG. Each photograph is cut into a
  grid of blocks of at least :data:`BLOCK` px; about a quarter of the blocks, spread over the
  picture, give the validation crops and the others the training crops, so no validation
  pixel was ever seen in training. Crops have a short side from 40 to 160 px (log-uniform)
  and an aspect ratio from 3:4 to 4:3: a folder of mixed sizes, as photographs come.
* **few-shot**: the first 10 training crops of each class of ``photos``, the same validation.
* **grayscale**: ``photos`` converted to one channel (mode ``L`` JPEG files).

The random draws come from ``numpy.random.default_rng`` seeded per photograph; a folder is
rebuilt only when its recipe (:func:`recipe`) changed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

#: One class per photograph: (class name, package, path inside the package).
PHOTOGRAPHS = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("cat", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("galaxies", "skimage", "data/hubble_deep_field.jpg"),
    ("temple", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)
DATASETS = ("digits", "photos", "few-shot", "grayscale")
#: The smallest block side: the largest crop (160 px) fits in any block.
BLOCK = 170
SHORT_SIDES = (40, 160)
FEW_SHOT = 10
#: Crops per class (train, val): the measurement and the --quick development run.
PHOTO_COUNTS = {"full": (60, 25), "quick": (12, 6)}
#: Digits per class in --quick (train, val), taken from the full split; the full run has all.
QUICK_DIGITS = (15, 5)


def recipe(name: str, quick: bool) -> dict:
    """What a folder is made from: a cached folder with another recipe is rebuilt."""
    mode = "quick" if quick else "full"
    if name == "digits":
        return {"name": name, "mode": mode, "split_seed": 0, "quick_counts": QUICK_DIGITS}
    return {
        "name": name,
        "mode": mode,
        "photographs": [p[2] for p in PHOTOGRAPHS],
        "counts": PHOTO_COUNTS[mode],
        "block": BLOCK,
        "short_sides": SHORT_SIDES,
        "few_shot": FEW_SHOT,
        "version": 1,
    }


def build(name: str, cache: Path, quick: bool) -> Path:
    """The folder of dataset ``name`` under ``cache``, built unless already there."""
    folder = cache / ("quick" if quick else "full") / name
    stamp = folder / "recipe.json"
    wanted = recipe(name, quick)
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if name == "digits":
        _digits(folder, quick)
    else:
        _photos(folder, quick, few_shot=name == "few-shot", gray=name == "grayscale")
    stamp.write_text(json.dumps(wanted))
    return folder


def _digits(folder: Path, quick: bool) -> None:
    from torchgraft.data.digits import load_digits
    from torchgraft.data.sources import stratified_split

    images, labels = load_digits()
    splits = dict(zip(("train", "val"), stratified_split(labels.tolist(), 0.2, 0), strict=True))
    for split, rows in splits.items():
        written: dict[int, int] = {}
        for row in rows:
            label = int(labels[row])
            limit = QUICK_DIGITS[split == "val"] if quick else math.inf
            if written.get(label, 0) >= limit:
                continue
            written[label] = written.get(label, 0) + 1
            target = folder / split / str(label) / f"{row:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row], mode="L").save(target)


def _photos(folder: Path, quick: bool, *, few_shot: bool, gray: bool) -> None:
    train_count, val_count = PHOTO_COUNTS["quick" if quick else "full"]
    for index, (label, package, inner) in enumerate(PHOTOGRAPHS):
        picture = Image.open(_package_file(package, inner)).convert("RGB")
        if gray:
            picture = picture.convert("L")
        train_blocks, val_blocks = _blocks(*picture.size)
        rng = np.random.default_rng(1000 + index)
        # Draw the full training list always, so few-shot takes the first crops of photos.
        crops = {
            "train": [_crop_box(rng, train_blocks) for _ in range(train_count)],
            "val": [_crop_box(rng, val_blocks) for _ in range(val_count)],
        }
        if few_shot:
            crops["train"] = crops["train"][: min(FEW_SHOT, train_count)]
        for split, boxes in crops.items():
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for number, box in enumerate(boxes):
                picture.crop(box).save(target / f"{number:03d}.jpg", quality=90)


def _package_file(package: str, inner: str) -> Path:
    module = __import__(package)
    path = Path(module.__file__).parent / inner
    if not path.exists():
        raise SystemExit(f"{path}: not found; pip install scikit-image scikit-learn")
    return path


def _blocks(width: int, height: int) -> tuple[list, list]:
    """(train blocks, val blocks) as (left, top, right, bottom): a grid of cells of at least
    BLOCK px, about a quarter of them — spread over the grid — held out for validation."""
    columns, rows = max(1, width // BLOCK), max(1, height // BLOCK)
    cells = [
        (
            c * width // columns,
            r * height // rows,
            (c + 1) * width // columns,
            (r + 1) * height // rows,
        )
        for r in range(rows)
        for c in range(columns)
    ]
    held = max(1, round(len(cells) / 4))
    picked = {min(len(cells) - 1, round((k + 0.5) * len(cells) / held)) for k in range(held)}
    return [c for i, c in enumerate(cells) if i not in picked], [cells[i] for i in picked]


def _crop_box(rng: np.random.Generator, blocks: list) -> tuple[int, int, int, int]:
    left, top, right, bottom = blocks[rng.integers(len(blocks))]
    short = math.exp(rng.uniform(*np.log(SHORT_SIDES)))
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    width = min(right - left, round(short * max(1.0, aspect)))
    height = min(bottom - top, round(short * max(1.0, 1 / aspect)))
    x = left + int(rng.integers(right - left - width + 1))
    y = top + int(rng.integers(bottom - top - height + 1))
    return x, y, x + width, y + height
