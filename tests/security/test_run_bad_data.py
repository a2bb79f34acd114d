"""Bad image data that the data tests do not already cover: a decompression bomb at Pillow's
*default* pixel limit (kept, not disabled), stopped or skipped by a whole run and named by
path; and an image that fails inside a data-loader worker process, named by path.

Covered elsewhere: empty class folder, no class folders, stray files
(tests/data/test_sources.py), a text file named .jpg, truncated JPEG/PNG, empty file
(tests/data/test_images.py::test_bad_file_is_a_data_error_naming_it), stop by default and
skip on request (tests/data/test_prepare.py, tests/engine/test_fit.py,
tests/cli/test_train_cmd.py::test_an_image_folder_with_a_corrupt_file_stops_and_skip_goes_on).
"""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.engine.console import RunConsole
from torchgraft.errors import DataError
from torchgraft.model.spec import Preprocessing

QUIET = RunConsole(quiet=True)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path, side: int = 30_000):
    """A 200-byte PNG that declares ``side`` x ``side`` pixels (900 M: over twice Pillow's
    default limit of 89 M, where it raises) — decoding it would need 2.7 GB."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\0" + b"\0" * 3 * side
    data = zlib.compress(row * 8)  # a few rows: the file never gets to be decoded
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
    path.write_bytes(png + _chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_stops_the_run_and_is_skipped_on_request(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None  # Pillow's default guard is on
    assert limit < 30_000**2 / 2
    data = write_digit_folder(tmp_path / "images")
    bomb = bomb_png(data / "1" / "bomb.png")
    with pytest.raises(DataError, match="image too large") as stopped:
        tg.fit(tiny_config(data, tmp_path / "runs"), console=QUIET)
    assert str(bomb) in str(stopped.value)
    assert "MAX_IMAGE_PIXELS" in str(stopped.value)
    run = tg.fit(
        tiny_config(data, tmp_path / "runs2", data={"on_bad_image": "skip"}), console=QUIET
    )
    assert str(bomb) in (run.dir / "bad_images.txt").read_text()
    assert limit == Image.MAX_IMAGE_PIXELS  # never raised, never disabled


def test_an_image_failing_inside_a_loader_worker_is_named_by_path(tmp_path):
    data = write_digit_folder(tmp_path / "images", per_class=6)
    source = discover(str(data), val_fraction=0.25)
    prepared = prepare_data(
        source, Preprocessing(input_size=(3, 16, 16), crop_pct=1.0), in_memory=False, workers=1
    )
    loader = prepared.loader("train", 4)
    assert loader.workers == 1  # a real worker process reads the files
    # Damaged after the scan (a disk error, a sync still running): only the worker sees it.
    victim = source.splits["train"].paths[3]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(DataError) as failed:
        for _batch in loader:
            pass
    assert str(victim) in str(failed.value)
    assert "truncated" in str(failed.value) or "cannot" in str(failed.value)
