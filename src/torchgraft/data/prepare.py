"""Make a dataset ready to train on: decode (or scan) every sample once, deal with bad files,
and hand out loaders.

Small datasets are decoded once, through the base transform, into one uint8 tensor per split
(``in_memory``), so the data path is never the bottleneck of a CPU run; the decode doubles as
the scan for bad files. Larger ones are scanned (every file fully decoded once, in threads)
and then streamed by worker processes. A bad file — unreadable, truncated, not an image —
stops the run with the list of them (``on_bad_image="stop"``), or is left out and listed
(``"skip"``); it is never silently accepted.

Memory is decided before it is spent. ``in_memory="auto"`` keeps the pixels in memory when
what the data keeps *per sample* — its decoded pixels (C x H x W bytes) and its index entry
(path and label: :func:`~.limits.index_bytes`) — times the number of samples fits in
``memory_limit_mb``; an index that alone exceeds it was refused while it was listed
(:func:`~.sources.discover`).
Decoding writes each image into one tensor allocated up front (no list of a million small
tensors, no second copy from ``torch.stack``), a file listed many times is decoded once, and
at most a few thousand decodes are queued at a time.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..model.spec import Preprocessing
from ..wording import option
from .batch_size import largest_batch
from .images import UnreadableImageError
from .limits import DEFAULT_MEMORY_LIMIT_MB, index_bytes
from .loaders import WHOLE, MemoryLoader, Shard, StreamLoader, shard_slice
from .sample_paths import locations_of, names_of
from .scan import BadImage, describe_bad, find_bad
from .sources import DataSource, Split
from .threads import map_in_threads
from .transforms import base_transform

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    """Splits ready to load.

    Attributes:
        source: the dataset (bad files already removed when skipped).
        preprocessing: what every image went through (size, crop, mean, std).
        channels: 1 or 3.
        images: per split, the decoded uint8 tensor (N, C, H, W) when kept in memory.
        bad: the bad files found (empty unless skipped).
    """

    source: DataSource
    preprocessing: Preprocessing
    channels: int
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    bad: list[BadImage] = field(default_factory=list)
    workers: int = 0

    @property
    def in_memory(self) -> bool:
        return bool(self.images)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.source.splits[split].labels, dtype=torch.int64)

    def largest_batch(self, split: str, requested: int, shard: Shard = WHOLE) -> int:
        """The largest batch :meth:`loader` gives this process for ``requested`` without
        shuffling (evaluation, the feature cache): never more than its share of the split.
        What a consumer that pads batches must pad to (see :mod:`.batch_size`)."""
        count = len(self.source.splits[split])
        start, stop = shard_slice(count, shard)
        return largest_batch(requested, stop - start)

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shard: Shard = WHOLE,
    ) -> MemoryLoader | StreamLoader:
        """Batches of one split (uint8 images, int64 labels); with a :class:`Shard`, this
        process's share (see :func:`~torchgraft.data.loaders.batch_order`)."""
        if self.in_memory:
            return MemoryLoader(
                self.images[split],
                self.labels(split),
                batch_size,
                shuffle=shuffle,
                generator=generator,
                augment=augment,
                shard=shard,
            )
        return StreamLoader(
            self.source.splits[split],
            self.channels,
            base_transform(self.preprocessing),
            batch_size,
            shuffle=shuffle,
            generator=generator,
            augment=augment,
            workers=self.workers,
            shard=shard,
        )


def prepare_data(
    source: DataSource,
    preprocessing: Preprocessing,
    *,
    in_memory: bool | str = "auto",
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    on_bad_image: str = "stop",
    workers: int = 0,
    skip_hint: str | None = None,
) -> PreparedData:
    """Decode or scan every sample; stop on bad files or leave them out, as asked.

    Args:
        source: the dataset.
        preprocessing: the run's preprocessing (its ``input_size`` gives channels and size).
        in_memory: keep decoded splits in memory: True, False, or ``"auto"`` (when the uint8
            tensors and the index take at most ``memory_limit_mb``; see the module docstring).
        memory_limit_mb: the data's memory budget in MiB.
        on_bad_image: ``"stop"`` (raise with the list) or ``"skip"``.
        workers: threads for decoding and scanning; processes for streaming.
        skip_hint: how the caller's user asks for ``"skip"`` (named in the error); default:
            ``on_bad_image`` as :func:`torchgraft.wording.option` spells it for the caller.

    Raises:
        DataError: bad files with ``"stop"``; a split or class left empty after skipping;
            ``in_memory=True`` with more pixels than memory can hold.
    """
    channels = preprocessing.input_size[0]
    keep = _keep_in_memory(in_memory, source, preprocessing.input_size, memory_limit_mb)
    base = base_transform(preprocessing)
    images: dict[str, torch.Tensor] = {}
    bad: dict[str, list[tuple[int, BadImage]]] = {}
    for name, split in source.splits.items():
        if keep:
            images[name], bad[name] = _decode(split, preprocessing.input_size, base, workers)
        else:
            bad[name] = _scan(split, channels, workers)
    # One entry per file, however many times the splits list it.
    found = list({item.path: item for rows in bad.values() for _, item in rows}.values())
    if found and on_bad_image == "stop":
        raise DataError(
            describe_bad(sorted(found, key=lambda b: str(b.path)))
            + "\nFix or remove them, or run again with "
            + f"{skip_hint or option('on_bad_image', 'skip')} to leave them out."
        )
    if found:
        source, images = _without_bad(source, images, bad)
    return PreparedData(source, preprocessing, channels, images, found, workers)


