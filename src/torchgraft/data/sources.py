"""What a dataset is, before any pixel is decoded: classes, splits, and where each sample is.

:func:`discover` turns ``data.source`` into a :class:`DataSource`:

* ``digits`` — the bundled UCI digits (:mod:`.digits`), split stratified;
* a folder with ``train/`` and ``val/`` (and optionally ``test/``), each holding one
  subfolder per class (``val/`` missing: split from ``train/``);
* a folder of class subfolders, split stratified;
* a ``.csv`` file with a header ``path,label`` (and optionally ``split`` with values
  ``train``/``val``/``test``); paths are relative to the CSV's folder.

Class names are the folder names or CSV labels, sorted. Hidden files and folders (``.git``,
``.DS_Store``) are ignored. In a folder, a file whose name and content are no image's
(``README.txt``, ``Thumbs.db``) and every file beside the class folders is left out of the
splits and named (:attr:`DataSource.strays`, :mod:`.strays`); any other entry that is not an
image (a ``.jpg`` of text, a FIFO, a broken link) is kept in the split so the scan reports it
by path (never silently skipped). A CSV names its files itself: every row is a sample.
Folders are walked by the link rules of :mod:`.folders` (links to folders only inside the
data folder, no loops, unreadable folders named), CSVs read bounded (:mod:`.csv_list`). The
split is stratified: each class gives ``round(n * val_fraction)`` of its images to ``val``
(at least one when it has two or more), chosen with ``split_seed``.

Listing is bounded by ``memory_limit_mb`` (``data.memory_limit_mb``): the index — a path and
a label per sample, :data:`~.limits.SAMPLE_INDEX_BYTES` each plus the path — must fit in it, and a folder
or CSV over it is refused while it is being listed (:class:`~.limits.IndexBudget`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .csv_list import SPLIT_NAMES, CsvRows, read_csv_rows
from .digits import DIGIT_CLASSES, load_digits
from .folders import class_folders, list_class_folders
from .images import load_image
from .limits import DataLimits, IndexBudget, resolve_data_limits
from .sample_paths import SamplePaths, relative_name
from .strays import StrayFiles

__all__ = ["DataSource", "Split", "class_folders", "discover", "stratified_split"]


@dataclass
class Split:
    """One split: each sample's label and where its pixels are (a file, or an array row)."""

    name: str
    labels: list[int]
    paths: Sequence[Path] | None = None  # a list, or a compact SamplePaths
    arrays: np.ndarray | None = None  # digits: (N, 8, 8) uint8
    root: Path | None = None  # paths are shown and fingerprinted relative to it

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int, channels: int) -> Image.Image:
        """Sample ``index`` as a decoded ``RGB`` (3 channels) or ``L`` (1) image.

        Raises:
            DataError: the file cannot be read as an image (named in the message).
        """
        if self.arrays is not None:
            image = Image.fromarray(self.arrays[index], mode="L")
            return image.convert("RGB") if channels == 3 else image
        return load_image(self.paths[index], channels)

    def describe(self, index: int) -> str:
        """The sample's file, or ``digits #index``."""
        return str(self.paths[index]) if self.paths is not None else f"{self.name} #{index}"

    def without(self, drop: Sequence[int]) -> Split:
        """The split less the samples at ``drop`` (bad files skipped on request)."""
        gone = set(drop)
        keep = [i for i in range(len(self)) if i not in gone]
        return Split(
            self.name,
            [self.labels[i] for i in keep],
            _select(self.paths, keep) if self.paths is not None else None,
            self.arrays[keep] if self.arrays is not None else None,
            self.root,
        )

    def signature(self) -> list:
        """What identifies the split's content cheaply: (relative path, label, size) rows."""
        return list(self._signature_rows()) if self.paths is not None else self._arrays_rows()

    def hash_signature(self, hasher) -> None:
        """Feed ``json.dumps(self.signature())`` to ``hasher``, in pieces (a million rows
        never exist as one list, nor as one string)."""
        if self.paths is None:
            hasher.update(json.dumps(self._arrays_rows()).encode())
            return
        hasher.update(b"[")
        pieces: list[str] = []
        for index, (shown, label, size) in enumerate(self._signature_rows()):
            # json.dumps([shown, label, size]) with its default separators, written out.
            pieces.append(f"{', ' if index else ''}[{_json_string(shown)}, {label}, {size}]")
            if len(pieces) == 4096:
                hasher.update("".join(pieces).encode())
                pieces.clear()
        hasher.update("".join(pieces).encode() + b"]")

    def _arrays_rows(self) -> list:
        return [hashlib.sha256(self.arrays.tobytes()).hexdigest(), self.labels]

    def _signature_rows(self):
        size = lru_cache(maxsize=4096)(_size)  # a CSV may list one file many times
        if isinstance(self.paths, SamplePaths):
            root, names = str(self.paths.root), self.paths.names
            for name, label in zip(names, self.labels, strict=True):
                shown = relative_name(name, self.root)
                yield [shown, label, size(os.path.join(root, name))]
            return
        for path, label in zip(self.paths, self.labels, strict=True):
            shown = relative_name(str(path), self.root) if self.root else Path(path).as_posix()
            yield [shown, label, size(str(path))]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return -1


