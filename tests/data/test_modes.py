"""The tiled conversions give exactly the whole-image result, and decode_cost reads its
figures from the header (see tests/security/test_data_bounds.py for the measured memory)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from torchgraft.data import modes
from torchgraft.data.images import load_image
from torchgraft.data.modes import FIXED_COST, decode_cost, pixel_bytes, tiles


def _noise(shape, dtype=np.uint8, high=256, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def _files(tmp_path):
    """One real file per conversion path, 37 x 23 pixels (odd sizes cross tile edges)."""
    shape = (23, 37)
    floats = _noise(shape, np.float32, 1000) / 999
    floats[0, 0], floats[1, 1], floats[2, 2] = np.nan, np.inf, -np.inf
    rgb = _noise((*shape, 3))
    made = {
        "float.tif": Image.fromarray(floats, mode="F"),
        "wide_float.tif": Image.fromarray(floats * 500 - 100, mode="F"),
        "sixteen.png": Image.fromarray(_noise(shape, np.uint16, 65536)),
        "int32.tif": Image.fromarray(_noise(shape, np.int32, 1_000_000) - 300, mode="I"),
        "rgba.png": Image.fromarray(_noise((*shape, 4))),
        "la.png": Image.fromarray(_noise((*shape, 4))).convert("LA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
        "rgb.png": Image.fromarray(rgb),
    }
    for name, image in made.items():
        image.save(tmp_path / name)
    key = Image.fromarray(_noise(shape, np.uint16, 4))  # values 0-3: many transparent pixels
    key.save(tmp_path / "sixteen_key.png", transparency=2)
    return [tmp_path / name for name in [*made, "sixteen_key.png"]]


@pytest.mark.parametrize("channels", [3, 1])
def test_tiles_of_seven_pixels_give_the_whole_image_result(tmp_path, monkeypatch, channels):
    files = _files(tmp_path)
    whole = {path.name: np.asarray(load_image(path, channels)) for path in files}
    monkeypatch.setattr(modes, "TILE_PIXELS", 7)  # 37-pixel rows: tiles of part of a row
    for path in files:
        tiled = np.asarray(load_image(path, channels))
        assert np.array_equal(tiled, whole[path.name]), path.name


@pytest.mark.parametrize(("width", "height", "limit"), [(37, 23, 7), (37, 23, 100), (5, 5, 1000)])
def test_tiles_cover_the_image_once_within_the_limit(width, height, limit):
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in tiles(width, height, limit):
        assert (right - left) * (bottom - top) <= limit
        covered[top:bottom, left:right] += 1
    assert (covered == 1).all()


def test_pixel_bytes_are_what_pillow_stores():
    assert [pixel_bytes(m) for m in ("1", "L", "P", "I;16", "I;16B")] == [1, 1, 1, 2, 2]
    assert {pixel_bytes(m) for m in ("RGB", "RGBA", "CMYK", "LA", "I", "F", "YCbCr")} == {4}


def _opened(tmp_path, name: str, image: Image.Image, **save) -> Image.Image:
    image.save(tmp_path / name, **save)
    return Image.open(tmp_path / name)


def test_the_cost_is_decoded_image_plus_output_by_phase(tmp_path):
    pixels = 100 * 80
    f = _opened(tmp_path, "f.tif", Image.new("F", (100, 80)))
    cost = decode_cost(f, 3, rotated=False)  # F (4) and an L (1), then L (1) and RGB (4)
    assert (cost.bytes - FIXED_COST, cost.phase) == (5 * pixels, "convert")
    rgb = _opened(tmp_path, "rgb.png", Image.new("RGB", (100, 80)))
    assert decode_cost(rgb, 3, rotated=False).bytes - FIXED_COST == 4 * pixels  # no copy
    assert decode_cost(rgb, 3, rotated=True).bytes - FIXED_COST == 8 * pixels  # a rotated one
    assert decode_cost(rgb, 1, rotated=False).bytes - FIXED_COST == 5 * pixels
    webp = _opened(tmp_path, "x.webp", Image.new("RGB", (100, 80)), lossless=True)
    assert decode_cost(webp, 3, rotated=False).bytes - FIXED_COST == 16 * pixels
    strip = _opened(
        tmp_path, "strip.tif", Image.new("F", (100, 80)), compression="tiff_deflate",
        strip_size=2**31 - 1,
    )  # fmt: skip
    cost = decode_cost(strip, 1, rotated=False)  # libtiff holds the one strip: 4 more bytes
    assert (cost.bytes - FIXED_COST, cost.phase) == (8 * pixels, "load")
    assert "100 x 80 F TIFF, while decoding" in cost.describe(strip)
