"""Decoded pixels of any mode into ``"RGB"`` or ``"L"``, tile by tile, and what that costs.

Pillow decodes a file into the mode the file stores (``"I;16"``, ``"F"``, ``"CMYK"``, ``"P"``,
``"RGBA"`` ...); a dataset needs ``"RGB"`` (3 channels) or ``"L"`` (1). Every conversion here
is pointwise, so it runs on tiles of at most :data:`TILE_PIXELS` pixels pasted into one output
image: the temporaries (numpy arrays of float64 for a float image, a white background for an
alpha composite) are those of one tile, never of the whole image. Measured on a 9,400 x 9,400
image (88 M pixels, peak RSS growth of one ``load_image`` in a fresh child), the whole-image
conversions this replaces cost: float ``"F"`` 48 bytes per pixel (4.0 GB), 32-bit ``"I"`` 44,
16-bit ``"I;16"`` 23, ``"RGBA"`` 24, ``"RGB"`` 12 (two copies: an EXIF copy and a no-op
convert), ``"L"`` 6. The tiled ones cost the decoded image plus the output (see
:func:`decode_cost`).

The rules themselves (see :mod:`.images`): transparency is composited over white; 16- and
32-bit integer and float images are scaled to 8 bits by bit depth, never clipped;
``channels=1`` is the luma of the RGB result.

:func:`decode_cost` is the honest estimate of one decode's peak memory, from the header alone
(size, mode, format, and for TIFF the strip or tile a decoder holds), measured per phase:

* *load*: the decoded image (:func:`pixel_bytes` of its mode) plus the decoder's own buffer:
  WebP decodes into a buffer and copies it (16 bytes per pixel measured, any mode), libtiff
  holds one strip or tile of the stored samples of a compressed TIFF (a one-strip TIFF: the
  whole image again);
  PNG, JPEG, GIF, BMP and PPM decode row by row (< 0.05 byte per pixel);
* *convert*: the decoded image, the output (4 bytes per pixel for ``"RGB"``, 1 for ``"L"``;
  nothing when the mode already is the output's), and one tile's temporaries;
* *orient*: an EXIF rotation makes a rotated copy of the output (the decoded image is freed
  by then).

The estimate is the largest phase plus :data:`FIXED_COST`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "FIXED_COST",
    "TILE_PIXELS",
    "WHITE_BACKGROUND",
    "DecodeCost",
    "convert_decoded",
    "decode_cost",
    "pixel_bytes",
    "tiles",
]

#: Pixels of one tile: its float64 temporaries (about 64 bytes per pixel at most) stay near
#: 16 MiB, and a 88 M pixel image takes ~340 tiles (the per-tile overhead is negligible).
TILE_PIXELS = 1 << 18

#: Bytes of one tile's temporaries (measured: 55 per pixel for a float image) and of the
#: decoders' fixed buffers, added to every estimate.
FIXED_COST = TILE_PIXELS * 64 + (16 << 20)

#: The colour transparent pixels are composited over (RGB). White, like a browser page or a
#: product photo's studio backdrop; it is the convention of most image datasets.
WHITE_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_HIGH_DEPTH = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})

#: Bytes Pillow stores per pixel, by mode (its ``ImagingNew``): one for 8-bit single-band
#: modes, two for 16-bit ones, four for every other mode Pillow decodes (``"RGB"`` included:
#: it is stored with a padding byte).
_PIXEL_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "BGR;15": 2,
    "BGR;16": 2,
    "BGR;24": 3,
}

#: Bytes per pixel a format's decoder holds besides the decoded image (measured, see the
#: module docstring); TIFF is computed from the file's strip or tile size.
_DECODER_BYTES = {"WEBP": 12}


@dataclass(frozen=True)
class DecodeCost:
    """The estimated peak memory of decoding one image, and the phase that sets it."""

    bytes: int
    phase: str  # "load", "convert" or "orient"

    def describe(self, img: Image.Image) -> str:
        """``"about 512 MiB (9,400 x 9,400 F TIFF, while converting)"``."""
        mib = self.bytes / (1 << 20)
        what = f"{img.width:,} x {img.height:,} {img.mode} {img.format or 'image'}"
        return f"about {mib:,.0f} MiB ({what}, while {_PHASE_WORDS[self.phase]})"


_PHASE_WORDS = {"load": "decoding", "convert": "converting", "orient": "rotating"}


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow keeps per pixel of an image of ``mode`` (4 for any mode not listed)."""
    return _PIXEL_BYTES.get(mode, 4)


