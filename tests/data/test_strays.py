"""Stray files of a data folder (torchgraft.data.strays): judged by name, then by content;
set aside from every split and named; images kept, whatever their name; a damaged image
stays a sample for the scan; nothing is opened that could hang."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from torchgraft.data.prepare import prepare_data
from torchgraft.data.scan import scan_images
from torchgraft.data.sources import discover
from torchgraft.data.strays import StrayFiles, holds_image
from torchgraft.errors import DataError
from torchgraft.model.spec import Preprocessing

PRE = Preprocessing(input_size=(3, 8, 8), crop_pct=1.0)
OLE2 = bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504)  # how Thumbs.db begins


def _png(path: Path, size=(10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 40, 200)).save(path, format="PNG")
    return path


def _bomb_png(path: Path, side: int = 30_000) -> Path:
    """A small PNG that declares ``side`` x ``side`` pixels, over Pillow's pixel limit."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = zlib.compress(b"\0" * (1 + 3 * side) * 8)  # a few rows: never decoded
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def _classes(root: Path, per_class: int = 3, classes=("cat", "dog")) -> Path:
    for name in classes:
        for i in range(per_class):
            _png(root / name / f"{i}.png")
    return root


def _used(source) -> list[str]:
    """Every sample of every split, named below the data folder, sorted."""
    names = [
        Path(p).relative_to(s.root).as_posix() for s in source.splits.values() for p in s.paths
    ]
    return sorted(names)


def test_files_that_are_no_images_by_name_and_content_are_set_aside_and_named(tmp_path):
    root = _classes(tmp_path / "photos")
    (root / "dog" / "README.txt").write_text("from the shelter")
    (root / "dog" / "Thumbs.db").write_bytes(OLE2)
    (root / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "cat" / "notes.md").write_text("# cats\n")
    (root / "cat" / "placeholder").write_bytes(b"")  # empty, no suffix
    (root / "Thumbs.db").write_bytes(OLE2)  # beside the class folders
    source = discover(str(root))
    assert _used(source) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert source.strays.not_images == (
        "Thumbs.db",
        "cat/notes.md",
        "cat/placeholder",
        "dog/README.txt",
        "dog/Thumbs.db",
        "dog/desktop.ini",
    )
    assert source.strays.lines() == [
        "skipped 6 files that are not images: Thumbs.db, cat/notes.md, cat/placeholder, "
        "dog/README.txt, dog/Thumbs.db and 1 more"
    ]


def test_an_image_without_an_image_suffix_is_a_sample(tmp_path):
    root = _classes(tmp_path / "photos")
    _png(root / "cat" / "scan-0007")  # saved without an extension
    _png(root / "cat" / "IMG_1.download")
    source = discover(str(root))
    assert {"cat/scan-0007", "cat/IMG_1.download"} <= set(_used(source))
    assert not source.strays
    assert prepare_data(source, PRE).bad == []  # and it decodes


@pytest.mark.parametrize("name", ["photo.png", "photo.JPG", "IMG_0001.HEIC", "raw.dng"])
def test_a_file_named_as_an_image_is_a_sample_whatever_it_holds(tmp_path, name):
    # Somebody's picture that cannot be read is reported (on_bad_image), never skipped unseen.
    root = _classes(tmp_path / "photos")
    broken = root / "dog" / name
    broken.write_text("not a picture")
    source = discover(str(root))
    assert f"dog/{name}" in _used(source)
    assert not source.strays
    with pytest.raises(DataError, match="1 unreadable image file"):
        prepare_data(source, PRE)
    skipped = prepare_data(source, PRE, on_bad_image="skip")
    assert [b.path.name for b in skipped.bad] == [name]
    assert len(_used(skipped.source)) == 6  # counts after skipping


def test_images_beside_the_class_folders_are_named_apart(tmp_path):
    root = _classes(tmp_path / "photos")
    _png(root / "IMG_0001.jpg")
    _png(root / "scan")  # an image by content
    (root / "labels.csv").write_text("path,label\n")
    strays = discover(str(root)).strays
    assert strays == StrayFiles(not_images=("labels.csv",), outside=("IMG_0001.jpg", "scan"))
    assert strays.lines()[1] == (
        "skipped 2 images outside the class folders: IMG_0001.jpg, scan "
        "(only images inside a class folder are used)"
    )


def test_split_folders_name_strays_below_the_data_folder_and_leave_its_top_alone(tmp_path):
    root = tmp_path / "photos"
    _classes(root / "train")
    _classes(root / "val", per_class=1)
    (root / "README.md").write_text("the dataset's own documentation")  # beside train/, val/
    (root / "train" / "Thumbs.db").write_bytes(OLE2)
    (root / "val" / "cat" / "desktop.ini").write_text("[x]\n")
    source = discover(str(root))
    assert source.strays.not_images == ("train/Thumbs.db", "val/cat/desktop.ini")
    assert [len(source.splits[s]) for s in ("train", "val")] == [6, 2]


def test_strays_leave_the_fingerprint_unchanged(tmp_path):
    # A resume is refused when the data changed; a Thumbs.db appearing is no such change.
    root = _classes(tmp_path / "photos")
    before = discover(str(root)).fingerprint()
    (root / "cat" / "Thumbs.db").write_bytes(OLE2)
    assert discover(str(root)).fingerprint() == before


def test_a_class_folder_holding_only_strays_says_so(tmp_path):
    root = _classes(tmp_path / "photos", classes=("cat",))
    (root / "dog").mkdir()
    (root / "dog" / "README.txt").write_text("dogs go here")
    with pytest.raises(DataError) as info:
        discover(str(root))
    message = str(info.value)
    assert "the class folder 'dog' holds no images" in message
    assert "only 1 file(s) that are not images: dog/README.txt" in message


def test_skipping_bad_images_keeps_what_discovery_found(tmp_path):
    root = _classes(tmp_path / "photos", per_class=4)
    (root / "cat" / "bad.png").write_text("no")
    (root / "cat" / "README.txt").write_text("cats")
    source = discover(str(root))
    data = prepare_data(source, PRE, on_bad_image="skip")
    assert data.source.val_held_out is True
    assert data.source.strays.not_images == ("cat/README.txt",)
    assert sum(len(s) for s in source.splits.values()) == 9  # found
    assert sum(len(s) for s in data.source.splits.values()) == 8  # used


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_without_a_suffix_is_never_opened_to_look(tmp_path):
    root = _classes(tmp_path / "photos")
    os.mkfifo(root / "dog" / "pipe")  # opening it for reading would wait for a writer
    source = discover(str(root))
    assert "dog/pipe" in _used(source)  # the scan names it
    bad = scan_images([root / "dog" / "pipe"])
    assert "not a regular file" in bad[0].reason


def test_holds_image_is_false_only_for_what_is_no_image(tmp_path):
    text = tmp_path / "a"
    text.write_text("hello")
    assert not holds_image(text)
    assert holds_image(_png(tmp_path / "b"))
    # A small PNG declaring 30,000 x 30,000 pixels: an image (too large), for the scan to name.
    _bomb_png(tmp_path / "c")
    assert holds_image(tmp_path / "c")
    assert holds_image(tmp_path / "missing")  # cannot look: kept, the scan says why


def test_stray_names_are_escaped_and_counted():
    strays = StrayFiles(not_images=("a\x1b[2J.txt",), outside=())
    assert strays.lines() == ["skipped 1 file that is not an image: a\\x1b[2J.txt"]
    assert not StrayFiles()
    assert StrayFiles(("a",)) + StrayFiles((), ("b.jpg",)) == StrayFiles(("a",), ("b.jpg",))