def _select(paths: Sequence[Path], rows: Sequence[int]) -> Sequence[Path]:
    if isinstance(paths, SamplePaths):
        return paths.select(rows)
    return [paths[i] for i in rows]


@dataclass
class DataSource:
    """Classes and splits of one dataset.

    Attributes:
        classes: class names, sorted; a label is an index into it.
        splits: ``train`` and ``val`` always, ``test`` when the data has one.
        origin: ``digits`` or the folder/CSV given.
        layout: ``digits``, ``split-folders``, ``class-folders`` or ``csv``.
        val_held_out: the data has no validation split of its own: ``val`` was taken from
            the training images (``val_fraction`` of each class).
        strays: the folder's files left out of every split (not images, or beside the
            class folders); :meth:`~.strays.StrayFiles.lines` says what they are.
    """

    classes: tuple[str, ...]
    splits: dict[str, Split] = field(default_factory=dict)
    origin: str = ""
    layout: str = ""
    val_held_out: bool = False
    strays: StrayFiles = field(default_factory=StrayFiles)

    def fingerprint(self) -> str:
        """sha256 of classes and every split's samples (resume refuses other data): of
        ``json.dumps({"classes": …, "splits": {name: split.signature()}}, sort_keys=True)``,
        written piece by piece."""
        hasher = hashlib.sha256()
        hasher.update(b'{"classes": ' + json.dumps(list(self.classes)).encode())
        hasher.update(b', "splits": {')
        for index, name in enumerate(sorted(self.splits)):
            hasher.update((", " if index else "").encode() + json.dumps(name).encode() + b": ")
            self.splits[name].hash_signature(hasher)
        hasher.update(b"}}")
        return hasher.hexdigest()

    def summary(self) -> str:
        sizes = " / ".join(f"{len(s):,} {name}" for name, s in self.splits.items())
        return f"{self.origin}: {sizes} images, {len(self.classes)} classes"


