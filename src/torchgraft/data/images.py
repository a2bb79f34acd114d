"""Decode one image file into an upright ``"RGB"`` or ``"L"`` image, correctly, or fail clearly.

The contract of :func:`load_image`:

* The result is a new, fully decoded image of mode ``"RGB"`` (``channels=3``) or ``"L"``
  (``channels=1``) with its EXIF orientation applied; the file is closed on return.
* Transparent pixels are composited over :data:`WHITE_BACKGROUND`. Dropping the alpha channel
  instead would expose whatever colour the encoder left under fully transparent pixels
  (often black, sometimes garbage), which the model would then learn from.
* 16-bit and 32-bit images are scaled to 8 bits by their bit depth (``v >> 8``), never clipped
  the way Pillow's own ``convert("L")`` does (it maps every value above 255 to white).
* Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is kept and enforced,
  warning range included; ``LOAD_TRUNCATED_IMAGES`` is never set, so a truncated file fails
  here, while loading, and not in the middle of training.
* Every failure is an :class:`UnreadableImageError` (a :class:`~torchgraft.errors.DataError`)
  whose message starts with the path, says what was found and what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin

from ..errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "WHITE_BACKGROUND",
    "UnreadableImageError",
    "is_image_file",
    "load_image",
    "to_uint8_tensor",
]

#: Lower-case file suffixes treated as images (formats Pillow reads).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

#: The colour transparent pixels are composited over (RGB). White, like a browser page or a
#: product photo's studio backdrop; it is the convention of most image datasets.
WHITE_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # width and height swap on display
_SIZE_ADVICE = (
    "if you trust this file, raise the limit knowingly (PIL.Image.MAX_IMAGE_PIXELS = N, "
    "or None to disable it) before loading; otherwise downscale or remove the file"
)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded.

    Attributes:
        path: the file at fault (``None`` when unknown).
        reason: one line saying what was found, without the path or advice
            (``"truncated file"``); what :func:`~torchgraft.data.scan.scan_images` reports.
    """

    # The message is the only positional argument so the error survives pickling and
    # torch's DataLoader, which re-raises worker errors as ``type(exc)(message)``.
    def __init__(self, message: str, *, path: Path | None = None, reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason or message


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image file, judged by its suffix (case-insensitive).

    Hidden files (name starting with ``.``, such as macOS ``._photo.jpg`` resource forks)
    are not images.

    Args:
        path: a file path; only its name is looked at, the file is not opened.

    Returns:
        ``True`` for ``photo.JPG``, ``False`` for ``notes.txt`` and ``.photo.jpg``.
    """
    name = PurePath(path).name
    return not name.startswith(".") and PurePath(name).suffix.lower() in IMAGE_SUFFIXES


def load_image(
    path: str | os.PathLike,
    channels: int = 3,
    *,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open, fully decode and convert one image to ``"RGB"`` (``channels=3``) or ``"L"`` (1).

    Args:
        path: the image file.
        channels: 3 for RGB, 1 for greyscale (the luma of the RGB result).
        draft_size: for JPEG files, let the decoder work at a reduced scale (1/2, 1/4, 1/8)
            while the image stays at least this ``(width, height)`` once upright; much faster
            for big photos. Other formats decode at full size.

    Returns:
        a new, fully loaded image of mode ``"RGB"`` or ``"L"``, EXIF orientation applied,
        transparency composited over :data:`WHITE_BACKGROUND`.

    Raises:
        UnreadableImageError: the file is missing, unreadable, a folder, not an image,
            truncated, corrupt, of an unsupported mode, or over Pillow's pixel limit.
        DataError: ``channels`` is neither 1 nor 3, or ``draft_size`` is not two positive
            integers (mistakes of the call, not of the file).
    """
    if channels not in (1, 3):
        raise DataError(
            f"{path}: channels={channels!r} cannot be read from an image file; image files "
            "give 1 (greyscale) or 3 (RGB) channels; use channels=1 or channels=3"
        )
    if draft_size is not None and not (
        len(draft_size) == 2 and all(isinstance(n, int) and n > 0 for n in draft_size)
    ):
        raise DataError(
            f"{path}: draft_size={draft_size!r} is not a size; give (width, height) as two "
            "positive integers, or None to decode at full size"
        )
    try:
        with _bomb_warnings_as_errors():
            rgb = _decode_rgb(Path(path), draft_size)
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises many types on bad files; all are "unreadable"
        raise _unreadable(path, exc) from exc
    return rgb if channels == 3 else rgb.convert("L")


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """A ``(C, H, W)`` uint8 tensor of an ``"RGB"`` or ``"L"`` image, values unchanged.

    Args:
        image: an image from :func:`load_image`.

    Returns:
        a contiguous tensor with 3 or 1 channels that owns its memory.

    Raises:
        DataError: the image is not of mode ``"RGB"`` or ``"L"``.
    """
    if image.mode not in ("RGB", "L"):
        raise DataError(
            f"to_uint8_tensor expects an 'RGB' or 'L' image, got mode {image.mode!r}; "
            "load it with load_image, which converts every mode"
        )
    array = np.asarray(image)
    # Pillow's arrays are read-only views; the copy makes a writable, contiguous CHW array.
    chw = array[np.newaxis] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(chw.copy())


def _decode_rgb(path: Path, draft_size: tuple[int, int] | None) -> Image.Image:
    """The image at ``path``, fully decoded, upright and converted to ``"RGB"``."""
    with Image.open(path) as img:
        _check_pixel_limit(path, img.size)
        if draft_size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            img.draft("RGB", _stored_draft_size(img, draft_size))
        img.load()  # the whole decode, so that a truncated file fails now
        upright = ImageOps.exif_transpose(img)
    return _to_rgb(upright, path)


def _stored_draft_size(img: Image.Image, draft_size: tuple[int, int]) -> tuple[int, int]:
    """``draft_size`` in the file's stored orientation (before the EXIF rotation)."""
    # draft() scales the stored pixels; for a photo stored sideways (orientation 5-8), the
    # upright result is only guaranteed to cover draft_size if width and height swap here.
    width, height = draft_size
    if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _check_pixel_limit(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image over ``PIL.Image.MAX_IMAGE_PIXELS``, like Pillow's own check."""
    # Pillow checks in Image.open, but only warns up to twice the limit, and the warning is
    # an error only while _bomb_warnings_as_errors holds; this check does not depend on the
    # process-wide warning filters, which other threads can change.
    limit = Image.MAX_IMAGE_PIXELS
    pixels = max(1, size[0]) * max(1, size[1])
    if limit is not None and pixels > limit:
        raise _too_large(path, pixels)


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """A new ``"RGB"`` image from a loaded image of any mode Pillow decodes."""
    mode = img.mode
    try:
        if mode in ("I", "F") or mode.startswith("I;16"):
            return _high_depth_to_l(img).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*WHITE_BACKGROUND, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        # "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": Pillow's conversions are right.
        return img.convert("RGB")
    except ValueError as exc:  # "conversion from La to RGB not supported"
        raise UnreadableImageError(
            f"{path}: unsupported image mode {mode!r} ({exc}); re-save the image as 8-bit "
            "RGB or greyscale",
            path=path,
            reason=f"unsupported image mode {mode!r}",
        ) from exc


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """An ``"L"`` image from a 16-bit, 32-bit integer or float image, scaled, not clipped."""
    raw = np.asarray(img)
    scaled = _float_to_uint8(raw) if img.mode == "F" else _int_to_uint8(raw.astype(np.int64))
    transparent = img.info.get("transparency")
    if isinstance(transparent, int) and img.mode != "F":
        # A 16-bit greyscale PNG marks one grey value as transparent: show it as background.
        scaled = np.where(raw == transparent, np.uint8(WHITE_BACKGROUND[0]), scaled)
    return Image.fromarray(np.ascontiguousarray(scaled, dtype=np.uint8))


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    """8-bit values of integer pixels: by bit depth (``>> 8``) when they fit in 16 bits."""
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 0xFFFF:
        # 16-bit data (the file's bit depth is 16 even where mode "I" hides it): keep the
        # top byte, so 65535 -> 255 and 32768 -> 128, whatever the image's own range.
        return (values >> 8).astype(np.uint8)
    if low >= 0:
        return _round(values * 255.0 / high)
    # Negative values: no bit depth to go by, so stretch the range the image uses.
    return _round((values - low) * 255.0 / (high - low))


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """8-bit values of float pixels: ``[0, 1]`` scaled by 255, any other range stretched."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
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


def _too_large(path: str | os.PathLike, pixels: int | None) -> UnreadableImageError:
    """The error for an image over Pillow's decompression-bomb limit."""
    limit = Image.MAX_IMAGE_PIXELS
    size = f"{pixels} pixels" if pixels is not None else "its size"
    reason = (
        f"image too large: {size} is over Pillow's safety limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs)"
    )
    return UnreadableImageError(f"{path}: {reason}; {_SIZE_ADVICE}", path=Path(path), reason=reason)


def _unreadable(path: str | os.PathLike, exc: BaseException) -> UnreadableImageError:
    """The error for ``exc``, raised while opening or decoding ``path``."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return _too_large(path, int(found.group(1)) if found else None)
    reason, advice = _reason_and_advice(path, exc)
    return UnreadableImageError(f"{path}: {reason}; {advice}", path=Path(path), reason=reason)


def _reason_and_advice(path: str | os.PathLike, exc: BaseException) -> tuple[str, str]:
    """What was found (one line) and what to do about it, for a failure to read ``path``."""
    detail = " ".join(str(exc).split())[:200]  # one line, bounded: it ends up in reports
    if isinstance(exc, IsADirectoryError) or (
        isinstance(exc, PermissionError) and os.path.isdir(path)  # Windows says this
    ):
        return "is a directory, not an image file", "pass the image files inside it"
    if isinstance(exc, FileNotFoundError):
        return "file not found", "check the path (the file may have been moved or deleted)"
    if isinstance(exc, PermissionError):
        return "permission denied", "make the file readable by this user (chmod a+r)"
    if isinstance(exc, Image.UnidentifiedImageError):
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                return "empty file (0 bytes)", "re-download or re-export it, or remove it"
        return (
            "not an image (cannot identify image file)",
            "remove it, or convert it to a format Pillow reads (JPEG, PNG, ...)",
        )
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it", "free memory or downscale the image"
    if isinstance(exc, OSError) and "truncated" in detail:
        return "truncated file", "re-download or re-export it (it is incomplete), or remove it"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot read the file ({detail})", "check the disk or network share it is on"
    return (
        f"corrupt image data ({type(exc).__name__}: {detail})",
        "re-download or re-export the file, or remove it",
    )


class _SharedWarningFilter:
    """Turn Pillow's ``DecompressionBombWarning`` into an error while any load runs.

    ``warnings.catch_warnings`` saves and restores the process-wide filter list, so two
    threads that each enter and leave their own block (as :func:`scan_images` does) can
    restore each other's state: one decode runs without the filter, and the filter can stay
    behind for good. Concurrent loads therefore share one block: the first load to start
    enters it, the last one to finish leaves it, and the filters are exactly as before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._block: warnings.catch_warnings | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                block = warnings.catch_warnings()
                block.__enter__()
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self._block = block
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._block is not None:
                    self._block.__exit__(None, None, None)
                    self._block = None


_bomb_warnings_as_errors = _SharedWarningFilter().active
