"""scan_images finds every bad file; describe_bad and write_bad_list print them safely."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchgraft.data.scan import (
    BadImage,
    describe_bad,
    printable,
    scan_images,
    write_bad_list,
)
from torchgraft.errors import DataError


def _good(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(99)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def folder(tmp_path) -> tuple[list[Path], list[Path]]:
    """10 good images (JPEG and PNG) and 3 bad ones: (all files, the bad ones sorted)."""
    good = [
        _good(tmp_path / f"good_{i:02d}{'.jpg' if i % 2 else '.png'}", seed=i) for i in range(10)
    ]
    text = tmp_path / "b_text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "a_empty.png"
    empty.write_bytes(b"")
    truncated = _truncated_jpeg(tmp_path / "c_truncated.jpg")
    return [*good, text, empty, truncated], [empty, text, truncated]


@pytest.mark.parametrize("workers", [1, 4])
def test_scan_finds_exactly_the_bad_files_sorted(folder, workers):
    files, bad = folder
    shuffled = files[:]
    random.Random(workers).shuffle(shuffled)
    found = scan_images(shuffled, workers=workers)
    assert found == [
        BadImage(bad[0], "empty file (0 bytes)"),
        BadImage(bad[1], "not an image (cannot identify image file)"),
        BadImage(bad[2], "truncated file"),
    ]


def test_scan_at_full_size_and_in_greyscale(folder):
    files, bad = folder
    assert [b.path for b in scan_images(files, channels=1, draft_size=None)] == bad


def test_scan_of_good_files_and_of_nothing(folder):
    files, bad = folder
    assert scan_images([f for f in files if f not in bad]) == []
    assert scan_images([]) == []


def test_scan_reports_a_path_given_twice_once(folder):
    files, bad = folder
    assert [b.path for b in scan_images(files + files)] == bad


def test_scan_accepts_string_paths(folder):
    files, bad = folder
    assert [b.path for b in scan_images([str(f) for f in files])] == bad


def test_scan_reports_missing_files_and_folders(tmp_path):
    (tmp_path / "dir.png").mkdir()
    found = scan_images([tmp_path / "gone.jpg", tmp_path / "dir.png"])
    assert found == [
        BadImage(tmp_path / "dir.png", "is a directory, not an image file"),
        BadImage(tmp_path / "gone.jpg", "file not found"),
    ]


def test_scan_refuses_bad_arguments(folder):
    files, _ = folder
    with pytest.raises(DataError, match="channels=2"):
        scan_images(files, channels=2)
    with pytest.raises(DataError, match="workers=0"):
        scan_images(files, workers=0)
    with pytest.raises(DataError, match=r"draft_size=\(0, 0\)"):
        scan_images(files, draft_size=(0, 0))


def test_scan_in_threads_finds_every_bomb_and_restores_the_warning_filters(tmp_path, monkeypatch):
    # 40x40 = 1,600 pixels: in the range where Pillow only warns; concurrent loads must
    # each see the warning as an error and leave no filter behind.
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"bomb_{i:02d}.png")
        Image.new("RGB", (40, 40), (i, 0, 0)).save(paths[-1])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    filters_before = list(warnings.filters)
    found = scan_images(paths, workers=4)
    assert [b.path for b in found] == paths
    assert all(b.reason.startswith("image too large: 1600 pixels") for b in found)
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == 1000


# --- printing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain/name.jpg", "plain/name.jpg"),
        ("café/日本語/Ωmega ok.png", "café/日本語/Ωmega ok.png"),
        ("\x1b[2Jgotcha.jpg", "\\x1b[2Jgotcha.jpg"),
        ("a\nb\rc\td\x00e", "a\\nb\\rc\\td\\x00e"),
        ("evil\u202egpj.exe", "evil\\u202egpj.exe"),
        ("bad\udcffbyte.jpg", "bad\\udcffbyte.jpg"),
    ],
)
def test_printable(text, expected):
    assert printable(text) == expected
    assert printable(text).isprintable()


def test_describe_bad_escapes_an_escape_sequence_in_a_file_name(tmp_path):
    evil = tmp_path / "clear\x1b[2Jscreen.jpg"
    evil.write_text("not an image")
    found = scan_images([evil])
    assert found == [BadImage(evil, "not an image (cannot identify image file)")]
    text = describe_bad(found)
    assert "\x1b" not in text
    assert "clear\\x1b[2Jscreen.jpg: not an image (cannot identify image file)" in text
    assert text.startswith("1 unreadable image file:\n  ")


def test_describe_bad_lists_at_most_limit_files():
    bad = [BadImage(Path(f"img_{i:02d}.jpg"), "truncated file") for i in range(13)]
    lines = describe_bad(bad).splitlines()
    assert lines[0] == "13 unreadable image files:"
    assert lines[1] == "  img_00.jpg: truncated file"
    assert len(lines) == 1 + 10 + 1
    assert lines[-1] == "  ... and 3 more"
    assert describe_bad(bad, limit=13).splitlines()[-1] == "  img_12.jpg: truncated file"
    assert describe_bad(bad, limit=0).splitlines() == [lines[0], "  ... and 13 more"]


def test_describe_nothing_bad():
    assert describe_bad([]) == "no unreadable image files"


def test_describe_escapes_reasons_too():
    text = describe_bad([BadImage(Path("a.jpg"), "odd\x1b[31m reason")])
    assert "\x1b" not in text
    assert "odd\\x1b[31m reason" in text


# --- the list file --------------------------------------------------------------------------


def test_write_bad_list(tmp_path):
    bad = [
        BadImage(Path("data/a.jpg"), "truncated file"),
        BadImage(Path("data/tab\there\nnew.jpg"), "empty file (0 bytes)"),
        BadImage(Path("data/\x1b[2J.png"), "not an image (cannot identify image file)"),
    ]
    target = tmp_path / "bad.txt"
    assert write_bad_list(bad, target) == target
    lines = target.read_text(encoding="utf-8").split("\n")
    assert lines == [
        "data/a.jpg\ttruncated file",
        "data/tab\\there\\nnew.jpg\tempty file (0 bytes)",
        "data/\\x1b[2J.png\tnot an image (cannot identify image file)",
        "",
    ]
    assert all(line.count("\t") == 1 for line in lines[:-1])


def test_write_bad_list_replaces_the_old_list_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "bad.txt"
    target.write_text("old\n")
    write_bad_list([], target)
    assert target.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_write_bad_list_into_a_missing_folder_is_a_data_error(tmp_path):
    target = tmp_path / "no" / "such" / "bad.txt"
    with pytest.raises(DataError, match=r"bad\.txt: cannot write the list"):
        write_bad_list([BadImage(Path("a.jpg"), "truncated file")], target)
