"""discover() reads the four dataset layouts; stratified_split and fingerprint keep their word."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from torchgraft.data.digits import load_digits
from torchgraft.data.sources import class_folders, discover, stratified_split
from torchgraft.errors import DataError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def _png(path: Path, colour=(128, 128, 128), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _class_tree(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<class>_<i>.png`` for each class and count."""
    for name, count in counts.items():
        for i in range(count):
            _png(root / name / f"{name}_{i}.png", COLOURS.get(name, (90, 90, 90)))
    return root


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _relative(split) -> list[str]:
    return sorted(p.relative_to(split.root).as_posix() for p in split.paths)


# --- the four layouts ---------------------------------------------------------------------


def test_digits_layout_is_the_bundled_digits_split_stratified():
    source = discover("digits", val_fraction=0.25, split_seed=3)
    _, labels = load_digits()
    assert source.layout == "digits"
    assert source.origin == "digits"
    assert source.classes == tuple(str(d) for d in range(10))
    assert set(source.splits) == {"train", "val"}
    train, val = source.splits["train"], source.splits["val"]
    assert len(train) + len(val) == len(labels) == 1797
    assert train.arrays.shape[1:] == (8, 8)
    assert train.arrays.dtype == np.uint8
    # Each class gives about a quarter of its images to val.
    for digit, total in Counter(labels.tolist()).items():
        assert val.labels.count(digit) == round(total * 0.25)
    # Split.image turns an array row into a PIL image of the asked channels.
    assert train.image(0, 3).mode == "RGB"
    assert train.image(0, 1).size == (8, 8)
    assert train.describe(0) == "train #0"


def test_split_folders_with_val_and_test(tmp_path):
    _class_tree(tmp_path / "train", {"dog": 3, "cat": 2})
    _class_tree(tmp_path / "val", {"cat": 1, "dog": 2})
    _class_tree(tmp_path / "test", {"dog": 1})  # a test split may lack a class
    source = discover(str(tmp_path))
    assert source.layout == "split-folders"
    assert source.classes == ("cat", "dog")  # sorted, whatever the creation order
    assert set(source.splits) == {"train", "val", "test"}
    train, val, test = (source.splits[n] for n in ("train", "val", "test"))
    assert sorted(zip(_relative(train), sorted(train.labels), strict=True)) == [
        ("train/cat/cat_0.png", 0),
        ("train/cat/cat_1.png", 0),
        ("train/dog/dog_0.png", 1),
        ("train/dog/dog_1.png", 1),
        ("train/dog/dog_2.png", 1),
    ]
    for split in (train, val, test):
        for path, label in zip(split.paths, split.labels, strict=True):
            assert path.parent.name == source.classes[label]
    assert _relative(val) == ["val/cat/cat_0.png", "val/dog/dog_0.png", "val/dog/dog_1.png"]
    # test/ holds only dog: its label still indexes the train classes, not its own list.
    assert test.labels == [1]


def test_split_folders_without_test_have_no_test_split(tmp_path):
    _class_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    _class_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    assert set(discover(str(tmp_path)).splits) == {"train", "val"}


def test_split_folders_without_val_split_train_stratified(tmp_path):
    _class_tree(tmp_path / "train", {"cat": 10, "dog": 5})
    source = discover(str(tmp_path), val_fraction=0.2, split_seed=1)
    train, val = source.splits["train"], source.splits["val"]
    assert Counter(val.labels) == {0: 2, 1: 1}
    assert Counter(train.labels) == {0: 8, 1: 4}
    assert not set(train.paths) & set(val.paths)
    assert all(p.parts[-3] == "train" for p in [*train.paths, *val.paths])


def test_class_folders_layout_split_by_fraction_and_seed(tmp_path):
    _class_tree(tmp_path, {"eel": 10, "cat": 20})
    source = discover(str(tmp_path), val_fraction=0.3, split_seed=7)
    assert source.layout == "class-folders"
    assert source.origin == str(tmp_path)
    assert source.classes == ("cat", "eel")
    train, val = source.splits["train"], source.splits["val"]
    assert Counter(val.labels) == {0: 6, 1: 3}
    assert len(train) + len(val) == 30
    assert not set(train.paths) & set(val.paths)
    again = discover(str(tmp_path), val_fraction=0.3, split_seed=7)
    assert again.splits["val"].paths == val.paths
    other = discover(str(tmp_path), val_fraction=0.3, split_seed=8)
    assert other.splits["val"].paths != val.paths