def _keep_in_memory(in_memory, source: DataSource, size, memory_limit_mb: int) -> bool:
    """``in_memory`` as asked, or (``"auto"``) whether pixels and index fit the budget."""
    if in_memory != "auto":
        return bool(in_memory)
    count = sum(len(split) for split in source.splits.values())
    names = sum(sum(map(len, names_of(s.paths))) for s in source.splits.values() if s.paths)
    return count * int(np.prod(size)) + index_bytes(count, names) <= memory_limit_mb * 2**20


def _decode(split: Split, size, base, workers: int):
    """The split's base images as one uint8 tensor, and the samples that failed (each
    position of a bad file)."""
    images = _allocate(split, size)
    unique, copies = _unique_rows(split)
    failed: dict[int, BadImage] = {}

    def one(index: int) -> BadImage | None:
        try:
            images[index] = base(split.image(index, size[0]))
        except UnreadableImageError as exc:
            return BadImage(split.paths[index], exc.reason)
        except DataError as exc:
            return BadImage(split.paths[index], str(exc))
        return None

    for index, bad in map_in_threads(one, unique, workers, name="decode"):
        if bad is not None:
            failed[index] = bad
    _fill_copies(images, copies, failed)
    rows = sorted(failed.items())
    return _compact(images, [i for i, _ in rows]), rows


_COPY_BYTES = 16 << 20  # pixels copied at a time (the temporary of a gather)


def _chunk_rows(images: torch.Tensor) -> int:
    """Rows per copy, so that one gather's temporary stays near :data:`_COPY_BYTES`."""
    return max(1, _COPY_BYTES // max(1, images[0].numel() if len(images) else 1))


def _allocate(split: Split, size) -> torch.Tensor:
    try:
        return torch.empty((len(split), *size), dtype=torch.uint8)
    except (RuntimeError, MemoryError) as exc:  # torch's allocator says RuntimeError
        need = len(split) * int(np.prod(size)) / 2**20
        raise DataError(
            f"the {split.name} split: cannot keep its {len(split):,} images in memory "
            f"({need:,.0f} MiB as uint8; {type(exc).__name__}); stream them with "
            f"{option('in_memory', False)} or lower the image size"
        ) from None


def _unique_rows(split: Split) -> tuple[array, tuple[np.ndarray, np.ndarray]]:
    """Rows to decode (the first of each file) and the (copy, source) rows of repeats, as
    8-byte integers (a list of a million Python ints would take 36 MB)."""
    if split.paths is None:
        return array("q", range(len(split))), (np.empty(0, np.int64), np.empty(0, np.int64))
    first: dict[str, int] = {}
    unique, targets, sources = array("q"), array("q"), array("q")
    for row, key in enumerate(names_of(split.paths)):
        source = first.setdefault(key, row)
        if source == row:
            unique.append(row)
        else:
            targets.append(row)
            sources.append(source)
    return unique, (np.frombuffer(targets, np.int64), np.frombuffer(sources, np.int64))


def _fill_copies(images: torch.Tensor, copies, failed: dict[int, BadImage]) -> None:
    """Copy each repeated file's pixels from its first row; a bad file is bad everywhere."""
    targets, sources = copies
    step = _chunk_rows(images)
    for start in range(0, len(targets), step):
        to = torch.from_numpy(targets[start : start + step].copy())
        images[to] = images[torch.from_numpy(sources[start : start + step].copy())]
    if failed:
        for target in np.flatnonzero(np.isin(sources, list(failed))).tolist():
            failed[int(targets[target])] = failed[int(sources[target])]


def _compact(images: torch.Tensor, drop: list[int]) -> torch.Tensor:
    """``images`` less the rows ``drop``, moved down in place (no second full tensor)."""
    if not drop:
        return images
    keep = np.setdiff1d(np.arange(len(images)), np.asarray(drop, np.int64))
    step = _chunk_rows(images)
    # Each chunk reads rows at or after the ones it writes: moving down in order is safe.
    for start in range(0, len(keep), step):
        rows = torch.from_numpy(keep[start : start + step])
        images[start : start + len(rows)] = images[rows]
    return images[: len(keep)]


def _scan(split: Split, channels: int, workers: int) -> list[tuple[int, BadImage]]:
    if split.paths is None:
        return []
    found = find_bad(locations_of(split.paths), channels, workers=max(1, workers))
    if not found:
        return []
    # Every position of a bad file (a CSV may list one twice), so skipping drops them all;
    # one BadImage per file, shared by its positions.
    items = {location: BadImage(Path(location), reason) for location, reason in found.items()}
    rows = enumerate(locations_of(split.paths))
    return [(i, items[location]) for i, location in rows if location in items]


def _without_bad(source: DataSource, images, bad) -> tuple[DataSource, dict[str, torch.Tensor]]:
    splits = {}
    for name, split in source.splits.items():
        drop = [i for i, _ in bad.get(name, [])]
        splits[name] = split.without(drop) if drop else split
        if len(splits[name]) == 0:
            raise DataError(f"the {name} split has no readable image left after skipping bad files")
    train_classes = set(splits["train"].labels) if "train" in splits else None
    empty = [
        c
        for i, c in enumerate(source.classes)
        if train_classes is not None and i not in train_classes
    ]
    if empty:
        raise DataError(
            f"class(es) {empty} have no readable training image left after skipping bad files"
        )
    # Everything else stays as discovered (how val was made, the stray files named).
    return dataclasses.replace(source, splits=splits), images
