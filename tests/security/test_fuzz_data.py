"""Fuzzing training data: whatever a folder of images or a CSV holds, listing it
(``discover``), preparing it (``prepare_data``, stopping or skipping bad files, in memory or
streamed), taking a batch of it, and reading one of its files (``load_image``) give a result or
a ``DataError`` — never another exception, a crash, a hang or unbounded memory.

Each case is a layout written into a fresh folder:

- class folders, or ``train/``/``val/``/``test/`` folders of classes, or a CSV with its
  images beside it;
- images made by Pillow in every format it reads for training (PNG, JPEG, GIF, TIFF, BMP,
  WebP) and many modes (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``I;16``, ``I``, ``F``,
  ``CMYK``, ``LA``), 0 to 4,000 px a side (large ones of one colour, so memory stays bounded),
  some with several frames or an EXIF orientation (valid or not), then damaged: bytes
  flipped, inserted, deleted or cut, or the size in the header rewritten (0 px, 65,535 px);
- text files named ``.jpg``, empty files, random bytes, FIFOs, folders named like images,
  sparse files over the size limit, links to an image, to a folder inside or outside the
  data, to their own folder (a loop), to ``/``, to ``/dev/zero`` and to nothing;
- names in unicode, with newlines, quotes or commas, 255 bytes long, hidden;
- CSV files with headers that miss or repeat columns, rows naming relative, absolute,
  ``..``, missing, special or empty paths, labels and splits of every kind, quotes and NUL
  bytes, a BOM or UTF-16, and rows repeated up to 200,000 times in a small file;
- settings: 1 or 3 channels, ``on_bad_image`` stop or skip, in memory or streamed, decode
  threads, and a small ``memory_limit_mb`` now and then (``in_memory=True`` only up to
  :data:`FORCED_PIXELS`: past it, memory is what the caller asked for, not a finding).

A case may grow its process's peak memory by at most :data:`PEAK_MB`: the default data
budget (``memory_limit_mb``, 1 GiB), which in-memory pixels and the index may fill, plus
256 MiB for everything else.

Each case runs in a forked child (reader_forge.sandboxed_cases: memory limit, per-case alarm,
a kill for a hang), so a crash or a hang is a finding that names the case.
``bench/fuzz.py --data N`` runs the same cases by the thousand with a fresh seed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import reader_forge as forge
from hypothesis import strategies as st
from PIL import Image
from test_fuzz_reader import collect

from torchgraft.data.images import load_image
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.errors import DataError
from torchgraft.model.spec import Preprocessing

# ---- images ------------------------------------------------------------------------------------

FORMATS = ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"]
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp",
            "WEBP": ".webp"}  # fmt: skip
MODES = ["1", "L", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "LA"]
#: Pixels above which an image is drawn in one colour (bounded memory and time to make it).
NOISE_PIXELS = 256 * 256

_byte_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
)
_side = st.one_of(st.integers(1, 48), st.integers(1, 48), st.integers(0, 4000))
IMAGES = st.builds(
    lambda fmt, mode, size, noise, frames, orientation, ops, header: (
        "image",
        fmt,
        mode,
        size,
        noise,
        frames,
        orientation,
        ops,
        header,
    ),
    st.sampled_from(FORMATS),
    st.sampled_from(MODES),
    st.tuples(_side, _side),
    st.booleans(),
    st.sampled_from([1, 1, 1, 2, 3]),
    st.sampled_from([None, None, None, 1, 3, 6, 8, 0, 9, 65535]),
    st.lists(_byte_ops, max_size=3) | st.just([]),
    st.none() | st.none() | st.tuples(st.sampled_from([0, 1, 65535]), st.integers(0, 65535)),
)


def make_image(fmt, mode, size, noise, frames, orientation, ops, header) -> bytes:
    """The bytes of one image file as the case describes it (see the module docstring)."""
    width, height = size
    made_size = (max(1, width), max(1, height))
    if width * height == 0:  # Pillow cannot write an empty image: write 1 px, then say 0
        header = header or (width, height)
    frames_made = [_picture(mode, made_size, noise, seed) for seed in range(frames)]
    data = _encode(frames_made, fmt, orientation)
    if header is not None:
        data = _declare_size(data, fmt, *header)
    return forge.damaged(data, ops)


def _picture(mode: str, size, noise: bool, seed: int) -> Image.Image:
    if noise and size[0] * size[1] <= NOISE_PIXELS:
        rng = np.random.default_rng(seed)
        values = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        with contextlib.suppress(ValueError):  # a conversion Pillow does not have
            return Image.fromarray(values, "RGBA").convert(mode)
    return Image.new(mode, size, _colour(mode, seed))


def _colour(mode: str, seed: int):
    bands = len(Image.getmodebands(mode)) if mode not in ("I;16",) else 1
    value = (seed * 97 + 40) % 256
    return value if bands == 1 else (value,) * bands


def _encode(frames: list[Image.Image], fmt: str, orientation) -> bytes:
    options: dict = {}
    if len(frames) > 1 and fmt in ("GIF", "TIFF", "WEBP", "PNG"):
        options.update(save_all=True, append_images=frames[1:])
    if orientation is not None and fmt in ("JPEG", "TIFF", "WEBP", "PNG"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    for convert in (None, "RGBA", "RGB"):  # the mode asked for, else one the format can hold
        buffer = io.BytesIO()
        try:
            image = frames[0] if convert is None else frames[0].convert(convert)
            image.save(buffer, format=fmt, **options)
            return buffer.getvalue()
        except (OSError, ValueError, KeyError, TypeError):
            options.pop("append_images", None), options.pop("save_all", None)
    buffer = io.BytesIO()
    frames[0].convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _declare_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """``data`` with the size its header declares rewritten (where the format has one place)."""
    raw = bytearray(data)
    if data.startswith(b"\x89PNG") and len(raw) >= 33:
        raw[16:24] = struct.pack(">II", width, height)
        raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    elif data.startswith(b"BM") and len(raw) >= 26:
        raw[18:26] = struct.pack("<ii", width, height)
    elif data.startswith(b"GIF") and len(raw) >= 10:
        raw[6:10] = struct.pack("<HH", width % 65536, height % 65536)
    elif data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0 and len(raw) >= at + 9:
                raw[at + 5 : at + 9] = struct.pack(">HH", height % 65536, width % 65536)
                break
    return bytes(raw)


# ---- entries and layouts -----------------------------------------------------------------------

LINKS = ["image", "folder-inside", "folder-outside", "loop", "root", "dev-zero", "missing",
         "self"]  # fmt: skip
CONTENTS = st.one_of(
    IMAGES,
    IMAGES,
    IMAGES,
    st.tuples(st.just("text"), st.sampled_from(["not an image", "GIF89a", "\x89PNG\r\n", ""])),
    st.tuples(st.just("bytes"), st.binary(max_size=256)),
    st.tuples(st.just("fifo")),
    st.tuples(st.just("folder")),
    st.tuples(st.just("sparse")),
    st.tuples(st.just("link"), st.sampled_from(LINKS)),
)
_odd_names = st.sampled_from(
    [
        "a",
        "b",
        "cat",
        "dog",
        "0",
        "1",
        "é",
        "猫",
        "a b",
        "new\nline",
        'q"uote',
        "com,ma",
        "-",
        "..x",
        ".hidden",
        "x" * 255,
        "ü" * 127,
        "\x1b[2J",
        "\u202eevil",
        " ",
    ]
)
_ab = st.sampled_from(["a", "b"])
CLASS_NAMES = st.one_of(_ab, _ab, _ab, _odd_names, st.text(min_size=1, max_size=12))
FILE_STEMS = _odd_names | st.text(min_size=1, max_size=12)
_image_suffix = st.sampled_from([*SUFFIXES.values(), ".JPG", ".jpeg", ".png"])
SUFFIX = st.one_of(_image_suffix, _image_suffix, st.sampled_from([".txt", "", ".png.tmp"]))
ENTRIES = st.lists(
    st.tuples(st.sampled_from(["train", "val", "test"]), CLASS_NAMES, FILE_STEMS, SUFFIX, CONTENTS),
    min_size=0,
    max_size=8,
)

_paths_in_csv = st.one_of(
    st.tuples(st.just("entry"), st.integers(0, 100)),
    st.tuples(st.just("entry"), st.integers(0, 100)),
    st.tuples(st.just("absolute"), st.integers(0, 100)),
    st.sampled_from(
        [
            ("outside",),
            ("missing",),
            ("fifo",),
            ("folder",),
            ("",),
            ("dev-zero",),
            ("root",),
            ("dot",),
            ("nul",),
            ("quote",),
            ("newline",),
            ("long",),
        ]
    ),
)
_labels = st.one_of(
    _ab,
    _ab,
    st.sampled_from(["c", "", " ", "é", "\x00", "a,b", 'a"b', "x" * 300]),
    st.text(max_size=8),
)
_splits = st.sampled_from(["train", "val", "test", "", "TRAIN", "x", None])
CSVS = st.fixed_dictionaries(
    {
        "header": st.sampled_from(
            [
                "path,label",
                "label,path",
                "path,label,split",
                " Path , LABEL ",
                "file,class",
                "path",
                "",
                "path,label,path",
                "path,label,split,extra",
                "\ufeffpath,label",
            ]
        ),
        "rows": st.lists(st.tuples(_paths_in_csv, _labels, _splits), max_size=12),
        "repeat": st.sampled_from([1, 1, 1, 2, 50, 5000, 200_000]),
        "quoting": st.sampled_from(["csv", "raw"]),
        "encoding": st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16", "latin-1"]),
    }
)

DATA_CASES = st.fixed_dictionaries(
    {
        "layout": st.sampled_from(["classes", "classes", "splits", "csv", "csv"]),
        "entries": ENTRIES,
        "base": st.integers(0, 3),  # good images per class in classes a and b, added first
        "csv": CSVS,
        "channels": st.sampled_from([3, 1]),
        "on_bad_image": st.sampled_from(["stop", "skip"]),
        "in_memory": st.sampled_from(["auto", True, False]),
        "workers": st.sampled_from([0, 0, 2]),
        "memory_limit_mb": st.sampled_from([1024, 1024, 1024, 1, 2]),
    }
)

# ---- writing a case ----------------------------------------------------------------------------


def _name(stem: str, suffix: str) -> str:
    """A file name Linux accepts: no ``/`` or NUL, at most 255 bytes."""
    name = (stem + suffix).replace("/", "_").replace("\x00", "_") or "_"
    while len(os.fsencode(name)) > 255:
        name = name[1:]
    return name if name not in (".", "..") else name + "_"


def write_case(root: Path, case) -> tuple[str, list[Path]]:
    """Write the case's files under ``root``; returns the data source and the files made."""
    data = root / "data"
    outside = root / "outside"
    outside.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside / "o.png")
    splits = case["layout"] == "splits"
    made: list[Path] = []
    good = [("train", c, f"g{i}", ".png", ("good",)) for c in "ab" for i in range(case["base"])]
    for split, label, stem, suffix, content in good + list(case["entries"]):
        folder = data / (split if splits else "") / _name(label, "")
        path = folder / _name(stem, suffix)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(path):
                _write_entry(path, content, data, outside, made)
                made.append(path)
        except Exception:
            continue  # refuses, a mode Pillow cannot write): the case goes on without it
    data.mkdir(exist_ok=True)
    if case["layout"] != "csv":
        return str(data), made
    return str(_write_csv(data / "list.csv", case["csv"], made, data, outside)), made


