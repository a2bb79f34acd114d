"""Using a trained model: evaluate it on a labelled folder, predict classes of image files.

Both take the model :func:`~torchgraft.engine.artifacts.load` returns and prepare images
exactly as the run did (its saved preprocessing: size, crop, interpolation, mean, std).
Prediction also takes an exported model (:func:`~torchgraft.engine.export.load.load_exported`:
TorchScript, ``torch.export`` or ONNX, with the classes and preprocessing of its sidecar);
:func:`load_for_prediction` picks the loader from the path.

Predicting with an export imports neither the training loop and its metrics (torchmetrics)
nor timm and torchvision: what only evaluation or a run's model needs is imported where it
is used, so ``torchgraft predict model.onnx`` starts in the time torch takes to import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.folders import list_class_folders
from ..data.images import UnreadableImageError, is_image_file, load_image
from ..data.sources import DataSource, Split, discover
from ..data.strays import StrayFiles
from ..data.transforms import Normalizer, base_transform
from ..errors import DataError
from .export.load import ExportedModel, load_exported

if TYPE_CHECKING:
    from ..data.prepare import PreparedData
    from .metrics import EvalResult

__all__ = [
    "Prediction",
    "evaluate_folder",
    "image_files",
    "load_for_prediction",
    "predict",
    "predict_files",
]


#: What an image whose class probabilities are not finite numbers is told.
NOT_FINITE = (
    "the model's outputs for this image are not finite numbers (NaN or infinity): the model "
    "or its preprocessing is broken; no classes predicted"
)


@dataclass
class Prediction:
    """The top classes of one image (or why it could not be read)."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": str(self.path), "error": self.error}
        return {
            "path": str(self.path),
            "top": [{"class": name, "probability": p} for name, p in self.top],
        }


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named, and the image files inside folders named (recursively, sorted).

    Raises:
        DataError: an input that does not exist.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def load_for_prediction(
    path: str | Path, *, trust: bool = False, trust_run: bool = False
) -> nn.Module | ExportedModel:
    """The model at ``path``: a run directory or a ``.safetensors`` model through
    :func:`~torchgraft.engine.artifacts.load`; any other file as an export
    (:func:`~torchgraft.engine.export.load.load_exported`, which needs its sidecar and checks
    the file's sha256 before loading it).

    Args:
        path: a run directory, a ``model.safetensors``, or an exported file.
        trust: load a TorchScript or ``.pt2`` export, which can run code from the file
            (``predict --trust-export``); ONNX exports need no opt-in.
        trust_run: build a run's model whose record names a ``package.module:callable``
            builder (``predict --trust-run``); torchvision and timm models need no opt-in.

    Raises:
        UntrustedExportError: a TorchScript or ``.pt2`` export without ``trust=True``.
        UntrustedRunError: a ``package.module:callable`` builder without ``trust_run=True``.
        CheckpointError: no model there, a file that does not match its recorded sha256,
            or another file without an export sidecar.
        MissingExtraError: an ONNX export without onnxruntime installed.
    """
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        return load_exported(path, trust=trust)
    from .artifacts import load  # a run's model: its builder's library loads here

    return load(path, trust_run=trust_run)


def predict(
    model: nn.Module | ExportedModel,
    inputs: Iterable[str | Path],
    *,
    topk: int = 5,
    batch_size: int = 64,
) -> list[Prediction]:
    """The ``topk`` classes of every image file named or found in the folders named.

    ``model`` is what :func:`torchgraft.load` returns (it carries ``classes`` and
    ``preprocessing``), or an :class:`~torchgraft.engine.export.load.ExportedModel`. An
    unreadable file gets a :class:`Prediction` with ``error`` set.

    Raises:
        DataError: an input that does not exist.

    Example:
        >>> model = tg.load("runs/first")
        >>> tg.predict(model, ["photos/cat.jpg"], topk=2)[0].top
        [('cat', 0.97), ('dog', 0.02)]
    """
    return predict_files(model, image_files(inputs), topk=topk, batch_size=batch_size)


def predict_files(
    model: nn.Module | ExportedModel,
    paths: Sequence[Path],
    *,
    topk: int = 5,
    batch_size: int = 64,
    workers: int = 2,
) -> list[Prediction]:
    """Class probabilities of each file (softmax), the ``topk`` most likely; an unreadable
    file gets a :class:`Prediction` with ``error`` set, the others are unaffected."""
    pre = model.preprocessing
    channels = pre.input_size[0]
    transform = base_transform(pre)
    device = model.device if isinstance(model, ExportedModel) else next(model.parameters()).device
    normalize = Normalizer(pre, device)
    classes = model.classes
    k = max(1, min(topk, len(classes)))
    results: list[Prediction] = []

    def decode(path: Path):
        try:
            return transform(load_image(path, channels)), None
        except UnreadableImageError as exc:
            return None, exc.reason
        except DataError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            decoded = list(pool.map(decode, chunk))
            good = [(p, img) for p, (img, _) in zip(chunk, decoded, strict=True) if img is not None]
            probabilities = _probabilities(model, normalize, [img for _, img in good])
            by_path = dict(zip([p for p, _ in good], probabilities, strict=True))
            for path, (_, error) in zip(chunk, decoded, strict=True):
                if error is not None:
                    results.append(Prediction(path, error=error))
                    continue
                if not torch.isfinite(by_path[path]).all():
                    # A probability that is not a number is no prediction (and no JSON).
                    results.append(Prediction(path, error=NOT_FINITE))
                    continue
                values, indices = by_path[path].topk(k)
                top = [
                    (classes[i], float(v)) for v, i in zip(values, indices.tolist(), strict=True)
                ]
                results.append(Prediction(path, top))
    return results