def test_csv_without_split_column_paths_relative_to_the_csv(tmp_path):
    for name in ("dog", "cat"):
        for i in range(5):
            _png(tmp_path / "img" / f"{name}{i}.png", COLOURS[name])
    rows = [f"img/{n}{i}.png,{n}" for n in ("dog", "cat") for i in range(5)]
    csv_path = _csv(tmp_path / "labels.csv", ["path,label", *rows])
    source = discover(str(csv_path), val_fraction=0.2, split_seed=0)
    assert source.layout == "csv"
    assert source.classes == ("cat", "dog")
    train, val = source.splits["train"], source.splits["val"]
    assert Counter(val.labels) == {0: 1, 1: 1}
    for split in (train, val):
        assert split.root == tmp_path
        for path, label in zip(split.paths, split.labels, strict=True):
            assert path.is_file()  # resolved against the CSV's folder
            assert path.name.startswith(source.classes[label])


def test_csv_with_split_column(tmp_path):
    rows = [
        "a.png,cat,train",
        "b.png,dog,train",
        "c.png,cat,val",
        "d.png,dog,val",
        "e.png,dog,test",
    ]
    # Header case and spaces do not matter; an Excel BOM neither.
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("\ufeffPath, Label ,SPLIT\n" + "\n".join(rows) + "\n", encoding="utf-8")
    source = discover(str(csv_path))
    assert set(source.splits) == {"train", "val", "test"}
    names = {n: [p.name for p in s.paths] for n, s in source.splits.items()}
    assert names == {"train": ["a.png", "b.png"], "val": ["c.png", "d.png"], "test": ["e.png"]}
    assert source.splits["test"].labels == [1]


# --- errors name the folder or file --------------------------------------------------------


def _error(source: str | Path) -> str:
    with pytest.raises(DataError) as info:
        discover(str(source))
    return str(info.value)


def test_loose_files_without_class_folders(tmp_path):
    _png(tmp_path / "one.png")
    _png(tmp_path / "two.png")
    message = _error(tmp_path)
    assert str(tmp_path) in message
    assert "no class folders" in message
    assert "one.png" in message  # what was found