def _write_entry(path: Path, content, data: Path, outside: Path, made: list[Path]) -> None:
    kind = content[0]
    if kind == "good":
        Image.new("RGB", (12, 12), (200, 30, 30)).save(path, format="PNG")
    elif kind == "image":
        path.write_bytes(make_image(*content[1:]))
    elif kind == "text":
        path.write_text(content[1])
    elif kind == "bytes":
        path.write_bytes(content[1])
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse":  # over the 1 GiB file limit, without the disk space
        with path.open("wb") as handle:
            handle.truncate((1 << 30) + 1)
    else:
        target = {
            "image": made[0] if made else outside / "o.png",
            "folder-inside": path.parent.parent,
            "folder-outside": outside,
            "loop": path.parent,
            "root": Path("/"),
            "dev-zero": Path("/dev/zero"),
            "missing": data / "nowhere",
            "self": path,
        }[content[1]]
        path.symlink_to(target)


def _csv_path(choice, made: list[Path], csv_file: Path, outside: Path) -> str:
    kind = choice[0]
    if kind == "good":
        return str(choice[1].relative_to(csv_file.parent))
    if kind in ("entry", "absolute"):
        if not made:
            return "missing.png"
        path = made[choice[1] % len(made)]
        return str(path) if kind == "absolute" else str(path.relative_to(csv_file.parent))
    special = csv_file.parent / "special"
    if kind == "fifo" and not special.exists():
        os.mkfifo(special)
    return {
        "outside": str(Path("..") / outside.name / "o.png"),
        "missing": "nowhere.png",
        "fifo": "special",
        "folder": ".",
        "": "",
        "dev-zero": "/dev/zero",
        "root": "/",
        "dot": "..",
        "nul": "a\x00b.png",
        "quote": 'a"b.png',
        "newline": "a\nb.png",
        "long": "x" * 5000 + ".png",
    }[kind]


