"""The validation images worth a look: the saved best model over the validation split.

Two lists come out of one pass, each at most ``count`` images:

- **misclassified**: the images the model got wrong (its top class is not the true one),
  worst first — the lowest probability given to the true class, which is the highest
  cross-entropy loss;
- **least confident correct**: the images it got right, least sure first — the lowest
  probability of the predicted (= true) class, again the highest loss among them.

An image is in one list or the other, never both; a model that gets nothing wrong has an
empty misclassified list (and the page says so), not a list padded with right answers.

Only at the end of ``train`` and in ``torchgraft report`` (the refresh after each epoch does
not add a pass over the data). The split is rebuilt from ``config.yaml`` the way ``train``
built it (:func:`~torchgraft.data.sources.discover` with the run's ``val_fraction`` and
``split_seed``), and every image goes through the saved model's preprocessing
(:func:`~torchgraft.data.transforms.base_transform`, then mean and std).

Bounded: at most :data:`MAX_IMAGES` images are looked at (an evenly spaced subset of a larger
split, said in the section), thumbnails are the model's input scaled to at most
:data:`THUMBNAIL` pixels a side, as PNG. When the model or the images cannot be read (the
data moved, no epoch saved yet) the result says why instead of failing.
"""

from __future__ import annotations

import heapq
import io
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...model.build_record import Trust

__all__ = ["MAX_IMAGES", "THUMBNAIL", "Example", "Examples", "Selection", "find_examples"]

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
    runner_up: str | None = None  # the class the model ranked second (None: one class)
    p_runner_up: float = 0.0


@dataclass
class Examples:
    """The images found, or why there are none (``reason``).

    ``misclassified`` holds only wrong predictions, worst first; ``least_confident`` only
    right ones, least confident first; ``wrong`` and ``right`` count every image looked at.
    """

    misclassified: list[Example] = field(default_factory=list)
    least_confident: list[Example] = field(default_factory=list)
    wrong: int = 0
    right: int = 0
    looked_at: int = 0
    split_size: int = 0
    unreadable: int = 0
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


class Selection:
    """The ``count`` worst misclassified and ``count`` least confident correct images, kept
    as the batches go by (two bounded min-heaps: memory is ``2 * count`` images).

    Both lists are ranked by the cross-entropy loss, ``-log p(true class)``, highest first:
    among wrong predictions that is the lowest probability of the true class, among right
    ones the lowest confidence. Ties go to the lower index (the same page every time).
    """

    def __init__(self, count: int):
        self.count = count
        self.wrong = 0
        self.right = 0
        self._heaps: dict[bool, list[tuple[float, int, object]]] = {True: [], False: []}

    def add(self, index: int, label: int, probabilities, payload: object = None) -> None:
        """One image: its index, its true label and the model's probabilities (a 1-D
        sequence or tensor over the classes); ``payload`` is kept with it."""
        values = [float(v) for v in probabilities]
        predicted = max(range(len(values)), key=values.__getitem__)
        correct = predicted == label
        if correct:
            self.right += 1
        else:
            self.wrong += 1
        loss = -math.log(max(values[label], 1e-45))
        heap = self._heaps[correct]
        item = (loss, -index, (index, values, payload))
        if len(heap) < self.count:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def misclassified(self) -> list[tuple[int, list[float], object]]:
        """``(index, probabilities, payload)`` of the wrong predictions kept, worst first."""
        return self._ranked(False)

    def least_confident(self) -> list[tuple[int, list[float], object]]:
        """``(index, probabilities, payload)`` of the right predictions kept, least sure first."""
        return self._ranked(True)

    def _ranked(self, correct: bool) -> list[tuple[int, list[float], object]]:
        return [entry for _, _, entry in sorted(self._heaps[correct], reverse=True)]


def find_examples(
    run_dir: Path,
    config: Mapping | None,
    *,
    count: int = 16,
    trust_run: Trust = False,
    on_step: Callable[[int, int], None] | None = None,
) -> Examples:
    """Up to ``count`` misclassified and ``count`` least confident correct validation images
    of the run's saved best model (see the module docstring for the order).

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
        return _rank(model, split, count, on_step)
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


def _rank(model, split, count: int, on_step=None) -> Examples:
    """Rank the split's images (``on_step(done, total)``: the images looked at so far, at 0
    before the first batch and after each, for a progress bar)."""
    import torch

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
    selection = Selection(count)

    def decode(index: int):
        try:
            return transform(split.image(index, channels))
        except Exception:  # an unreadable file is counted, the rest go on
            return None

    step = on_step or (lambda done, total: None)
    with ThreadPoolExecutor(2) as pool, torch.inference_mode():
        for start in range(0, len(indices), _BATCH):
            step(start, len(indices))  # the images before this batch are done
            chunk = indices[start : start + _BATCH]
            pairs = [
                (i, x) for i, x in zip(chunk, pool.map(decode, chunk), strict=True) if x is not None
            ]
            found.unreadable += len(chunk) - len(pairs)
            if not pairs:
                continue
            images = torch.stack([x for _, x in pairs])  # (B, C, H, W) uint8
            probabilities = model(normalize(images)).float().softmax(dim=1).cpu()
            for row, (index, image) in enumerate(pairs):
                selection.add(index, split.labels[index], probabilities[row], image)
    step(len(indices), len(indices))
    found.wrong, found.right = selection.wrong, selection.right
    found.misclassified = [_example(split, model.classes, *e) for e in selection.misclassified()]
    found.least_confident = [
        _example(split, model.classes, *e) for e in selection.least_confident()
    ]
    if found.unreadable:
        found.notes.append(f"{found.unreadable} image(s) could not be read and were left out")
    return found


def _example(split, classes, index: int, probabilities: list[float], image) -> Example:
    """The shown record of one image: names, probabilities, the runner-up, the thumbnail."""
    label = split.labels[index]
    order = sorted(range(len(probabilities)), key=lambda c: (-probabilities[c], c))
    predicted = order[0]
    second = order[1] if len(order) > 1 else None
    return Example(
        name=_name(split, index),
        true=classes[label],
        predicted=classes[predicted],
        confidence=probabilities[predicted],
        p_true=probabilities[label],
        loss=-math.log(max(probabilities[label], 1e-45)),
        png=_thumbnail(image),
        runner_up=classes[second] if second is not None else None,
        p_runner_up=probabilities[second] if second is not None else 0.0,
    )


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
