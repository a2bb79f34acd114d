"""How several processes share the data (torchgraft.data.loaders.batch_order with a Shard):
training keeps the one-process global batches, split in equal parts; evaluation gives each
process a slice, every sample exactly once."""

from __future__ import annotations

import pytest
import torch

from torchgraft.data.loaders import MemoryLoader, Shard, batch_count, batch_order


def shares(count, batch, world, *, shuffle, seed=0):
    """Each rank's batches, every rank drawing from its own generator with the same seed
    (as the processes of a run do)."""
    return [
        batch_order(
            count,
            batch,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed),
            shard=Shard(rank, world),
        )
        for rank in range(world)
    ]


@pytest.mark.parametrize(
    ("count", "batch", "world"),
    [(30, 8, 2), (37, 12, 4), (36, 6, 3), (9, 4, 4), (5, 8, 2), (18, 8, 2), (6, 2, 2)],
)
def test_training_parts_rebuild_the_one_process_batches(count, batch, world):
    alone = batch_order(count, batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    ranks = shares(count, batch, world, shuffle=True)
    steps = {len(r) for r in ranks}
    assert steps == {batch_count(count, batch, shard=Shard(0, world))}  # same steps everywhere
    for step, together in enumerate(zip(*ranks, strict=True)):
        sizes = {len(part) for part in together}
        assert len(sizes) == 1, "parts of one step must be equal (DDP averages them)"
        joined = torch.cat(together)
        # the global batch of one process, in order, less at most world - 1 samples
        assert torch.equal(joined, alone[step][: len(joined)])
        assert len(alone[step]) - len(joined) < 2 * world
        assert len(together[0]) >= min(2, batch // world)  # never a lone sample (BatchNorm)
    seen = torch.cat([torch.cat(r) for r in ranks if r]) if any(ranks) else torch.tensor([])
    assert len(set(seen.tolist())) == len(seen)  # nobody sees a sample twice in an epoch
    assert count - len(seen) < 2 * world  # only the last batch's remainder is left out


def test_each_epoch_draws_a_new_order_on_every_process():
    generators = [torch.Generator().manual_seed(7) for _ in range(2)]
    epochs = [
        [
            batch_order(30, 8, shuffle=True, generator=g, shard=Shard(r, 2))
            for r, g in enumerate(generators)
        ]
        for _ in range(3)
    ]
    firsts = [torch.cat(epoch[0]).tolist() for epoch in epochs]
    assert firsts[0] != firsts[1] != firsts[2]
    for epoch in epochs:  # the processes still agree on the global order within an epoch
        assert not set(torch.cat(epoch[0]).tolist()) & set(torch.cat(epoch[1]).tolist())


@pytest.mark.parametrize(("count", "world"), [(6, 2), (7, 2), (37, 4), (3, 4), (0, 2)])
def test_evaluation_counts_every_sample_exactly_once(count, world):
    ranks = shares(count, 4, world, shuffle=False)
    seen = [int(i) for r in ranks for b in r for i in b]
    assert sorted(seen) == list(range(count))  # no padding duplicates, nothing missing
    for rank, r in enumerate(ranks):
        loader = MemoryLoader(
            torch.zeros(count, 1, 2, 2, dtype=torch.uint8),
            torch.arange(count),
            4,
            shard=Shard(rank, world),
        )
        assert len(loader) == len(r) == len(list(loader))


def test_one_process_order_is_unchanged_by_the_shard_code():
    whole = batch_order(30, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    reference = torch.randperm(30, generator=torch.Generator().manual_seed(3)).split(8)
    assert all(torch.equal(a, b) for a, b in zip(whole, reference, strict=True))