def decode_cost(img: Image.Image, channels: int, *, rotated: bool) -> DecodeCost:
    """The peak memory of loading ``img`` (opened, not yet loaded) and converting it.

    Args:
        img: an image as :func:`PIL.Image.open` returns it (after ``draft``, if any).
        channels: 3 (an ``"RGB"`` output) or 1 (``"L"``).
        rotated: whether an EXIF orientation will rotate or flip the output.
    """
    pixels = max(1, img.width) * max(1, img.height)
    decoded = pixels * pixel_bytes(img.mode)
    out = pixels * (4 if channels == 3 else 1)
    target = "RGB" if channels == 3 else "L"
    phases = {"load": decoded + _decoder_bytes(img, pixels)}
    if _is_output(img, target):
        phases["orient"] = 2 * decoded if rotated else 0
    else:
        if img.mode in _HIGH_DEPTH:  # an "L" first; the decoded image is freed before RGB
            grey = pixels
            phases["convert"] = max(decoded + grey, grey + (out if channels == 3 else 0))
        else:
            phases["convert"] = decoded + out
        phases["orient"] = 2 * out if rotated else 0
    phase = max(phases, key=phases.get)
    return DecodeCost(phases[phase] + FIXED_COST, phase)


def _is_output(img: Image.Image, target: str) -> bool:
    """Whether ``img`` needs no conversion at all (its mode, and nothing transparent)."""
    return img.mode == target and "transparency" not in img.info


def _decoder_bytes(img: Image.Image, pixels: int) -> int:
    if img.format == "TIFF":
        return _tiff_buffer(img)
    return pixels * _DECODER_BYTES.get(img.format or "", 0)


