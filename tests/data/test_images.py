"""load_image: every mode converted right, every bad file a DataError naming the file.

All images are real files written with Pillow into tmp_path; nothing is mocked. The few
modes that no file format produces (HSV, I;16L, I;16N) go through the same converter from
memory.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from torchgraft.data.images import (
    IMAGE_SUFFIXES,
    WHITE_BACKGROUND,
    UnreadableImageError,
    _convert,
    is_image_file,
    load_image,
    to_uint8_tensor,
)
from torchgraft.errors import DataError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _row(mode: str, values: list) -> Image.Image:
    """A 1-pixel-high image of ``mode`` with these pixel values, left to right."""
    img = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    return img


def _pixels(img: Image.Image) -> list:
    return [img.getpixel((x, 0)) for x in range(img.width)]


def _close(a: tuple, b: tuple, tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- suffixes -------------------------------------------------------------------------------


def test_image_suffixes_are_a_lower_case_tuple_of_what_pillow_reads():
    assert isinstance(IMAGE_SUFFIXES, tuple)
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    for suffix in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"):
        assert suffix in IMAGE_SUFFIXES
    for suffix in (".ppm", ".pgm", ".pbm"):
        assert suffix in IMAGE_SUFFIXES


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.jpg", True),
        ("PHOTO.JPG", True),
        ("scan.Tiff", True),
        ("a/b/c.webp", True),
        ("notes.txt", False),
        ("jpg", False),
        (".photo.jpg", False),
        ("._photo.jpg", False),
        ("archive.jpg.zip", False),
    ],
)
def test_is_image_file(name, expected):
    assert is_image_file(Path(name)) is expected


# --- modes ----------------------------------------------------------------------------------


def test_white_background_is_white():
    assert WHITE_BACKGROUND == (255, 255, 255)


def test_rgb_png_is_exact(tmp_path):
    path = _save(_row("RGB", [RED, (1, 2, 3), BLUE]), tmp_path / "rgb.png")
    img = load_image(path)
    assert img.mode == "RGB"
    assert _pixels(img) == [RED, (1, 2, 3), BLUE]


def test_bilevel_png(tmp_path):
    path = _save(_row("1", [0, 1]), tmp_path / "bilevel.png")
    assert Image.open(path).mode == "1"
    assert _pixels(load_image(path)) == [(0, 0, 0), WHITE]


def test_greyscale_png(tmp_path):
    path = _save(_row("L", [0, 77, 255]), tmp_path / "grey.png")
    assert _pixels(load_image(path)) == [(0, 0, 0), (77, 77, 77), WHITE]


def test_palette_png_without_transparency(tmp_path):
    img = _row("P", [0, 1])
    img.putpalette([*RED, *BLUE])
    path = _save(img, tmp_path / "palette.png")
    assert Image.open(path).mode == "P"
    assert _pixels(load_image(path)) == [RED, BLUE]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparent_entry_becomes_white(tmp_path, suffix):
    img = _row("P", [0, 1])
    img.putpalette([*RED, *BLUE])
    path = _save(img, tmp_path / f"palette{suffix}", transparency=0)
    with Image.open(path) as opened:
        assert opened.mode == "P"
        assert "transparency" in opened.info
    # Simply dropping the transparency would give red here.
    assert _pixels(load_image(path)) == [WHITE, BLUE]


def test_palette_with_alpha_tiff(tmp_path):
    img = _row("PA", [(0, 0), (0, 255)])
    img.putpalette([*RED])
    path = _save(img, tmp_path / "pa.tif")
    assert Image.open(path).mode == "PA"
    assert _pixels(load_image(path)) == [WHITE, RED]


def test_rgba_is_composited_over_white(tmp_path):
    pixels = [(255, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 0, 0)]
    path = _save(_row("RGBA", pixels), tmp_path / "rgba.png")
    transparent, opaque, half, black_transparent = _pixels(load_image(path))
    assert transparent == WHITE
    assert opaque == RED
    assert half[0] == 255
    assert _close(half, (255, 127, 127), 1)  # 128/255 of red over white
    assert black_transparent == WHITE  # dropping alpha would give black


def test_grey_with_alpha_is_composited_over_white(tmp_path):
    path = _save(_row("LA", [(0, 0), (0, 255), (0, 128)]), tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    transparent, opaque, half = _pixels(load_image(path))
    assert transparent == WHITE
    assert opaque == (0, 0, 0)
    assert _close(half, (127, 127, 127), 1)


@pytest.mark.parametrize(
    ("mode", "values", "transparent"),
    [("L", [10, 200], 10), ("RGB", [(1, 2, 3), (4, 5, 6)], (1, 2, 3))],
)
def test_transparency_key_colour_becomes_white(tmp_path, mode, values, transparent):
    path = _save(_row(mode, values), tmp_path / "key.png", transparency=transparent)
    opaque = values[1] if mode == "RGB" else (values[1],) * 3
    assert _pixels(load_image(path)) == [WHITE, opaque]


def test_cmyk_tiff(tmp_path):
    cmyk = [(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)]
    path = _save(_row("CMYK", cmyk), tmp_path / "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    assert _pixels(load_image(path)) == [WHITE, RED, (0, 0, 0)]


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    assert Image.open(path).mode == "CMYK"
    assert _close(load_image(path).getpixel((8, 8)), RED, 8)


def test_ycbcr_tiff(tmp_path):
    path = _save(_row("YCbCr", [(76, 85, 255), (255, 128, 128)]), tmp_path / "ycbcr.tif")
    assert Image.open(path).mode == "YCbCr"
    red, white = _pixels(load_image(path))
    assert _close(red, RED, 3)
    assert _close(white, WHITE, 1)


def test_lab_tiff(tmp_path):
    path = _save(_row("LAB", [(255, 128, 128), (0, 128, 128)]), tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    white, black = _pixels(load_image(path))
    assert _close(white, WHITE, 3)  # L=100, a=b=0; a byte copy would give (255, 128, 128)
    assert _close(black, (0, 0, 0), 3)


def test_hsv_from_memory():
    # No file format stores HSV; the converter load_image uses still handles it.
    img = _row("HSV", [(0, 255, 255), (0, 0, 255)])
    assert _pixels(_convert(img, 3, Path("memory"))) == [RED, WHITE]


SIXTEEN_BIT = [0, 255, 256, 32768, 65535]
SIXTEEN_BIT_AS_8 = [0, 0, 1, 128, 255]


def test_sixteen_bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path):
    path = _save(Image.fromarray(np.array([SIXTEEN_BIT], dtype=np.uint16)), tmp_path / "16.png")
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        # The bug this avoids: Pillow's own conversion clips, so half intensity is white.
        assert opened.convert("L").getpixel((3, 0)) == 255
    img = load_image(path)
    assert [p[0] for p in _pixels(img)] == SIXTEEN_BIT_AS_8
    assert load_image(path, channels=1).getpixel((3, 0)) == 128


def test_sixteen_bit_big_endian_tiff(tmp_path):
    raw = np.array([SIXTEEN_BIT], dtype=">u2").tobytes()
    img = Image.frombytes("I;16B", (len(SIXTEEN_BIT), 1), raw)
    path = _save(img, tmp_path / "16b.tif")
    assert Image.open(path).mode == "I;16B"
    assert [p[0] for p in _pixels(load_image(path))] == SIXTEEN_BIT_AS_8


@pytest.mark.parametrize(("mode", "dtype"), [("I;16L", "<u2"), ("I;16N", "=u2")])
def test_sixteen_bit_modes_from_memory(mode, dtype):
    # Pillow opens files of either byte order as I;16 or I;16B; these two exist in memory.
    raw = np.array([SIXTEEN_BIT], dtype=dtype).tobytes()
    img = Image.frombytes(mode, (len(SIXTEEN_BIT), 1), raw)
    assert img.mode == mode
    assert [p[0] for p in _pixels(_convert(img, 3, Path("memory")))] == SIXTEEN_BIT_AS_8


def test_sixteen_bit_transparent_value_becomes_white(tmp_path):
    img = Image.fromarray(np.array([[0, 32768]], dtype=np.uint16))
    path = _save(img, tmp_path / "16t.png", transparency=0)
    assert _pixels(load_image(path)) == [WHITE, (128, 128, 128)]


def test_sixteen_bit_pgm(tmp_path):
    path = _save(Image.fromarray(np.array([SIXTEEN_BIT], dtype=np.uint16)), tmp_path / "16.pgm")
    assert Image.open(path).mode in ("I", "I;16")
    assert [p[0] for p in _pixels(load_image(path))] == SIXTEEN_BIT_AS_8


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (SIXTEEN_BIT, SIXTEEN_BIT_AS_8),  # fits in 16 bits: a 16-bit image
        ([0, 500_000, 1_000_000], [0, 128, 255]),  # wider: scaled by its maximum
        ([-100, 0, 100], [0, 128, 255]),  # negative: its range is stretched
    ],
)
def test_thirty_two_bit_integer_tiff(tmp_path, values, expected):
    path = _save(Image.fromarray(np.array([values], dtype=np.int32)), tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    assert [p[0] for p in _pixels(load_image(path))] == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # in [0, 1]: scaled by 255
        ([0.0, 0.25, 0.5], [0, 64, 128]),  # not stretched to the image's own maximum
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # any other range: min-max
        ([0.0, 1000.0, 2000.0], [0, 128, 255]),
        ([float("nan"), 0.0, 1.0], [0, 0, 255]),  # NaN counts as the minimum
    ],
)
def test_float_tiff(tmp_path, values, expected):
    path = _save(Image.fromarray(np.array([values], dtype=np.float32)), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    assert [p[0] for p in _pixels(load_image(path))] == expected


def test_mode_without_an_rgb_conversion_is_a_data_error():
    img = Image.new("La", (2, 1))
    with pytest.raises(UnreadableImageError, match=r"memory\.png: unsupported image mode 'La'"):
        _convert(img, 3, Path("memory.png"))


# --- channels, orientation, draft -----------------------------------------------------------


def test_one_channel_gives_luma(tmp_path):
    path = _save(_row("RGB", [RED, WHITE]), tmp_path / "rgb.png")
    img = load_image(path, channels=1)
    assert img.mode == "L"
    assert _pixels(img) == [Image.new("RGB", (1, 1), RED).convert("L").getpixel((0, 0)), 255]


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_other_channel_counts_are_refused(tmp_path, channels):
    path = _save(_row("RGB", [RED]), tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"1 \(greyscale\) or 3 \(RGB\)") as info:
        load_image(path, channels=channels)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("draft_size", [(0, 64), (64,), (64.0, 64.0), (-1, 5)])
def test_bad_draft_size_is_refused_not_blamed_on_the_file(tmp_path, draft_size):
    path = _save(_row("RGB", [RED]), tmp_path / "rgb.jpg")
    with pytest.raises(DataError, match=r"draft_size=.* two positive integers") as info:
        load_image(path, draft_size=draft_size)
    assert not isinstance(info.value, UnreadableImageError)


def _sideways_jpeg(path: Path, orientation: int) -> Path:
    """A 40x20 JPEG, left half red, right half blue, with an EXIF orientation."""
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(img, path, exif=exif, quality=95)


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom):
    path = _sideways_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    assert Image.open(path).getexif()[0x0112] == orientation
    img = load_image(path)
    assert img.size == (20, 40)
    assert _close(img.getpixel((10, 5)), top, 12)
    assert _close(img.getpixel((10, 35)), bottom, 12)


def test_draft_decodes_a_big_jpeg_smaller_but_not_below_the_draft_size(tmp_path):
    path = _save(_noise_image(2000, 1500), tmp_path / "big.jpg", quality=80)
    full = load_image(path)
    small = load_image(path, draft_size=(64, 64))
    assert full.size == (2000, 1500)
    assert small.mode == "RGB"
    assert small.width < 2000
    assert small.height < 1500
    assert small.width >= 64
    assert small.height >= 64


def test_draft_size_holds_for_a_photo_stored_sideways(tmp_path):
    img = Image.new("RGB", (1600, 400), RED)  # stored landscape, shown portrait (400x1600)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(img, tmp_path / "sideways.jpg", exif=exif)
    drafted = load_image(path, draft_size=(200, 50))
    assert drafted.width >= 200
    assert drafted.height >= 50
    assert drafted.width < 400  # decoded at half scale: the draft did happen


def test_draft_is_ignored_for_other_formats(tmp_path):
    path = _save(_noise_image(300, 200), tmp_path / "big.png")
    assert load_image(path, draft_size=(16, 16)).size == (300, 200)


# --- the result -----------------------------------------------------------------------------


def test_result_is_fully_loaded_and_independent_of_the_file(tmp_path):
    path = _save(_row("RGB", [RED, BLUE]), tmp_path / "rgb.png")
    img = load_image(path)
    path.write_bytes(b"overwritten")
    os.remove(path)
    assert _pixels(img) == [RED, BLUE]


def test_to_uint8_tensor_rgb():
    img = _row("RGB", [RED, (1, 2, 3)])
    tensor = to_uint8_tensor(img)
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (3, 1, 2)
    assert tensor.is_contiguous()
    assert tensor[:, 0, 0].tolist() == list(RED)
    assert tensor[:, 0, 1].tolist() == [1, 2, 3]
    tensor[0, 0, 0] = 7  # owns writable memory; the image is untouched
    assert img.getpixel((0, 0)) == RED


def test_to_uint8_tensor_greyscale():
    tensor = to_uint8_tensor(_row("L", [5, 250]))
    assert tensor.shape == (1, 1, 2)
    assert tensor.is_contiguous()
    assert tensor.flatten().tolist() == [5, 250]


def test_to_uint8_tensor_refuses_other_modes():
    with pytest.raises(DataError, match="'RGBA'"):
        to_uint8_tensor(Image.new("RGBA", (2, 2)))


# --- bad files ------------------------------------------------------------------------------


def _truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "text named .jpg":
        path = tmp_path / "x.jpg"
        path.write_text("this is not an image\n")
    elif kind == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "truncated jpeg":
        good = _save(_noise_image(300, 200), tmp_path / "good.jpg", quality=90)
        path = _truncated(good, tmp_path / "cut.jpg")
    elif kind == "truncated png":
        good = _save(_noise_image(300, 200), tmp_path / "good.png")
        path = _truncated(good, tmp_path / "cut.png")
    elif kind == "directory":
        path = tmp_path / "folder.jpg"
        path.mkdir()
    else:
        path = tmp_path / "missing.png"
    return path


BAD_FILES = {
    "text named .jpg": "not an image (cannot identify image file)",
    "empty": "empty file (0 bytes)",
    "truncated jpeg": "truncated file",
    "truncated png": "truncated file",
    "directory": "is a directory, not an image file",
    "missing": "file not found",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("draft_size", [None, (32, 32)])
def test_bad_file_is_a_data_error_naming_it(tmp_path, kind, draft_size):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(DataError) as info:
        load_image(path, draft_size=draft_size)
    error = info.value
    assert isinstance(error, UnreadableImageError)
    assert str(error).startswith(f"{path}: {BAD_FILES[kind]}; ")
    assert error.reason == BAD_FILES[kind]
    assert error.path == path
    assert error.exit_code == 2


def test_path_may_be_a_string(tmp_path):
    path = _bad_file(tmp_path, "missing")
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        load_image(str(path))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions(tmp_path):
    path = _save(_row("RGB", [RED]), tmp_path / "locked.png")
    path.chmod(0)
    try:
        with pytest.raises(DataError, match=r"locked\.png: permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_error_survives_pickling_and_dataloader_style_reraise(tmp_path):
    path = _bad_file(tmp_path, "truncated png")
    with pytest.raises(UnreadableImageError) as info:
        load_image(path)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), str(copy), copy.reason, copy.path) == (
        UnreadableImageError,
        str(info.value),
        "truncated file",
        path,
    )
    # torch's DataLoader re-raises a worker's error as type(error)(message).
    assert isinstance(type(info.value)("worker message"), DataError)


# --- the decompression-bomb limit -----------------------------------------------------------


@pytest.mark.parametrize(
    "side",
    [
        40,  # 1,600 pixels: between the limit and twice it, where Pillow only warns
        100,  # 10,000 pixels: over twice the limit, where Pillow raises
    ],
)
def test_image_over_the_pixel_limit_is_a_data_error(tmp_path, monkeypatch, side):
    path = _save(Image.new("RGB", (side, side), RED), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as info:
            load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: image too large: {side * side} pixels")
    assert "1000 pixels" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 1000  # load_image never changes the limit
    assert warnings.filters == filters_before  # nor leaves a warning filter behind


def test_image_under_the_pixel_limit_loads(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (30, 30), RED), tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(path).size == (30, 30)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_default_pixel_limit_is_untouched(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    load_image(_save(_row("RGB", [RED]), tmp_path / "rgb.png"))
    assert before is not None
    assert before == Image.MAX_IMAGE_PIXELS


# --- fuzzing --------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    _noise_image(24, 16, seed=1).save(buffer, fmt)
    return buffer.getvalue()


GOOD_PNG = _encoded("PNG")
GOOD_JPEG = _encoded("JPEG")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _load_or_data_error(path: Path) -> None:
    """Either an RGB image or a DataError naming ``path``; any other exception fails."""
    message = None
    try:
        img = load_image(path)
    except DataError as error:
        message = str(error)
    if message is None:
        assert img.mode == "RGB"
    else:
        assert message.startswith(f"{path}: ")


@FUZZ
@given(data=st.binary(max_size=512) | st.binary(max_size=512).map(GOOD_PNG[:16].__add__))
def test_random_bytes_named_png_give_only_data_errors(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    _load_or_data_error(path)


@FUZZ
@given(
    source=st.sampled_from([GOOD_PNG, GOOD_JPEG]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(1, 10_000),
)
def test_damaged_real_images_give_only_data_errors(tmp_path, source, edits, cut):
    data = bytearray(source)
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data[: max(cut, len(data) // 4)]))
    _load_or_data_error(path)
