"""The worst-classified validation images: the saved best model over the validation split.

Only at the end of ``train`` and in ``torchgraft report`` (the refresh after each epoch does
not add a pass over the data). The split is rebuilt from ``config.yaml`` the way ``train``
built it (:func:`~torchgraft.data.sources.discover` with the run's ``val_fraction`` and
``split_seed``), every image goes through the saved model's preprocessing
(:func:`~torchgraft.data.transforms.base_transform`, then mean and std), and the images with
the highest cross-entropy loss are kept: those the model got wrong most confidently first,
then, if it got fewer wrong, the right ones it was least sure of.

Bounded: at most :data:`MAX_IMAGES` images are looked at (an evenly spaced subset of a larger
split, said in the section), thumbnails are the model's input scaled to at most
:data:`THUMBNAIL` pixels a side, as PNG. When the model or the images cannot be read (the
data moved, no epoch saved yet) the result says why instead of failing.
"""

from __future__ import annotations

import heapq
import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...model.build_record import Trust

__all__ = ["MAX_IMAGES", "THUMBNAIL", "Example", "Examples", "worst_examples"]

MAX_IMAGES = 5000
THUMBNAIL = 96
_BATCH = 64


@dataclass
class Example:
    """One validation image: where it is, its true and predicted class, the thumbnail."""

    name: str
    true: str
    predicted: str
    confidence: float  # the predicted class's probability
    p_true: float  # the true class's probability
    loss: float
    png: bytes


@dataclass
class Examples:
    """The worst images found, or why there are none (``reason``)."""

    items: list[Example] = field(default_factory=list)
    looked_at: int = 0
    split_size: int = 0
    unreadable: int = 0
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def worst_examples(
    run_dir: Path, config: Mapping | None, *, count: int = 16, trust_run: Trust = False
) -> Examples:
    """The ``count`` highest-loss validation images of the run's saved best model.

    Never raises for missing or moved files, a model not saved yet, a model whose builder
    the caller does not trust (``trust_run``; a record never selects code), data that
    changed or a pass torch refuses (out of memory): :attr:`Examples.reason` says what stood
    in the way.
    """
    from ...errors import TorchgraftError, UntrustedRunError
    from ..artifacts import load

    data = (config or {}).get("data") if isinstance(config, Mapping) else None
    if not isinstance(data, Mapping) or not data.get("source"):
        return Examples(reason="config.yaml does not say where the data is")
    try:
        model = load(run_dir, trust_run=trust_run)
    except UntrustedRunError as exc:
        return Examples(reason=f"the saved model was not built ({exc})")
    except TorchgraftError as exc:
        return Examples(reason=f"no saved model to run ({exc})")
    try:
        split = _validation_split(data, tuple(model.classes))
    except (TorchgraftError, OSError, ValueError, TypeError) as exc:  # also a damaged config
        return Examples(reason=f"the validation images cannot be read now ({exc})")
    try:
        return _rank(model, split, count)
    except RuntimeError as exc:  # torch's own errors (out of memory, a shape it refuses)
        return Examples(reason=f"the pass over the validation images failed ({exc})"[:500])


def _validation_split(data: Mapping, classes: tuple[str, ...]):
    from ...data.sources import discover
    from ...errors import DataError

    source = discover(
        str(data["source"]),
        val_fraction=float(data.get("val_fraction", 0.2)),
        split_seed=int(data.get("split_seed", 0)),
    )
    if tuple(source.classes) != classes:
        raise DataError(
            f"{data['source']} now holds the classes {list(source.classes)[:8]}, the model "
            f"{list(classes)[:8]}: the data changed since training"
        )
    return source.splits["val"]


def _rank(model, split, count: int) -> Examples:
    import torch
    import torch.nn.functional as F

    from ...data.transforms import Normalizer, base_transform
    from ..runtime import resolve_runtime

    found = Examples(split_size=len(split))
    indices = _subset(len(split), MAX_IMAGES)
    found.looked_at = len(indices)
    pre = model.preprocessing
    channels = pre.input_size[0]
    transform = base_transform(pre)
    # The device and memory format a run would choose (channels-last for convolutions is
    # what makes the CPU pass about as fast as the run's own validation).
    runtime = resolve_runtime(
        model, device="auto", precision="fp32", threads="auto", channels_last="auto"
    )
    device = runtime.device
    model.to(device, memory_format=runtime.memory_format)
    normalize = Normalizer(pre, device, runtime.memory_format)
    classes = model.classes
    best: list[tuple[float, int, object]] = []  # a min-heap of (loss, index, details)

    def decode(index: int):
        try:
            return transform(split.image(index, channels))
        except Exception:  # an unreadable file is counted, the rest go on
            return None

    with ThreadPoolExecutor(2) as pool, torch.inference_mode():
        for start in range(0, len(indices), _BATCH):
            chunk = indices[start : start + _BATCH]
            pairs = [
                (i, x) for i, x in zip(chunk, pool.map(decode, chunk), strict=True) if x is not None
            ]
            found.unreadable += len(chunk) - len(pairs)
            if not pairs:
                continue
            images = torch.stack([x for _, x in pairs])  # (B, C, H, W) uint8
            labels = torch.tensor([split.labels[i] for i, _ in pairs], device=device)
            logits = model(normalize(images)).float()
            losses = F.cross_entropy(logits, labels, reduction="none").cpu()
            probabilities = logits.softmax(dim=1).cpu()
            for row, (index, image) in enumerate(pairs):
                item = (float(losses[row]), index, (image, probabilities[row]))
                if len(best) < count:
                    heapq.heappush(best, item)
                elif item[0] > best[0][0]:
                    heapq.heapreplace(best, item)
    for loss, index, (image, probs) in sorted(best, key=lambda t: (-t[0], t[1])):
        label = split.labels[index]
        predicted = int(probs.argmax())
        found.items.append(
            Example(
                name=_name(split, index),
                true=classes[label],
                predicted=classes[predicted],
                confidence=float(probs[predicted]),
                p_true=float(probs[label]),
                loss=loss,
                png=_thumbnail(image),
            )
        )
    if found.unreadable:
        found.notes.append(f"{found.unreadable} image(s) could not be read and were left out")
    return found


def _subset(size: int, limit: int) -> list[int]:
    """All indexes, or ``limit`` evenly spaced ones (deterministic: the same every time)."""
    if size <= limit:
        return list(range(size))
    return sorted({round(i * (size - 1) / (limit - 1)) for i in range(limit)})


def _name(split, index: int) -> str:
    if split.paths is None:
        return split.describe(index)
    path = Path(split.paths[index])
    if split.root is not None:
        try:
            return path.relative_to(split.root).as_posix()
        except ValueError:
            pass
    return str(path)


def _thumbnail(image) -> bytes:
    """PNG of the model's input image (uint8 C×H×W), at most :data:`THUMBNAIL` px a side."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