def _tiff_buffer(img: Image.Image) -> int:
    """Bytes of the strip or tile libtiff decodes at once (its stored samples); none for an
    uncompressed TIFF, which Pillow reads row by row itself."""
    tags = getattr(img, "tag_v2", {})
    if tags.get(259, 1) == 1:  # Compression: none
        return 0
    samples = int(tags.get(277, 1) or 1)
    bits = tags.get(258, (8,))
    bits = sum(bits) if isinstance(bits, tuple) else int(bits) * samples
    row_bytes = -(-img.width * bits // 8)
    if 322 in tags and 323 in tags:  # TileWidth, TileLength
        tile = int(tags[322]) * int(tags[323]) * bits // 8
        buffer = max(tile, 0)
    else:  # RowsPerStrip: absent means one strip of the whole image
        rows = min(int(tags.get(278, img.height) or img.height), img.height)
        buffer = rows * row_bytes
    if tags.get(262) == 6:  # YCbCr: libtiff's RGBA interface decodes the whole image
        buffer = max(buffer, img.width * img.height * 4)
    return buffer


def tiles(width: int, height: int, limit: int | None = None) -> Iterator[tuple[int, ...]]:
    """Boxes ``(left, top, right, bottom)`` of at most ``limit`` (default
    :data:`TILE_PIXELS`) pixels covering the image, row by row (whole rows when a row fits)."""
    limit = limit or TILE_PIXELS
    if width <= limit:
        rows = max(1, limit // max(1, width))
        for top in range(0, height, rows):
            yield (0, top, width, min(height, top + rows))
        return
    for top in range(height):
        for left in range(0, width, limit):
            yield (left, top, min(width, left + limit), top + 1)


def convert_decoded(img: Image.Image, channels: int) -> Image.Image:
    """A new ``"RGB"`` (``channels=3``) or ``"L"`` image of a loaded image of any mode;
    ``img`` itself when it already is one. May close ``img`` to free it early.

    Raises:
        ValueError: a mode Pillow cannot convert (``"La"``).
    """
    target = "RGB" if channels == 3 else "L"
    if _is_output(img, target):
        return img
    if img.mode in _HIGH_DEPTH:
        grey = high_depth_to_l(img)
        img.close()  # the decoded image (up to 4 bytes per pixel) is not needed any more
        return grey if channels == 1 else grey.convert("RGB")
    return _tiled(img, target, _tile_converter(img, target))


def _tile_converter(img: Image.Image, target: str):
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return lambda tile: (
            _over_white(tile).convert(target) if target == "L" else _over_white(tile)
        )
    if target == "L" and img.mode != "RGB":
        return lambda tile: tile.convert("RGB").convert("L")  # luma of the RGB result
    return lambda tile: tile.convert(target)


def _over_white(tile: Image.Image) -> Image.Image:
    """``"RGB"`` of a tile with transparency, composited over :data:`WHITE_BACKGROUND`."""
    rgba = tile if tile.mode == "RGBA" else tile.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*WHITE_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _tiled(img: Image.Image, target: str, convert) -> Image.Image:
    if img.width * img.height <= TILE_PIXELS:
        return convert(img)
    out = Image.new(target, img.size)
    for box in tiles(img.width, img.height):
        out.paste(convert(img.crop(box)), box)
    return out


def high_depth_to_l(img: Image.Image) -> Image.Image:
    """An ``"L"`` image from a 16-bit, 32-bit integer or float image, scaled, not clipped:
    integers by bit depth (``v >> 8``) when they fit in 16 bits, else by their maximum (or
    their range, when negative); floats in ``[0, 1]`` by 255, any other range stretched (NaN
    as the minimum, infinities as the ends). Two passes over tiles: the range, then the
    values, so temporaries stay one tile's."""
    out = np.empty((img.height, img.width), dtype=np.uint8)
    boxes = list(tiles(img.width, img.height))
    low, high = _value_range(img, boxes)
    transparent = img.info.get("transparency")
    for left, top, right, bottom in boxes:
        raw = np.asarray(img.crop((left, top, right, bottom)))
        if raw.size == 0:
            continue
        if img.mode == "F":
            scaled = _float_to_uint8(raw, low, high)
        else:
            scaled = _int_to_uint8(raw.astype(np.int64), low, high)
        if isinstance(transparent, int) and img.mode != "F":
            # A 16-bit greyscale PNG marks one grey value as transparent: show it as background.
            scaled = np.where(raw == transparent, np.uint8(WHITE_BACKGROUND[0]), scaled)
        out[top:bottom, left:right] = scaled
    return Image.fromarray(out)


def _value_range(img: Image.Image, boxes) -> tuple[float, float] | tuple[None, None]:
    """The smallest and largest value (finite values only for a float image)."""
    low = high = None
    for box in boxes:
        raw = np.asarray(img.crop(box))
        if img.mode == "F":
            raw = raw[np.isfinite(raw)]
        if raw.size == 0:
            continue
        tile_low, tile_high = raw.min().item(), raw.max().item()
        low = tile_low if low is None else min(low, tile_low)
        high = tile_high if high is None else max(high, tile_high)
    return low, high


def _int_to_uint8(values: np.ndarray, low: int, high: int) -> np.ndarray:
    """8-bit values of integer pixels: by bit depth (``>> 8``) when they fit in 16 bits."""
    if low >= 0 and high <= 0xFFFF:
        # 16-bit data (the file's bit depth is 16 even where mode "I" hides it): keep the
        # top byte, so 65535 -> 255 and 32768 -> 128, whatever the image's own range.
        return (values >> 8).astype(np.uint8)
    if low >= 0:
        return _round(values * 255.0 / high)
    # Negative values: no bit depth to go by, so stretch the range the image uses.
    return _round((values - low) * 255.0 / (high - low))


def _float_to_uint8(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """8-bit values of float pixels: ``[0, 1]`` scaled by 255, any other range stretched."""
    if low is None:  # no finite value in the whole image
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.nan_to_num(values.astype(np.float64), nan=low, posinf=high, neginf=low)
    if low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * 255.0 / (high - low)
    else:  # one constant value outside [0, 1]: nothing to stretch
        scaled = np.clip(values, 0.0, 255.0)
    return _round(scaled)


def _round(values: np.ndarray) -> np.ndarray:
    """``values`` (within ``[0, 255]``) rounded half up to uint8, so 127.5 -> 128."""
    return np.floor(values + 0.5).astype(np.uint8)
