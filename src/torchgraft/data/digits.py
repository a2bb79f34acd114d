"""The UCI handwritten digits that ship with torchgraft (see ``digits/README.md``).

1,797 grey 8×8 images with values 0–16, ten classes ``"0"`` … ``"9"``. They are the data
of the embedded default run; :func:`load_digits` reads them without scikit-learn.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

__all__ = ["DIGIT_CLASSES", "load_digits"]

DIGIT_CLASSES = tuple(str(d) for d in range(10))
_FILE = "digits.csv.gz"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The images as ``uint8`` of shape (1797, 8, 8), scaled from 0–16 to 0–255, and labels.

    Values are scaled with ``v * 255 // 16`` so that 16 (fully inked) becomes 255.
    """
    package = resources.files(__package__).joinpath("digits", _FILE)
    with package.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :64], table[:, 64]
    images = (pixels * 255 // 16).astype(np.uint8).reshape(-1, 8, 8)
    return images, labels.astype(np.int64)
