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
* Only a regular file is opened: a FIFO, device, socket or folder under an image's name is
  refused from its ``stat`` without being opened, and the file is opened non-blocking and
  checked again once open (:mod:`torchgraft.checkpoint.regular_files`), so a name swapped for a pipe
  cannot hang a run. Its size is bounded (:class:`~.limits.DataLimits`).
* The memory a decode will take is estimated from the header (:func:`~.modes.decode_cost`)
  and refused over ``max_decode_bytes`` before any pixel is decoded; conversions run tile by
  tile (:mod:`.modes`), so an image costs its decoded size plus its output, not 8-byte
  temporaries per pixel.
* Only the formats of :data:`IMAGE_SUFFIXES` are decoded, whatever the file's name: a file
  Pillow would hand to another plugin (EPS runs Ghostscript) is "not an image".
* Every failure is an :class:`UnreadableImageError` (a :class:`~torchgraft.errors.DataError`)
  whose message starts with the path, says what was found and what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from ..checkpoint.regular_files import FileProblem, open_regular
from ..errors import DataError
from .limits import DataLimits, resolve_data_limits
from .modes import WHITE_BACKGROUND, convert_decoded, decode_cost

__all__ = [
    "IMAGE_FORMATS",
    "IMAGE_SUFFIXES",
    "WHITE_BACKGROUND",
    "UnreadableImageError",
    "bomb_warnings_as_errors",
    "is_image_file",
    "load_image",
    "read_size",
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


#: The Pillow formats decoded: those of IMAGE_SUFFIXES (camera JPEGs that Pillow reads as
#: MPO come through JPEG). Image.open identifies a file by its bytes, so without this list a
#: ".jpg" could reach any plugin Pillow has, EPS (which runs Ghostscript) included.
IMAGE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # width and height swap on display
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
    limits: DataLimits | None = None,
) -> Image.Image:
    """Open, fully decode and convert one image to ``"RGB"`` (``channels=3``) or ``"L"`` (1).

    Args:
        path: the image file.
        channels: 3 for RGB, 1 for greyscale (the luma of the RGB result).
        draft_size: for JPEG files, let the decoder work at a reduced scale (1/2, 1/4, 1/8)
            while the image stays at least this ``(width, height)`` once upright; much faster
            for big photos. Other formats decode at full size.
        limits: the file-size and decode-memory bounds; default: :class:`~.limits.DataLimits`
            with the ``TORCHGRAFT_*`` environment variables applied.

    Returns:
        a new, fully loaded image of mode ``"RGB"`` or ``"L"``, EXIF orientation applied,
        transparency composited over :data:`WHITE_BACKGROUND`.

    Raises:
        UnreadableImageError: the file is missing, unreadable, a folder, a FIFO, device or
            socket, not an image, truncated, corrupt, of an unsupported mode, over Pillow's
            pixel limit, or over a limit of ``limits`` (its size, its decode memory).
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
    limits = resolve_data_limits(limits)
    try:
        with bomb_warnings_as_errors():
            return _decode(Path(path), channels, draft_size, limits)
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises many types on bad files; all are "unreadable"
        raise _unreadable(path, exc) from exc


def read_size(path: str | os.PathLike, *, limits: DataLimits | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file as stored, from its header: no pixel is decoded.

    The file goes through the checks of :func:`load_image` that need no decode (a regular
    file, its size, an image format torchgraft decodes, Pillow's pixel limit); a file that
    passes may still fail to decode (a truncated JPEG), which only :func:`load_image` finds.
    The EXIF orientation is not applied: it swaps the sides, never changes the short one.

    Raises:
        UnreadableImageError: the file fails one of those checks, or has no image header.
    """
    path = Path(path)
    limits = resolve_data_limits(limits)
    try:
        _check_file(path, limits)
        with open_regular(path) as (handle, size):
            _check_file_size(path, size, limits)
            with bomb_warnings_as_errors(), Image.open(handle, formats=IMAGE_FORMATS) as img:
                _check_pixel_limit(path, img.size)
                return img.size
    except FileProblem as problem:
        raise _file_problem(path, problem) from None
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises many types on bad files; all are "unreadable"
        raise _unreadable(path, exc) from exc


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