def test_empty_class_folder(tmp_path):
    _class_tree(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    message = _error(tmp_path)
    assert str(tmp_path / "dog") in message
    assert "holds no images" in message


def test_a_class_folder_of_hidden_files_only_is_empty(tmp_path):
    _class_tree(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\0")
    assert str(tmp_path / "dog") in _error(tmp_path)


def test_single_class(tmp_path):
    _class_tree(tmp_path, {"cat": 4})
    message = _error(tmp_path)
    assert str(tmp_path) in message
    assert "only one class" in message
    assert "'cat'" in message


def test_val_class_that_train_lacks(tmp_path):
    _class_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    _class_tree(tmp_path / "val", {"cat": 1, "eel": 1})
    message = _error(tmp_path)
    assert str(tmp_path / "val") in message
    assert "'eel'" in message


def test_csv_without_header(tmp_path):
    csv_path = _csv(tmp_path / "l.csv", ["a.png,cat", "b.png,dog"])
    message = _error(csv_path)
    assert str(csv_path) in message
    assert "header" in message


def test_csv_row_with_empty_label(tmp_path):
    csv_path = _csv(tmp_path / "l.csv", ["path,label", "a.png,cat", "b.png,", "c.png,dog"])
    message = _error(csv_path)
    assert f"{csv_path}:3" in message
    assert "empty path or label" in message


def test_csv_bad_split_value(tmp_path):
    csv_path = _csv(tmp_path / "l.csv", ["path,label,split", "a.png,cat,train", "b.png,dog,valid"])
    message = _error(csv_path)
    assert f"{csv_path}:3" in message
    assert "'valid'" in message


def test_csv_split_column_empty_in_some_rows_only(tmp_path):
    # Such a row would belong to no split: it must not vanish silently.
    lines = [
        "path,label,split",
        "a.png,cat,train",
        "b.png,dog,train",
        "c.png,cat,",
        "d.png,dog,val",
    ]
    message = _error(_csv(tmp_path / "l.csv", lines))
    assert f"{tmp_path / 'l.csv'}:4" in message
    assert "empty split" in message


def test_csv_val_label_without_train_rows(tmp_path):
    lines = ["path,label,split", "a.png,cat,train", "b.png,dog,train", "c.png,eel,val"]
    message = _error(_csv(tmp_path / "l.csv", lines))
    assert str(tmp_path / "l.csv") in message
    assert "'eel'" in message


def test_csv_split_column_without_val_rows(tmp_path):
    lines = ["path,label,split", "a.png,cat,train", "b.png,dog,train"]
    message = _error(_csv(tmp_path / "l.csv", lines))
    assert str(tmp_path / "l.csv") in message
    assert "no val" in message


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    message = _error(missing)
    assert str(missing) in message
    assert "no such file or folder" in message


def test_file_that_is_not_a_csv(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("path,label\na.png,cat\n")
    message = _error(path)
    assert str(path) in message
    assert ".csv" in message


# --- what a class folder holds -------------------------------------------------------------


def test_hidden_entries_ignored_stray_files_set_aside(tmp_path):
    _class_tree(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / ".git").mkdir()
    _png(tmp_path / ".git" / "objects" / "x.png")  # not a class, though it holds an image
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    _png(tmp_path / "cat" / ".cache" / "thumb.png")
    (tmp_path / "dog" / "notes.txt").write_text("taken on Tuesday")
    (tmp_path / "dog" / "notes.jpg").write_text("taken on Tuesday")  # an image's name: kept
    _png(tmp_path / "dog" / "more" / "deep.png")  # subfolders of a class belong to it
    classes, samples = class_folders(tmp_path)
    assert classes == ("cat", "dog")
    found = sorted((p.relative_to(tmp_path).as_posix(), label) for p, label in samples)
    assert found == [
        ("cat/cat_0.png", 0),
        ("cat/cat_1.png", 0),
        ("dog/dog_0.png", 1),
        ("dog/dog_1.png", 1),
        ("dog/more/deep.png", 1),
        ("dog/notes.jpg", 1),  # kept, so that the scan reports it by path
    ]
    strays = discover(str(tmp_path)).strays  # set aside and named, hidden ones unseen
    assert strays.not_images == ("dog/notes.txt",)
    assert strays.outside == ()


def test_class_folders_allow_single(tmp_path):
    _class_tree(tmp_path, {"dog": 2})
    classes, samples = class_folders(tmp_path, allow_single=True)
    assert classes == ("dog",)
    assert len(samples) == 2


# --- stratified_split ----------------------------------------------------------------------


def _check_split(labels: list[int], fraction: float, seed: int) -> None:
    train, val = stratified_split(labels, fraction, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(labels)))
    assert train == sorted(train)
    assert val == sorted(val)
    in_val = Counter(labels[i] for i in val)
    for label, total in Counter(labels).items():
        got = in_val.get(label, 0)
        if total == 1:
            assert got == 0  # a lone image stays in train
        else:
            assert 1 <= got <= total - 1  # both splits see the class
            assert abs(got - total * fraction) <= 1  # the class keeps its proportion


def test_stratified_split_keeps_proportions():
    labels = [0] * 50 + [1] * 30 + [2] * 7 + [3] * 2 + [4]
    _, val = stratified_split(labels, 0.2, seed=0)
    assert Counter(labels[i] for i in val) == {0: 10, 1: 6, 2: 1, 3: 1}
    assert 89 not in val  # the single class-4 item
    _check_split(labels, 0.2, 0)


def test_stratified_split_seed():
    labels = [i % 3 for i in range(60)]
    assert stratified_split(labels, 0.25, seed=5) == stratified_split(labels, 0.25, seed=5)
    assert stratified_split(labels, 0.25, seed=5) != stratified_split(labels, 0.25, seed=6)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=80),
    fraction=st.floats(0.05, 0.6),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_property(labels, fraction, seed):
    _check_split(labels, fraction, seed)


# --- fingerprint ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    return _class_tree(tmp_path / "data", {"cat": 4, "dog": 4})


def _fingerprint(root: Path) -> str:
    return discover(str(root), split_seed=0).fingerprint()


def test_fingerprint_is_stable_and_independent_of_location(tree, tmp_path):
    before = _fingerprint(tree)
    assert _fingerprint(tree) == before
    copy = shutil.copytree(tree, tmp_path / "elsewhere" / "copy")
    assert _fingerprint(copy) == before


def test_fingerprint_changes_when_a_file_is_added(tree):
    before = _fingerprint(tree)
    _png(tree / "dog" / "dog_9.png")
    assert _fingerprint(tree) != before


def test_fingerprint_changes_when_a_file_is_removed(tree):
    before = _fingerprint(tree)
    (tree / "cat" / "cat_3.png").unlink()
    assert _fingerprint(tree) != before


def test_fingerprint_changes_when_a_file_is_relabelled(tree):
    before = _fingerprint(tree)
    (tree / "cat" / "cat_3.png").rename(tree / "dog" / "cat_3.png")
    assert _fingerprint(tree) != before


def test_fingerprint_changes_when_a_file_is_resized(tree):
    before = _fingerprint(tree)
    target = tree / "cat" / "cat_0.png"
    size = target.stat().st_size
    _png(target, COLOURS["cat"], size=(40, 30))
    assert target.stat().st_size != size
    assert _fingerprint(tree) != before


def test_digits_fingerprint_depends_on_the_split():
    assert discover("digits").fingerprint() == discover("digits").fingerprint()
    assert discover("digits").fingerprint() != discover("digits", split_seed=1).fingerprint()


def _documented(source) -> str:
    """The fingerprint as documented: sha256 of the sorted-keys JSON of every signature."""
    document = {
        "classes": list(source.classes),
        "splits": {name: split.signature() for name, split in source.splits.items()},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def test_fingerprint_is_the_documented_hash_for_every_layout(tree, tmp_path):
    # Written piece by piece (a million rows never become one list): the same digest, so
    # runs saved before still resume.
    _class_tree(tmp_path / "split" / "train", {"cat": 3, "dog": 3})
    _class_tree(tmp_path / "split" / "val", {"cat": 1, "dog": 1})
    outside = _png(tmp_path / "outside.png")
    lines = ["path,label", "./cat/cat_0.png,cat", "dog//dog_0.png,dog", "cat/cat_0.png,cat"]
    lines += [f"{outside},dog", "missing.png,cat", "cat/cat_1.png,cat", "dog/dog_1.png,dog"]
    table = _csv(tree / "weird.csv", lines)  # odd spellings, an absolute path, a repeat
    for source in ("digits", str(tree), str(tmp_path / "split"), str(table)):
        found = discover(source)
        assert found.fingerprint() == _documented(found), source
    signature = discover(str(table)).splits["train"].signature()
    assert [str(outside), 1, outside.stat().st_size] in signature  # absolute: kept whole
    assert ["missing.png", 0, -1] in signature + discover(str(table)).splits["val"].signature()


def test_split_paths_are_compact_and_behave_as_a_list_of_paths(tree):
    train = discover(str(tree)).splits["train"]
    paths = train.paths
    listed = list(paths)
    assert all(isinstance(p, Path) and p.is_file() for p in listed)
    assert paths == listed
    assert (paths[0], paths[-1], len(paths)) == (listed[0], listed[-1], len(listed))
    assert listed[1] in paths
    assert paths.names[0] == listed[0].relative_to(tree).as_posix()  # one string per sample
    assert train.without([0]).paths == listed[1:]


# --- load_digits ---------------------------------------------------------------------------


def test_load_digits():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8)
    assert images.dtype == np.uint8
    assert images.max() == 255  # 16, fully inked, scaled to white
    assert images.min() == 0
    assert labels.shape == (1797,)
    assert sorted(set(labels.tolist())) == list(range(10))
