"""Make a dataset ready to train on: decode (or scan) every sample once, deal with bad files,
and hand out loaders.

Small datasets are decoded once, through the base transform, into one uint8 tensor per split
(``in_memory``), so the data path is never the bottleneck of a CPU run; the decode doubles as
the scan for bad files. Larger ones are scanned (every file fully decoded once, in threads)
and then streamed by worker processes. A bad file — unreadable, truncated, not an image —
stops the run with the list of them (``on_bad_image="stop"``), or is left out and listed
(``"skip"``); it is never silently accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from ..model.spec import Preprocessing
from ..wording import option
from .images import UnreadableImageError
from .loaders import WHOLE, MemoryLoader, Shard, StreamLoader
from .scan import BadImage, describe_bad, scan_images
from .sources import DataSource, Split
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
    memory_limit_mb: int = 1024,
    on_bad_image: str = "stop",
    workers: int = 0,
    skip_hint: str | None = None,
) -> PreparedData:
    """Decode or scan every sample; stop on bad files or leave them out, as asked.

    Args:
        source: the dataset.
        preprocessing: the run's preprocessing (its ``input_size`` gives channels and size).
        in_memory: keep decoded splits in memory: True, False, or ``"auto"`` (when the uint8
            tensors take at most ``memory_limit_mb``).
        memory_limit_mb: see ``in_memory``.
        on_bad_image: ``"stop"`` (raise with the list) or ``"skip"``.
        workers: threads for decoding and scanning; processes for streaming.
        skip_hint: how the caller's user asks for ``"skip"`` (named in the error); default:
            ``on_bad_image`` as :func:`torchgraft.wording.option` spells it for the caller.

    Raises:
        DataError: bad files with ``"stop"``; a split or class left empty after skipping.
    """
    channels, height, width = preprocessing.input_size
    total = sum(len(s) for s in source.splits.values()) * channels * height * width
    keep = total <= memory_limit_mb * 2**20 if in_memory == "auto" else bool(in_memory)
    base = base_transform(preprocessing)
    images: dict[str, torch.Tensor] = {}
    bad: dict[str, list[tuple[int, BadImage]]] = {}
    for name, split in source.splits.items():
        if keep:
            images[name], bad[name] = _decode(split, channels, base, workers)
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


def _decode(split: Split, channels: int, base, workers: int):
    """The split's base images as one uint8 tensor, and the samples that failed."""

    def one(index: int):
        try:
            return base(split.image(index, channels)), None
        except UnreadableImageError as exc:
            return None, BadImage(split.paths[index], exc.reason)
        except DataError as exc:
            return None, BadImage(split.paths[index], str(exc))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, range(len(split))))
    failed = [(i, bad) for i, (_, bad) in enumerate(results) if bad is not None]
    decoded = [image for image, _ in results if image is not None]
    if not decoded:
        return torch.empty(0, dtype=torch.uint8), failed
    return torch.stack(decoded), failed


def _scan(split: Split, channels: int, workers: int) -> list[tuple[int, BadImage]]:
    if split.paths is None:
        return []
    found = {
        item.path: item for item in scan_images(split.paths, channels, workers=max(1, workers))
    }
    # Every position of a bad file (a CSV may list one twice), so skipping drops them all.
    return [(i, found[path]) for i, path in enumerate(split.paths) if path in found]


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
    pruned = DataSource(source.classes, splits, source.origin, source.layout)
    return pruned, images