def _decode(path: Path, channels: int, draft: tuple[int, int] | None, limits: DataLimits):
    """The image at ``path``, fully decoded, converted and upright (see the module docstring)."""
    _check_file(path, limits)
    try:
        with open_regular(path) as (handle, size):
            _check_file_size(path, size, limits)  # again: the name may now be another file
            img = Image.open(handle, formats=IMAGE_FORMATS)
            _check_pixel_limit(path, img.size)
            if draft is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
                img.draft("RGB", _stored_draft_size(img, draft))
            orientation = _orientation(img, loaded=False)
            _check_cost(path, img, channels, orientation, limits)
            img.load()  # the whole decode, so that a truncated file fails now
    except FileProblem as problem:  # the name was swapped after _check_file, or unreadable
        raise _file_problem(path, problem) from None
    if orientation is None:  # known only once loaded (a PNG's eXIf chunk may follow IDAT)
        orientation = _orientation(img, loaded=True)
        _check_cost(path, img, channels, orientation, limits)
    out = _convert(img, channels, path)
    if out is not img:
        img.close()  # free the decoded pixels before a rotation copies the output
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return out.transpose(method) if method is not None else out


def _orientation(img: Image.Image, *, loaded: bool) -> int | None:
    """The EXIF orientation (1: upright), or None while unknown without decoding."""
    if not loaded and img.format == "PNG" and "exif" not in img.info:
        return None  # PngImageFile.getexif would decode the whole image to look further
    return img.getexif().get(_EXIF_ORIENTATION, 1)


def _check_file(path: Path, limits: DataLimits) -> None:
    """Refuse, from ``stat`` alone, a name that is not a regular file or is too long: a
    device is never opened (opening some has effects), a FIFO never waited on."""
    info = os.stat(path)  # OSError: reported by _unreadable (missing, permission, loop)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        raise _file_problem(path, FileProblem(f"not a regular file ({_kind(info.st_mode)})"))
    _check_file_size(path, info.st_size, limits)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def _check_file_size(path: Path, size: int, limits: DataLimits) -> None:
    if size > limits.max_image_file_bytes:
        reason = (
            f"a file of {size:,} bytes, over the limit of {limits.max_image_file_bytes:,} "
            "bytes for one image file"
        )
        advice = (
            f"if you trust it, {limits.how_to_raise('max_image_file_bytes')}; otherwise remove it"
        )
        raise UnreadableImageError(f"{path}: {reason}; {advice}", path=path, reason=reason)


def _check_cost(
    path: Path, img: Image.Image, channels: int, orientation: int | None, limits: DataLimits
) -> None:
    """Refuse an image whose decode would take more than ``max_decode_bytes``."""
    cost = decode_cost(img, channels, rotated=orientation in _ORIENTATION_TRANSPOSE)
    if cost.bytes <= limits.max_decode_bytes:
        return
    limit_mib = limits.max_decode_bytes / (1 << 20)
    reason = (
        f"decoding it needs {cost.describe(img)}, over the limit of {limit_mib:,.0f} MiB "
        "for one image"
    )
    advice = f"if you trust it, {limits.how_to_raise('max_decode_bytes')}; otherwise downscale it"
    raise UnreadableImageError(f"{path}: {reason}; {advice}", path=path, reason=reason)


def _file_problem(path: Path, problem: FileProblem) -> UnreadableImageError:
    """The error for a name that cannot be opened as a regular file."""
    reason = str(problem)
    if reason.startswith("not a regular file"):
        advice = "remove it: a pipe, device or socket holds no image, and reading one can hang"
    elif not os.access(path, os.R_OK):
        reason, advice = "permission denied", "make the file readable by this user (chmod a+r)"
    else:
        advice = "check the file and the disk it is on"
    return UnreadableImageError(f"{path}: {reason}; {advice}", path=path, reason=reason)


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
    # an error only while bomb_warnings_as_errors holds; this check does not depend on the
    # process-wide warning filters, which other threads can change.
    limit = Image.MAX_IMAGE_PIXELS
    pixels = max(1, size[0]) * max(1, size[1])
    if limit is not None and pixels > limit:
        raise _too_large(path, pixels)


def _convert(img: Image.Image, channels: int, path: Path) -> Image.Image:
    """``"RGB"`` or ``"L"`` of a loaded image of any mode (see :mod:`.modes`)."""
    try:
        return convert_decoded(img, channels)
    except ValueError as exc:  # "conversion from La to RGB not supported"
        raise UnreadableImageError(
            f"{path}: unsupported image mode {img.mode!r} ({exc}); re-save the image as 8-bit "
            "RGB or greyscale",
            path=path,
            reason=f"unsupported image mode {img.mode!r}",
        ) from exc


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


#: ``with bomb_warnings_as_errors():`` around any Pillow open or decode (thread-safe).
bomb_warnings_as_errors = _SharedWarningFilter().active