def _write_csv(path: Path, spec, made: list[Path], data: Path, outside: Path) -> Path:
    lines = []
    good = [(("good", p), p.parent.name, None) for p in made if p.name.startswith("g")]
    for choice, label, split in good + list(spec["rows"]):
        row = [_csv_path(choice, made, path, outside), label]
        if split is not None:
            row.append(split)
        if spec["quoting"] == "csv":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(row)
            lines.append(buffer.getvalue())
        else:
            lines.append(",".join(row) + "\n")
    text = "".join(lines)
    body = text * min(spec["repeat"], (16 << 20) // max(1, len(text)))  # at most 16 MB
    errors = "surrogatepass" if spec["encoding"].startswith("utf") else "replace"
    path.write_bytes((spec["header"] + "\n" + body).encode(spec["encoding"], errors))
    return path


# ---- the check ---------------------------------------------------------------------------------


def attempt(name: str, function) -> tuple[str, object]:
    """``(name:ok, result)`` or ``(name:DataError, None)``; anything else propagates."""
    try:
        return f"{name}:ok", function()
    except DataError:
        return f"{name}:DataError", None


#: Pixels a case may force into memory (``in_memory=True``); over it, the case runs with
#: ``"auto"``: forcing a million rows of one image into memory takes the gigabyte it asks for.
FORCED_PIXELS = 256 << 20
#: Peak memory growth a case may cause, in MiB (see the module docstring).
PEAK_MB = 1024 + 256


def check(case) -> list[str]:
    """Write the case, then list, prepare, batch and read it; the labels of the outcomes."""
    with tempfile.TemporaryDirectory() as folder:
        source, made = write_case(Path(folder), case)
        channels = case["channels"]
        labels = []
        label, found = attempt(
            "discover",
            lambda: discover(
                source, val_fraction=0.2, split_seed=0, memory_limit_mb=case["memory_limit_mb"]
            ),
        )
        labels.append(label)
        if found is not None:
            pre = Preprocessing(input_size=(channels, 16, 16), crop_pct=1.0)
            in_memory = case["in_memory"]
            samples = sum(len(split) for split in found.splits.values())
            if in_memory is True and samples * channels * 16 * 16 > FORCED_PIXELS:
                in_memory = "auto"  # what True asks for is that memory: not a finding
                labels.append("in_memory:True as auto")
            label, prepared = attempt(
                "prepare_data",
                lambda: prepare_data(
                    found,
                    pre,
                    in_memory=in_memory,
                    memory_limit_mb=case["memory_limit_mb"],
                    on_bad_image=case["on_bad_image"],
                    workers=case["workers"],
                ),
            )
            labels.append(label)
            if prepared is not None:
                prepared.workers = 0  # a batch in this process (worker processes: not here)
                labels.append(attempt("batch", lambda: _first_batches(prepared))[0])
        for path in made[:: max(1, len(made) // 6)]:
            labels.append(attempt("load_image", lambda p=path: load_image(p, channels))[0])
    return labels


def _first_batches(prepared) -> None:
    for split in prepared.source.splits:
        for images, targets in prepared.loader(split, 4):
            assert len(images) == len(targets)
            break


def fuzz(cases: list) -> tuple[dict[str, int], list[str]]:
    """Every case in sandboxed children: (label counts, findings)."""
    return forge.sandboxed_cases(cases, check, case_seconds=60, peak_mb=PEAK_MB)


# ---- the default suite -------------------------------------------------------------------------


def test_random_folders_and_csvs_give_data_or_a_data_error():
    cases = collect(DATA_CASES, 150)
    counts, findings = fuzz(cases)
    assert findings == [], "\n".join(findings)
    # The cases reach both outcomes of each step.
    for step, least in (("discover", 10), ("prepare_data", 3), ("load_image", 100)):
        assert counts.get(f"{step}:ok", 0) > least, counts
        assert counts.get(f"{step}:DataError", 0) > least, counts


def test_an_untyped_error_or_a_hang_in_the_data_path_is_a_finding(monkeypatch):
    # Negative control: a loader that hangs and a decoder that raises TypeError are reported,
    # each by case; a plain case passes.
    import torchgraft.data.prepare as prepare_module

    plain = {**collect(DATA_CASES, 1)[0], "layout": "classes", "entries": [], "base": 2}
    plain.update(memory_limit_mb=1024, in_memory=True, workers=0)
    counts, findings = fuzz([plain])
    assert findings == []
    assert counts["prepare_data:ok"] == 1, counts

    def hangs(*args, **kwargs):
        import time

        time.sleep(3600)

    monkeypatch.setattr(prepare_module, "_decode", hangs)
    counts, findings = forge.sandboxed_cases([plain, plain], check, case_seconds=2, grace=5)
    assert [f.split(":")[0] for f in findings] == ["case 0", "case 1"], findings
    assert all("a hang" in f for f in findings)
    monkeypatch.setattr(prepare_module, "_decode", lambda *a, **k: len(None))
    counts, findings = fuzz([plain])
    assert len(findings) == 1, findings
    assert "escaped: TypeError" in findings[0]


# ---- findings of bench/fuzz.py --data, minimal ---------------------------------------------------


def _one_image_per_class(root: Path) -> Path:
    for label in "ab":
        (root / label).mkdir(parents=True)
        Image.new("RGB", (12, 12), (200, 30, 30)).save(root / label / "g0.png")
    return root


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_loader_of_an_empty_split_gives_batches_or_a_data_error(tmp_path, in_memory):
    # One image per class: stratified splitting leaves val empty (round(0.2) == 0).
    source = discover(str(_one_image_per_class(tmp_path / "data")), val_fraction=0.2)
    assert len(source.splits["val"]) == 0
    pre = Preprocessing(input_size=(3, 16, 16), crop_pct=1.0)
    prepared = prepare_data(source, pre, in_memory=in_memory)
    with contextlib.suppress(DataError):
        assert all(len(images) == len(labels) for images, labels in prepared.loader("val", 4))


@pytest.mark.parametrize("in_memory", [True, False])
def test_training_on_an_empty_validation_split_trains_or_is_a_data_error(tmp_path, in_memory):
    import torchgraft as tg
    from support import tiny_config
    from torchgraft.engine.console import RunConsole

    data = _one_image_per_class(tmp_path / "data")
    config = tiny_config(
        data, tmp_path / "runs", train={"epochs": 1}, data={"in_memory": in_memory}
    )
    with contextlib.suppress(DataError):
        tg.fit(config, console=RunConsole(quiet=True))