def discover(
    source: str,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    memory_limit_mb: int | None = None,
    limits: DataLimits | None = None,
) -> DataSource:
    """The dataset ``source`` names (see the module docstring).

    Args:
        source: ``digits``, a folder or a ``.csv`` file.
        val_fraction, split_seed: how a dataset without a val split is split.
        memory_limit_mb: the data's memory budget (``data.memory_limit_mb``); the index of
            the samples must fit in it. None: :data:`~.limits.DEFAULT_MEMORY_LIMIT_MB`.
        limits: bounds on the CSV file (:class:`~.limits.DataLimits`; default: from the
            environment).

    Raises:
        DataError: no such path, no class folders, an empty class, a single class, a
            validation class the training data lacks, a CSV without its header, a CSV
            whose split column is empty in some rows only, a linked folder leaving the data
            folder, a link loop, an unreadable folder, a CSV that is not a regular file or
            is too long, or more samples than ``memory_limit_mb`` can index.
    """
    if source == "digits":
        return _digits(val_fraction, split_seed)
    path = Path(source)
    budget = IndexBudget(memory_limit_mb)
    if path.is_dir():
        if (path / "train").is_dir():
            return _split_folders(path, val_fraction, split_seed, budget)
        return _class_folders(path, val_fraction, split_seed, budget)
    if path.suffix.lower() == ".csv" and os.path.lexists(path):
        return _csv(path, val_fraction, split_seed, budget, resolve_data_limits(limits))
    if os.path.lexists(path):
        raise DataError(f"{path}: not a folder or a .csv file; give a folder of images or a CSV")
    raise DataError(f"{path}: no such file or folder")


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list, list]:
    """Indices for (train, val): each class gives ``round(n * val_fraction)`` to val (at
    least one when it has two or more), chosen by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels_array = np.asarray(labels)
    train, val = [], []
    for label in sorted(set(labels_array.tolist())):
        members = np.flatnonzero(labels_array == label)
        order = members[torch.randperm(len(members), generator=generator).numpy()]
        count = round(len(members) * val_fraction)
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1)
        val += order[:count].tolist()
        train += order[count:].tolist()
    return sorted(train), sorted(val)


def _digits(val_fraction: float, seed: int) -> DataSource:
    images, labels = load_digits()
    train, val = stratified_split(labels.tolist(), val_fraction, seed)
    splits = {
        name: Split(name, labels[rows].tolist(), arrays=images[rows])
        for name, rows in (("train", train), ("val", val))
    }
    return DataSource(DIGIT_CLASSES, splits, "digits", "digits", val_held_out=True)


def _class_folders(root: Path, val_fraction: float, seed: int, budget) -> DataSource:
    listing = list_class_folders(root, budget=budget)
    train, val = stratified_split(listing.labels, val_fraction, seed)
    splits = {
        name: _split(name, listing.paths, listing.labels, rows, root)
        for name, rows in (("train", train), ("val", val))
    }
    return DataSource(
        listing.classes, splits, str(root), "class-folders", True, strays=listing.strays
    )


def _split_folders(root: Path, val_fraction: float, seed: int, budget) -> DataSource:
    listing = list_class_folders(root / "train", root=root, budget=budget)
    paths, labels, classes = listing.paths, listing.labels, listing.classes
    splits, strays = {}, listing.strays
    if (root / "val").is_dir():
        splits["train"] = Split("train", labels, paths, root=root)
        splits["val"], more = _other_split(root, "val", classes, budget)
        strays += more
    else:
        train, val = stratified_split(labels, val_fraction, seed)
        splits["train"] = _split("train", paths, labels, train, root)
        splits["val"] = _split("val", paths, labels, val, root)
    if (root / "test").is_dir():
        splits["test"], more = _other_split(root, "test", classes, budget)
        strays += more
    held_out = not (root / "val").is_dir()
    return DataSource(classes, splits, str(root), "split-folders", held_out, strays=strays)


def _other_split(
    root: Path, name: str, classes: tuple[str, ...], budget
) -> tuple[Split, StrayFiles]:
    listing = list_class_folders(root / name, root=root, allow_single=True, budget=budget)
    unknown = sorted(set(listing.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{root / name}: class folder(s) {_names(unknown)} are not in {root / 'train'} "
            f"(its classes: {_names(classes)}); every {name} class must also be a train class"
        )
    position = {name: index for index, name in enumerate(classes)}
    index = [position[found] for found in listing.classes]
    split = Split(name, [index[label] for label in listing.labels], listing.paths, root=root)
    return split, listing.strays


def _csv(path: Path, val_fraction: float, seed: int, budget, limits: DataLimits) -> DataSource:
    rows = read_csv_rows(path, budget, limits)
    classes = tuple(sorted(rows.label_names))
    if len(classes) < 2:
        raise DataError(f"{path}: only {len(classes)} distinct label(s); a classifier needs two")
    # Label numbers in order of appearance -> indices into the sorted classes.
    position = {name: index for index, name in enumerate(classes)}
    renumber = [position[name] for name in rows.label_names]
    labels = [renumber[label] for label in rows.labels]
    paths = SamplePaths(path.parent, rows.names)
    if any(rows.splits):
        _check_csv_splits(path, rows, labels, classes)
        named = {rows.split_name(i) for i in range(len(labels))}
        splits = {
            name: _split(name, paths, labels, _rows_of(rows, name), path.parent)
            for name in SPLIT_NAMES
            if name in named
        }
        if "train" not in splits or "val" not in splits:
            raise DataError(f"{path}: the split column names no train or no val rows")
    else:
        train, val = stratified_split(labels, val_fraction, seed)
        splits = {
            "train": _split("train", paths, labels, train, path.parent),
            "val": _split("val", paths, labels, val, path.parent),
        }
    return DataSource(classes, splits, str(path), "csv", val_held_out=not any(rows.splits))


def _rows_of(rows: CsvRows, name: str) -> np.ndarray:
    code = SPLIT_NAMES.index(name) + 1
    return np.flatnonzero(np.frombuffer(bytes(rows.splits), dtype=np.uint8) == code)


def _check_csv_splits(path: Path, rows: CsvRows, labels: list[int], classes) -> None:
    """Every row names its split, and every class has training rows (as with folders)."""
    # A row without a split would otherwise belong to no split: silently dropped.
    unassigned = rows.splits.count(0)
    if unassigned:
        first = rows.splits.index(0) + 2
        raise DataError(
            f"{path}:{first}: empty split while other rows name one "
            f"({unassigned} such row(s)); give every row train, val or test, "
            "or leave the split column empty in every row to split automatically"
        )
    trained = {labels[i] for i in _rows_of(rows, "train").tolist()}
    missing = [c for i, c in enumerate(classes) if i not in trained]
    if missing:
        raise DataError(
            f"{path}: label(s) {_names(missing)} have no train rows; every val or test "
            "label must also be a train label"
        )


def _split(name: str, paths, labels: list[int], rows, root: Path) -> Split:
    rows = rows.tolist() if isinstance(rows, np.ndarray) else rows
    return Split(name, [labels[i] for i in rows], _select(paths, rows), root=root)


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
