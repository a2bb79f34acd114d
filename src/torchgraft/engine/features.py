"""The feature cache of a linear probe: run the frozen body once, then train the head alone.

When only the head trains, the body computes the same features for an image every epoch —
provided nothing random happens before the head: no augmentation, no mixup, no dropout or
drop-path in the frozen part, and frozen normalisation layers whose statistics are fixed.
Then the body runs once per image (inference mode, batched, channels-last; on a CPU traced
and frozen when that is exact, see :mod:`.frozen_body`) and each
epoch trains the head on the stored features, in the same batch order the full model would
have seen (:func:`~torchgraft.data.loaders.batch_order` with the same generator).

*Where* the features are taken is the *head entry*: the head module itself, or the smallest
container holding it and nothing else but parameter-free layers (torchvision's
``classifier = Sequential(Dropout, Linear)``), so the dropout there still runs while the
head trains. timm models apply ``drop_rate`` dropout just before their classifier, inside
``forward_head``; that one is applied to the cached features with the same probability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loaders import WHOLE, Shard, batch_order, shard_slice
from ..data.prepare import PreparedData
from ..data.transforms import Normalizer
from ..model.layer_groups import under
from ..model.passes import evaluating
from ..model.spec import ModelSpec
from ..policies.freezing import has_running_stats, pinned_norms
from .distributed import ALONE, Processes
from .frozen_body import FeatureExtractor
from .runtime import Runtime

__all__ = ["FeatureCache", "HeadEntry", "cache_refusal", "find_head_entry", "trace_allowed"]

_PASSIVE = (nn.Dropout, nn.Identity, nn.Flatten, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh)


@dataclass(frozen=True)
class HeadEntry:
    """Where cached features enter the head.

    Attributes:
        path: the module whose input is cached and which is run on the cached features.
        dropout: dropout applied to the cached features in training (timm's ``drop_rate``).
    """

    path: str
    dropout: float = 0.0


def find_head_entry(model: nn.Module, spec: ModelSpec) -> HeadEntry:
    """The head entry of ``model`` (see the module docstring)."""
    path = spec.head_path
    while "." in path:
        parent_path = path.rpartition(".")[0]
        parent = model.get_submodule(parent_path)
        others = [m for name, m in parent.named_children() if f"{parent_path}.{name}" != path]
        if not all(isinstance(m, _PASSIVE) for m in others):
            break
        path = parent_path
    timm_dropout = 0.0
    if spec.library == "timm" and path == spec.head_path:
        timm_dropout = float(getattr(model, "drop_rate", 0.0) or 0.0)
    return HeadEntry(path, timm_dropout)


def cache_refusal(
    model: nn.Module, spec: ModelSpec, entry: HeadEntry, *, deterministic_input: bool
) -> str | None:
    """Why the features cannot be cached now (None: they can)."""
    if not deterministic_input:
        return "the training input is random (augmentation or mixup)"
    if len(spec.head_paths) > 1:
        return "the model has auxiliary heads"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return "nothing trains"
    outside = [n for n in trainable if not under(n, (entry.path,))]
    if outside:
        return f"more than the head trains ({outside[0]}, …)"
    pinned = set(pinned_norms(model))
    for path, module in model.named_modules():
        if under(path, (entry.path,)) or path == entry.path:
            continue
        if has_running_stats(module) and path not in pinned:
            return f"the statistics of {path} are not fixed (freeze.bn)"
        if _is_random(module):
            return f"{path} is random in training ({type(module).__name__})"
    return None


def trace_allowed(runtime: Runtime) -> tuple[bool, str | None]:
    """Whether the frozen body may be traced for the cache, and why not: TorchScript pays off
    on a CPU (Python overhead, BatchNorm folding; on a GPU the eager pass is already fast),
    and only in fp32 (a traced bf16 body differs from eager beyond the tolerance)."""
    if runtime.device.type != "cpu":
        return False, "on a GPU the eager pass is fast already"
    if runtime.precision != "fp32":
        return False, f"a traced {runtime.precision} body differs from the eager one"
    return True, None


def _is_random(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    drop = getattr(module, "drop_prob", None)  # timm's DropPath
    return isinstance(drop, float) and drop > 0


class FeatureCache:
    """Features of the train and val splits at the head entry, computed once.

    With several processes each computes the features of its slice of every split and all
    of them gather the whole (every process then holds every feature, in the split's order).

    ``on_step(done, total)``, when given, is called once before the pass and after every
    batch with the images this process has run through the body and its share of them all
    (train and val together): what :meth:`~torchgraft.engine.console.RunConsole.task` shows.
    """

    def __init__(
        self,
        model: nn.Module,
        entry: HeadEntry,
        data: PreparedData,
        runtime: Runtime,
        *,
        batch_size: int,
        splits: tuple[str, ...] = ("train", "val"),
        processes: Processes = ALONE,
        on_step: Callable[[int, int], None] | None = None,
    ):
        self.entry = entry
        self.head = model.get_submodule(entry.path)
        total = sum(len(data.source.splits[name]) for name in splits)
        trace, why_not = trace_allowed(runtime)
        extractor = FeatureExtractor(model, entry.path, trace=trace, total=total)
        if why_not:
            extractor.note = f"eager ({why_not})"
        shard = Shard(processes.rank, processes.world)
        counter = _Counter(on_step, _share(data, splits, shard))
        self.features = {
            name: processes.concatenate(
                self._compute(extractor, model, data, runtime, name, batch_size, shard, counter)
            )
            for name in splits
        }
        self.labels = {name: data.labels(name).to(runtime.device) for name in splits}
        self.note = extractor.note

    @staticmethod
    def _compute(
        extractor, model, data: PreparedData, runtime: Runtime, split, batch_size, shard, counter
    ):
        normalizer = Normalizer(data.preprocessing, runtime.device, runtime.memory_format)
        # Pad to the largest batch the loader really gives, never to a configured size larger
        # than the split (data.batch_size 100000 padded 1,438 images to 200,000: 22 GB).
        batch_size = data.largest_batch(split, batch_size, shard)
        chunks = []
        with evaluating(model, grad="inference"), runtime.autocast():
            for images, _ in data.loader(split, batch_size, shard=shard):
                chunks.append(_padded(extractor, normalizer(images), batch_size))
                counter.add(len(images))
        # inference tensors cannot enter autograd; a clone outside inference mode can.
        return torch.cat(chunks).float().clone()

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        shard: Shard = WHOLE,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Feature batches in the order the image loader would give for the same generator
        (and this process's share of them)."""
        features, labels = self.features[split], self.labels[split]
        for index in batch_order(
            len(labels), batch_size, shuffle=shuffle, generator=generator, shard=shard
        ):
            index = index.to(features.device)
            yield features[index], labels[index]

    def logits(self, features: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """The head (or ``head``, its DistributedDataParallel replica) on cached features,
        with timm's dropout when training."""
        if self.entry.dropout and self.head.training:
            features = F.dropout(features, p=self.entry.dropout, training=True)
        return (head if head is not None else self.head)(features)


class _Counter:
    """Images through the body so far, reported to ``on_step`` (first at 0, before any)."""

    def __init__(self, on_step: Callable[[int, int], None] | None, total: int):
        self.on_step, self.done, self.total = on_step, 0, total
        self.add(0)

    def add(self, images: int) -> None:
        self.done += images
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _share(data: PreparedData, splits: tuple[str, ...], shard: Shard) -> int:
    """The images of ``splits`` this process runs through the body."""
    total = 0
    for name in splits:
        start, stop = shard_slice(len(data.source.splits[name]), shard)
        total += stop - start
    return total


def _padded(extractor, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Features of a batch padded to ``batch_size`` (the last image repeated): one input
    shape for the whole pass, so a traced extractor is checked once and used throughout."""
    count = len(images)
    if count == batch_size:
        return extractor(images)
    filler = images[-1:].expand(batch_size - count, *images.shape[1:])
    padded = torch.cat([images, filler]).contiguous(memory_format=_format(images))
    return extractor(padded)[:count]


def _format(images: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if images.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
