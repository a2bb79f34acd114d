"""What a dataset is, before any pixel is decoded: classes, splits, and where each sample is.

:func:`discover` turns ``data.source`` into a :class:`DataSource`:

* ``digits`` — the bundled UCI digits (:mod:`.digits`), split stratified;
* a folder with ``train/`` and ``val/`` (and optionally ``test/``), each holding one
  subfolder per class (``val/`` missing: split from ``train/``);
* a folder of class subfolders, split stratified;
* a ``.csv`` file with a header ``path,label`` (and optionally ``split`` with values
  ``train``/``val``/``test``); paths are relative to the CSV's folder.

Class names are the folder names or CSV labels, sorted. Hidden files and folders (``.git``,
``.DS_Store``) are ignored; any other file that is not an image is kept in the split so the
scan reports it by path (a stray file is never silently skipped). The split is stratified:
each class gives ``round(n * val_fraction)`` of its images to ``val`` (at least one when it
has two or more), chosen with ``split_seed``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .digits import DIGIT_CLASSES, load_digits
from .images import load_image

__all__ = ["DataSource", "Split", "class_folders", "discover", "stratified_split"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """One split: each sample's label and where its pixels are (a file, or an array row)."""

    name: str
    labels: list[int]
    paths: list[Path] | None = None
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
            [self.paths[i] for i in keep] if self.paths is not None else None,
            self.arrays[keep] if self.arrays is not None else None,
            self.root,
        )

    def signature(self) -> list:
        """What identifies the split's content cheaply: (relative path, label, size) rows."""
        if self.arrays is not None:
            digest = hashlib.sha256(self.arrays.tobytes()).hexdigest()
            return [digest, self.labels]
        rows = []
        for path, label in zip(self.paths, self.labels, strict=True):
            shown = path.relative_to(self.root) if self.root else path
            size = path.stat().st_size if path.exists() else -1
            rows.append([shown.as_posix(), label, size])
        return rows


@dataclass
class DataSource:
    """Classes and splits of one dataset.

    Attributes:
        classes: class names, sorted; a label is an index into it.
        splits: ``train`` and ``val`` always, ``test`` when the data has one.
        origin: ``digits`` or the folder/CSV given.
        layout: ``digits``, ``split-folders``, ``class-folders`` or ``csv``.
    """

    classes: tuple[str, ...]
    splits: dict[str, Split] = field(default_factory=dict)
    origin: str = ""
    layout: str = ""

    def fingerprint(self) -> str:
        """sha256 of classes and every split's samples (resume refuses other data)."""
        document = {
            "classes": list(self.classes),
            "splits": {name: split.signature() for name, split in self.splits.items()},
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()

    def summary(self) -> str:
        sizes = " / ".join(f"{len(s):,} {name}" for name, s in self.splits.items())
        return f"{self.origin}: {sizes} images, {len(self.classes)} classes"


def discover(source: str, *, val_fraction: float = 0.2, split_seed: int = 0) -> DataSource:
    """The dataset ``source`` names (see the module docstring).

    Raises:
        DataError: no such path, no class folders, an empty class, a single class, a
            validation class the training data lacks, a CSV without its header, or a CSV
            whose split column is empty in some rows only.
    """
    if source == "digits":
        return _digits(val_fraction, split_seed)
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv(path, val_fraction, split_seed)
    if path.is_dir():
        if (path / "train").is_dir():
            return _split_folders(path, val_fraction, split_seed)
        return _class_folders(path, val_fraction, split_seed)
    if path.exists():
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
    return DataSource(DIGIT_CLASSES, splits, "digits", "digits")


def _class_folders(root: Path, val_fraction: float, seed: int) -> DataSource:
    classes, samples = class_folders(root)
    labels = [label for _, label in samples]
    train, val = stratified_split(labels, val_fraction, seed)
    splits = {
        name: _split(name, samples, rows, root) for name, rows in (("train", train), ("val", val))
    }
    return DataSource(classes, splits, str(root), "class-folders")


def _split_folders(root: Path, val_fraction: float, seed: int) -> DataSource:
    classes, train_samples = class_folders(root / "train")
    splits = {}
    if (root / "val").is_dir():
        splits["train"] = _split("train", train_samples, range(len(train_samples)), root)
        splits["val"] = _other_split(root, "val", classes)
    else:
        labels = [label for _, label in train_samples]
        train, val = stratified_split(labels, val_fraction, seed)
        splits["train"] = _split("train", train_samples, train, root)
        splits["val"] = _split("val", train_samples, val, root)
    if (root / "test").is_dir():
        splits["test"] = _other_split(root, "test", classes)
    return DataSource(classes, splits, str(root), "split-folders")


def _other_split(root: Path, name: str, classes: tuple[str, ...]) -> Split:
    found, samples = class_folders(root / name, allow_single=True)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{root / name}: class folder(s) {_names(unknown)} are not in {root / 'train'} "
            f"(its classes: {_names(classes)}); every {name} class must also be a train class"
        )
    index = {c: i for i, c in enumerate(classes)}
    return Split(
        name, [index[found[label]] for _, label in samples], [p for p, _ in samples], root=root
    )