def _probabilities(
    model: nn.Module | ExportedModel, normalize: Normalizer, images: list[torch.Tensor]
):
    if not images:
        return []
    with torch.inference_mode():
        logits = model(normalize(torch.stack(images)))
    return list(logits.float().softmax(dim=1).cpu())


def evaluate_folder(
    model: nn.Module,
    source: str | Path,
    *,
    on_bad_image: str = "stop",
    batch_size: int = 256,
    skip_hint: str | None = None,
) -> tuple[EvalResult, PreparedData]:
    """Metrics of ``model`` on a labelled dataset: a folder of class subfolders, a folder with
    ``test/`` (else ``val/``) split folders, or a CSV of ``path,label``.

    Class names are matched to the model's by name; the data may hold fewer classes.

    Returns:
        the metrics, and the prepared data (``.bad`` lists files left out with ``"skip"``).

    Raises:
        DataError: a class the model does not know, or bad files (with ``"stop"``).
    """
    from ..data.prepare import prepare_data
    from .loop import evaluate
    from .metrics import Evaluator
    from .runtime import resolve_runtime

    data_source = _labelled(Path(source), tuple(model.classes))
    data = prepare_data(
        data_source, model.preprocessing, on_bad_image=on_bad_image, skip_hint=skip_hint
    )
    runtime = resolve_runtime(
        model,
        device=str(next(model.parameters()).device),
        precision="fp32",
        threads="auto",
        channels_last="auto",
    )
    evaluator = Evaluator(tuple(model.classes), runtime.device)
    batches = data.loader("eval", batch_size)
    normalize = Normalizer(data.preprocessing, runtime.device, runtime.memory_format)
    model.to(memory_format=runtime.memory_format)
    result = evaluate(
        batches, evaluator, prepare=normalize, forward=model, runtime=runtime, modules=[model]
    )
    return result, data


#: The second half of what to do about classes the model never saw (_unknown_classes).
_RENAME_FOLDER = "a folder that holds one of the model's classes under another name: rename it"
_RENAME_LABEL = "a label that names one of the model's classes another way: change it"


def _labelled(path: Path, classes: tuple[str, ...]) -> DataSource:
    """One split called ``eval`` whose labels index the model's classes; the files left out
    of it (not images, or beside the class folders) in ``strays``, for the command to name."""
    strays = StrayFiles()
    if path.is_dir() and (path / "train").is_dir():
        found = discover(str(path))
        names, split = found.classes, found.splits.get("test") or found.splits["val"]
        labels, paths, root, strays = split.labels, split.paths, split.root, found.strays
        remedy = f"move those class folders out of the split folders of {path}", _RENAME_FOLDER
    elif path.is_dir():
        listing = list_class_folders(path, allow_single=True)
        names, labels, paths, root = listing.classes, listing.labels, listing.paths, path
        strays = listing.strays
        remedy = f"move those class folders out of {path}", _RENAME_FOLDER
    elif path.suffix.lower() == ".csv" and path.is_file():
        found = discover(str(path))
        names, parts = found.classes, list(found.splits.values())
        labels = [label for s in parts for label in s.labels]
        paths, root = [p for s in parts for p in s.paths], path.parent
        remedy = f"remove their rows from {path}", _RENAME_LABEL
    else:
        what = "no such file or folder" if not path.exists() else "not a folder or a .csv file"
        raise DataError(
            f"{path}: {what}; give a folder of class subfolders (or one with train/ and test/ "
            "or val/ split folders) or a .csv of path,label"
        )
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise _unknown_classes(path, unknown, classes, remedy)
    index = {c: i for i, c in enumerate(classes)}
    mapped = [index[names[label]] for label in labels]
    split = Split("eval", mapped, paths, root=root)
    return DataSource(classes, {"eval": split}, str(path), "eval", strays=strays)


def _unknown_classes(
    path: Path, unknown: Sequence[str], classes: Sequence[str], remedy: tuple[str, str]
) -> DataError:
    """The data holds classes the model never saw: which, which ones it knows, and what to do
    (``remedy``: leave them out, or rename the ones that are model classes by another name)."""
    from ..wording import listing

    leave_out, rename = remedy
    return DataError(
        f"{path}: {len(unknown)} class(es) the model was not trained on: "
        f"{listing(map(repr, unknown), 5)}; the model knows {listing(map(repr, classes), 10)}. "
        f"To evaluate on the model's classes only, {leave_out}; {rename} to that class's name"
    )
