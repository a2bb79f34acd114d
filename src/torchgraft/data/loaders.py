"""Batches of uint8 images and labels, in an order drawn from one generator.

Every loader — in-memory, streamed with worker processes, or the engine's cached features —
draws its sample order from :func:`batch_order` with the loader's own ``torch.Generator``. The
generator's state is saved in a run's resume state, so a resumed run sees the same batches as
an uninterrupted one; and the three loaders of one dataset yield the same batches.

Several processes (``torchrun``) split the data with a :class:`Shard`. Training keeps the
single-process *global* batches: every process draws the same permutation and takes an equal,
contiguous part of each global batch, so the averaged gradient of N processes is the gradient
of the one-process batch. Parts must be equal for that (DDP averages the processes'
gradients with equal weights), so the last global batch loses its remainder (at most N - 1
samples, different ones each epoch since the order is reshuffled) — or is left out when it
would give each process a single sample, which BatchNorm cannot train on (at most 2N - 1). Evaluation gives each
process a contiguous slice of the split: every sample exactly once, no padding duplicates.
(``torch.utils.data.DistributedSampler`` pads evaluation with repeated samples and deals
samples round-robin, which changes the batches and counts duplicates in the metrics.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .sources import Split

__all__ = ["MemoryLoader", "Shard", "StreamLoader", "batch_count", "batch_order", "shard_slice"]

Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """This process's share of the data: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1


WHOLE = Shard()


def batch_order(
    count: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    shard: Shard = WHOLE,
) -> list[torch.Tensor]:
    """Index batches over ``count`` samples; a permutation drawn from ``generator`` if shuffled.

    One process: the last batch may be smaller (nothing is dropped: every sample is seen once
    per epoch). With a :class:`Shard` of several (see the module docstring): shuffled, this
    process's equal part of every global batch of ``batch_size`` (which ``world`` divides);
    not shuffled, batches of ``batch_size`` over this process's contiguous slice.
    """
    if shard.world == 1:
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
        return [part for part in order.split(batch_size) if len(part)]  # none for no samples
    if not shuffle:
        start, stop = _slice(count, shard)
        return [part for part in torch.arange(start, stop).split(batch_size) if len(part)]
    order = torch.randperm(count, generator=generator)
    smallest = _smallest_part(batch_size, shard)
    parts = []
    for batch in order.split(batch_size):
        part = len(batch) // shard.world
        if part >= smallest:
            parts.append(batch[shard.rank * part : (shard.rank + 1) * part])
    return parts


def batch_count(count: int, batch_size: int, *, shuffle: bool = True, shard: Shard = WHOLE) -> int:
    """How many batches :func:`batch_order` gives this process (the same for every draw)."""
    if shard.world == 1:
        return -(-count // batch_size)
    if not shuffle:
        start, stop = _slice(count, shard)
        return -(-(stop - start) // batch_size)
    full, rest = divmod(count, batch_size)
    return full + (rest // shard.world >= _smallest_part(batch_size, shard))


def _smallest_part(batch_size: int, shard: Shard) -> int:
    """The smallest part of the last batch worth training: two samples (BatchNorm cannot
    train on one: its batch statistics need two values per channel), unless the configured
    parts are single samples anyway."""
    return min(2, max(1, batch_size // shard.world))


def shard_slice(count: int, shard: Shard) -> tuple[int, int]:
    """``(start, stop)``: this process's contiguous share of ``count`` samples (evaluation)."""
    return count * shard.rank // shard.world, count * (shard.rank + 1) // shard.world


_slice = shard_slice


class MemoryLoader:
    """Batches from images decoded once and kept as one uint8 tensor (N, C, H, W).

    Args:
        images: the base images (see :mod:`.transforms`).
        labels: int64 labels (N,).
        batch_size: samples per batch.
        shuffle: draw a new order each epoch from ``generator``.
        generator: the data-order generator (its state is saved for resume).
        augment: applied to each image of a training batch (uses torch's global generator).
        shard: this process's share when several train together (see :func:`batch_order`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        shard: Shard = WHOLE,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator, self.augment, self.shard = generator, augment, shard

    def __len__(self) -> int:
        return batch_count(
            len(self.labels), self.batch_size, shuffle=self.shuffle, shard=self.shard
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in batch_order(
            len(self.labels),
            self.batch_size,
            shuffle=self.shuffle,
            generator=self.generator,
            shard=self.shard,
        ):
            images = self.images[index]
            if self.augment is not None:
                images = torch.stack([self.augment(image) for image in images])
            yield images, self.labels[index]


class _StreamDataset(TorchDataset):
    """Decodes one file per item: base transform, then the augmentation."""

    def __init__(self, split: Split, channels: int, base, augment: Augment | None):
        self.split, self.channels, self.base, self.augment = split, channels, base, augment

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.base(self.split.image(index, self.channels))
        if self.augment is not None:
            image = self.augment(image)
        return image, self.split.labels[index]


class _FixedBatches:
    """A batch sampler that replays :func:`batch_order` (so streaming keeps the same order)."""

    def __init__(self, loader: StreamLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[int]]:
        loader = self.loader
        for index in batch_order(
            len(loader.split),
            loader.batch_size,
            shuffle=loader.shuffle,
            generator=loader.generator,
            shard=loader.shard,
        ):
            yield index.tolist()


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; random and numpy follow it, so
    # augmentations in workers are reproducible too.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class StreamLoader:
    """Batches decoded from files by ``workers`` processes (for data too big for memory).

    Same order and same pixels as :class:`MemoryLoader` would give; a file that fails to
    decode inside a worker raises a DataError naming it.
    """

    def __init__(
        self,
        split: Split,
        channels: int,
        base,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        workers: int = 0,
        shard: Shard = WHOLE,
    ):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.generator, self.shard = generator, shard
        self.dataset = _StreamDataset(split, channels, base, augment)
        self.workers = workers

    def __len__(self) -> int:
        return batch_count(len(self.split), self.batch_size, shuffle=self.shuffle, shard=self.shard)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # No generator here: torch draws the workers' base seed from its global generator
        # (saved with the run), leaving the data-order generator's draws to the order alone.
        loader = DataLoader(
            self.dataset,
            batch_sampler=_FixedBatches(self),
            num_workers=self.workers,
            worker_init_fn=_seed_worker if self.workers else None,
            persistent_workers=False,
        )
        for images, labels in loader:
            yield images, labels.to(torch.int64)