def class_folders(folder: Path, allow_single: bool = False):
    """``(classes, [(path, label)])`` from the class subfolders of ``folder``.

    Raises:
        DataError: no class folders, an empty one, or (unless ``allow_single``) only one.
    """
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))
    if not subfolders:
        loose = [p.name for p in folder.iterdir() if p.is_file() and not _hidden(p)][:3]
        hint = f" (found files such as {_names(loose)})" if loose else ""
        raise DataError(
            f"{folder}: no class folders{hint}; put each class's images in a subfolder "
            "named after the class (cat/, dog/, …)"
        )
    classes = tuple(p.name for p in subfolders)
    samples = []
    for label, sub in enumerate(subfolders):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not _hidden_below(p, sub))
        if not files:
            raise DataError(f"{sub}: the class folder '{sub.name}' holds no images")
        samples += [(path, label) for path in files]
    if len(classes) < 2 and not allow_single:
        raise DataError(
            f"{folder}: only one class ('{classes[0]}'); a classifier needs at least two "
            "class folders"
        )
    return classes, samples


def _csv(path: Path, val_fraction: float, seed: int) -> DataSource:
    rows = _read_csv(path)
    classes = tuple(sorted({label for _, label, _ in rows}))
    if len(classes) < 2:
        raise DataError(f"{path}: only {len(classes)} distinct label(s); a classifier needs two")
    index = {c: i for i, c in enumerate(classes)}
    samples = [(path.parent / file, index[label]) for file, label, _ in rows]
    named = {split for _, _, split in rows if split}
    if named:
        splits = {
            name: _split(
                name, samples, [i for i, r in enumerate(rows) if r[2] == name], path.parent
            )
            for name in SPLIT_NAMES
            if name in named
        }
        if "train" not in splits or "val" not in splits:
            raise DataError(f"{path}: the split column names no train or no val rows")
        _check_csv_splits(path, rows, classes)
    else:
        train, val = stratified_split([label for _, label in samples], val_fraction, seed)
        splits = {
            "train": _split("train", samples, train, path.parent),
            "val": _split("val", samples, val, path.parent),
        }
    return DataSource(classes, splits, str(path), "csv")


def _check_csv_splits(path: Path, rows, classes: tuple[str, ...]) -> None:
    """Every row names its split, and every class has training rows (as with folders)."""
    # A row without a split would otherwise belong to no split: silently dropped.
    unassigned = [line for line, (_, _, split) in enumerate(rows, start=2) if not split]
    if unassigned:
        raise DataError(
            f"{path}:{unassigned[0]}: empty split while other rows name one "
            f"({len(unassigned)} such row(s)); give every row train, val or test, "
            "or leave the split column empty in every row to split automatically"
        )
    trained = {label for _, label, split in rows if split == "train"}
    missing = [c for c in classes if c not in trained]
    if missing:
        raise DataError(
            f"{path}: label(s) {_names(missing)} have no train rows; every val or test "
            "label must also be a train label"
        )


def _read_csv(path: Path) -> list[tuple[str, str, str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "path" not in fields or "label" not in fields:
                raise DataError(
                    f"{path}: the first line must be a header naming the columns path,label "
                    f"(and optionally split); found {reader.fieldnames}"
                )
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
                if not row.get("path") or not row.get("label"):
                    raise DataError(f"{path}:{line}: empty path or label")
                split = row.get("split") or None
                if split is not None and split not in SPLIT_NAMES:
                    raise DataError(
                        f"{path}:{line}: split must be train, val or test, got {split!r}"
                    )
                rows.append((row["path"], row["label"], split))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: the CSV lists no images")
    return rows


def _split(name: str, samples, rows, root: Path) -> Split:
    chosen = [samples[i] for i in rows]
    return Split(name, [label for _, label in chosen], [p for p, _ in chosen], root=root)


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _hidden_below(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
