"""prepare_data decodes or scans once and deals with bad files; every loader gives the same
batches in the same order (batch_order), whether images are in memory or streamed."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.data.digits import load_digits
from torchgraft.data.loaders import MemoryLoader, batch_order
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.errors import DataError
from torchgraft.model.spec import Preprocessing

PRE = Preprocessing(input_size=(3, 16, 16), crop_pct=1.0)
GREY = Preprocessing(input_size=(1, 16, 16), mean=(0.5,), std=(0.25,), crop_pct=1.0)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits()


def _digit_image(index: int) -> Image.Image:
    """Digit ``index`` of the UCI set as a 24x24 colour image (each channel a bit different)."""
    images, _ = _digits()
    grey = np.kron(images[index], np.ones((3, 3), dtype=np.uint8))  # (24, 24)
    rgb = np.stack([grey, 255 - grey, np.roll(grey, 3, axis=1)], axis=-1)
    return Image.fromarray(rgb)


def _write_digits(root: Path, per_class: int = 6, classes=(0, 1, 2)) -> Path:
    """``root/<digit>/<n>.png`` (and one JPEG per class) from the UCI digits."""
    _, labels = _digits()
    for digit in classes:
        folder = root / str(digit)
        folder.mkdir(parents=True)
        rows = np.flatnonzero(labels == digit)[:per_class]
        for n, row in enumerate(rows):
            suffix = ".jpg" if n == 0 else ".png"
            _digit_image(int(row)).save(folder / f"{n:02d}{suffix}")
    return root


def _truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def digits_dir(tmp_path) -> Path:
    return _write_digits(tmp_path / "digits")


@pytest.fixture
def broken_dir(tmp_path) -> tuple[Path, list[Path]]:
    """Split folders whose train/0 holds a truncated JPEG and a text file named x.jpg."""
    root = tmp_path / "broken"
    _write_digits(root / "train", per_class=4)
    _write_digits(root / "val", per_class=2)
    truncated = _truncated_jpeg(root / "train" / "0" / "truncated.jpg")
    text = root / "train" / "1" / "x.jpg"
    text.write_text("this is not a JPEG")
    return root, [truncated, text]


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def _epochs(data, split: str, *, shuffle: bool, seed: int = 0, epochs: int = 2, batch=5):
    """The batches of ``epochs`` epochs from one loader driven by a generator seeded ``seed``."""
    loader = data.loader(
        split, batch, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )
    return [_batches(loader) for _ in range(epochs)]


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (images_a, labels_a), (images_b, labels_b) in zip(a, b, strict=True):
        assert images_a.dtype == images_b.dtype == torch.uint8
        assert labels_a.dtype == labels_b.dtype == torch.int64
        assert torch.equal(images_a, images_b)
        assert torch.equal(labels_a, labels_b)


# --- in memory and streamed give the same batches -----------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_in_memory_and_streamed_give_the_same_batches(digits_dir, shuffle):
    source = discover(str(digits_dir), val_fraction=0.25)
    memory = prepare_data(source, PRE, in_memory=True)
    stream = prepare_data(source, PRE, in_memory=False)
    assert memory.in_memory
    assert not stream.in_memory
    assert memory.images["train"].shape == (len(source.splits["train"]), 3, 16, 16)
    for split in ("train", "val"):
        got_memory = _epochs(memory, split, shuffle=shuffle)
        got_stream = _epochs(stream, split, shuffle=shuffle)
        for epoch_memory, epoch_stream in zip(got_memory, got_stream, strict=True):
            _assert_same(epoch_memory, epoch_stream)
    # The labels follow the images: batch order is the split order when not shuffled.
    first_epoch = _epochs(memory, "train", shuffle=shuffle, epochs=1)[0]
    labels = torch.cat([labels for _, labels in first_epoch])
    expected = memory.labels("train")
    assert sorted(labels.tolist()) == sorted(expected.tolist())
    if not shuffle:
        assert torch.equal(labels, expected)
    else:
        epochs = _epochs(memory, "train", shuffle=True)
        assert not all(
            torch.equal(a[1], b[1]) for a, b in zip(epochs[0], epochs[1], strict=True)
        )  # a new order each epoch


def test_streamed_with_worker_processes_matches_workers_0(digits_dir):
    source = discover(str(digits_dir), val_fraction=0.25)
    single = prepare_data(source, PRE, in_memory=False, workers=0)
    multi = prepare_data(source, PRE, in_memory=False, workers=2)
    assert multi.loader("train", 5).workers == 2  # real worker processes
    _assert_same(
        _epochs(single, "train", shuffle=True, epochs=1)[0],
        _epochs(multi, "train", shuffle=True, epochs=1)[0],
    )


def test_auto_keeps_in_memory_within_the_limit(digits_dir):
    source = discover(str(digits_dir))
    assert prepare_data(source, PRE, in_memory="auto", memory_limit_mb=1).in_memory
    assert not prepare_data(source, PRE, in_memory="auto", memory_limit_mb=0).in_memory


def test_auto_counts_the_index_of_every_sample_not_only_its_pixels(tmp_path):
    # 40,000 rows of 3x8x8 pixels: 7.7 MB of pixels fit 12 MB, but not with their index
    # (paths, labels: 8.4 MB more), which the old estimate left out.
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (3, 2, 1)).save(tmp_path / "b.png")
    table = tmp_path / "rows.csv"
    table.write_text("path,label\n" + "a.png,x\nb.png,y\n" * 20_000)
    source = discover(str(table), memory_limit_mb=12)
    small = Preprocessing(input_size=(3, 8, 8), crop_pct=1.0)
    assert not prepare_data(source, small, memory_limit_mb=12).in_memory
    kept = prepare_data(source, small, memory_limit_mb=20)
    assert kept.in_memory
    # A file listed 20,000 times is decoded once and copied to every row.
    train = kept.images["train"]
    first: dict[int, torch.Tensor] = {}
    for i, label in enumerate(kept.labels("train").tolist()):
        assert torch.equal(train[i], first.setdefault(label, train[i]))
    assert not torch.equal(first[0], first[1])


def test_the_images_are_the_base_transform_of_each_file(digits_dir):
    source = discover(str(digits_dir))
    data = prepare_data(source, PRE, in_memory=True)
    train = data.source.splits["train"]
    index = len(train) - 1
    with Image.open(train.paths[index]) as image:
        resized = image.convert("RGB").resize((16, 16), Image.BILINEAR)
        expected = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    got = data.images["train"][index]
    # Pillow's own resize with antialiasing is what torchvision calls on a PIL image.
    assert (got.int() - expected.int()).abs().max() <= 1
    assert data.classes == ("0", "1", "2")


def test_grayscale_gives_one_channel_in_both_paths(digits_dir):
    source = discover(str(digits_dir))
    memory = prepare_data(source, GREY, in_memory=True)
    stream = prepare_data(source, GREY, in_memory=False)
    assert memory.channels == stream.channels == 1
    assert memory.images["val"].shape[1:] == (1, 16, 16)
    _assert_same(
        _epochs(memory, "val", shuffle=False, epochs=1)[0], _batches(stream.loader("val", 5))
    )


def test_digits_source_prepares_in_memory():
    data = prepare_data(discover("digits"), Preprocessing(input_size=(1, 8, 8), crop_pct=1.0))
    images = data.images["train"]
    assert images.shape[1:] == (1, 8, 8)
    assert images.dtype == torch.uint8
    # Resizing 8x8 to 8x8 keeps the pixels: the first training image is the array row.
    assert torch.equal(images[0, 0], torch.from_numpy(data.source.splits["train"].arrays[0]))


# --- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_bad_files_stop_with_every_path_listed(broken_dir, in_memory):
    root, bad = broken_dir
    source = discover(str(root))
    with pytest.raises(DataError) as info:
        prepare_data(source, PRE, in_memory=in_memory, skip_hint="--skip-them")
    message = str(info.value)
    assert "2 unreadable image files" in message
    for path in bad:
        assert str(path) in message
    assert "truncated file" in message
    assert "not an image" in message
    assert "--skip-them" in message


@pytest.mark.parametrize("in_memory", [True, False])
def test_bad_files_skipped_are_left_out_and_listed(broken_dir, in_memory):
    root, bad = broken_dir
    source = discover(str(root))
    data = prepare_data(source, PRE, in_memory=in_memory, on_bad_image="skip")
    assert sorted(item.path for item in data.bad) == sorted(bad)
    train = data.source.splits["train"]
    assert len(train) == len(source.splits["train"]) - 2
    assert not set(bad) & set(train.paths)
    assert len(data.labels("train")) == len(train)
    batches = _batches(data.loader("train", 4))
    assert sum(len(labels) for _, labels in batches) == len(train)
    assert torch.equal(torch.cat([labels for _, labels in batches]), data.labels("train"))


def test_skipping_gives_the_same_batches_in_memory_and_streamed(broken_dir):
    root, _ = broken_dir
    source = discover(str(root))
    memory = prepare_data(source, PRE, in_memory=True, on_bad_image="skip")
    stream = prepare_data(source, PRE, in_memory=False, on_bad_image="skip")
    _assert_same(
        _epochs(memory, "train", shuffle=True, epochs=1)[0],
        _epochs(stream, "train", shuffle=True, epochs=1)[0],
    )


def test_stray_text_file_in_a_class_folder(digits_dir):
    # Not an image by name nor by content: set aside at discovery, never a bad file.
    notes = digits_dir / "1" / "notes.txt"
    notes.write_text("where these came from")
    source = discover(str(digits_dir))
    assert all(notes not in split.paths for split in source.splits.values())
    assert source.strays.not_images == ("1/notes.txt",)
    data = prepare_data(source, PRE)  # on_bad_image="stop": nothing stops
    assert data.bad == []
    assert data.source.strays == source.strays  # still there to be told


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_file_listed_twice_is_skipped_everywhere(tmp_path, in_memory):
    # A CSV may list a file twice (oversampling): skipping must drop every copy.
    _write_digits(tmp_path, per_class=3)
    (tmp_path / "x.jpg").write_text("not a JPEG")
    rows = [f"{d}/{n:02d}{'.jpg' if n == 0 else '.png'},{d},train" for d in "012" for n in range(3)]
    rows += ["x.jpg,0,val", "x.jpg,0,val", "1/01.png,1,val"]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    source = discover(str(csv_path))
    with pytest.raises(DataError, match="1 unreadable image file:"):
        prepare_data(source, PRE, in_memory=in_memory)
    data = prepare_data(source, PRE, in_memory=in_memory, on_bad_image="skip")
    assert [item.path for item in data.bad] == [tmp_path / "x.jpg"]
    assert len(data.source.splits["val"]) == 1
    assert len(_batches(data.loader("val", 4))[0][1]) == 1


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_split_left_empty_after_skipping(tmp_path, in_memory):
    root = tmp_path / "data"
    _write_digits(root / "train", per_class=3)
    (root / "val" / "0").mkdir(parents=True)
    (root / "val" / "0" / "x.jpg").write_text("not a JPEG")
    with pytest.raises(DataError, match="val split has no readable image"):
        prepare_data(discover(str(root)), PRE, in_memory=in_memory, on_bad_image="skip")


def test_a_class_left_without_training_images_after_skipping(tmp_path):
    root = tmp_path / "data"
    _write_digits(root / "train", per_class=3, classes=(0, 1))
    _write_digits(root / "val", per_class=1, classes=(0, 1))
    (root / "train" / "2").mkdir()
    (root / "train" / "2" / "x.jpg").write_text("not a JPEG")
    with pytest.raises(DataError, match=r"\['2'\] have no readable training image"):
        prepare_data(discover(str(root)), PRE, on_bad_image="skip")


# --- batch_order and MemoryLoader ----------------------------------------------------------


def test_batch_order_is_a_permutation_in_batches():
    batches = batch_order(23, 5, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(23))
    assert not torch.equal(order, torch.arange(23))


def test_batch_order_without_shuffle_is_arange():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    batches = batch_order(10, 4, shuffle=False, generator=generator)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(generator.get_state(), state)  # no draw without shuffle


def test_batch_order_draws_from_the_generator_and_replays_from_its_state():
    generator = torch.Generator().manual_seed(42)
    saved = generator.get_state()
    first = torch.cat(batch_order(50, 8, shuffle=True, generator=generator))
    assert not torch.equal(generator.get_state(), saved)
    second = torch.cat(batch_order(50, 8, shuffle=True, generator=generator))
    assert not torch.equal(first, second)  # the next epoch has its own order
    generator.set_state(saved)  # what resume does
    assert torch.equal(torch.cat(batch_order(50, 8, shuffle=True, generator=generator)), first)
    assert torch.equal(torch.cat(batch_order(50, 8, shuffle=True, generator=generator)), second)


def test_memory_loader_length_labels_and_augment():
    images = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    labels = torch.arange(7, dtype=torch.int64) * 10
    loader = MemoryLoader(images, labels, 3)
    assert len(loader) == 3
    for batch, target in loader:
        assert torch.equal(batch[:, 0, 0, 0].long() * 10, target)  # pairs stay together
    flipped = MemoryLoader(images, labels, 3, augment=lambda x: 255 - x)
    assert torch.equal(torch.cat([b for b, _ in flipped]), 255 - images)
