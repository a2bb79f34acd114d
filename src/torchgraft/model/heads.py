"""Find and replace the classifier head of any model.

torchvision families and plain modules are handled by one mechanism: the head paths come
from the model's spec (declared for torchvision, inferred by a probe forward pass for
modules never seen before) and each head layer is swapped for a fresh one of the same kind.
timm models are handled through their own ``get_classifier``/``reset_classifier`` so timm's
bookkeeping (``num_classes``, pooling, distillation heads) stays consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import HeadError
from ..wording import listing, option
from ._modules import final_layer, final_layer_path, in_features, out_features, set_module
from .anatomy import spec_of
from .spec import SPEC_ATTRIBUTE, ModelSpec, attach_spec

__all__ = [
    "Head",
    "HeadReplacement",
    "find_head",
    "normalise_class",
    "replace_head",
    "rows_to_keep",
    "same_class",
]


@dataclass(frozen=True, repr=False)
class Head:
    """A located classifier: its path, module and widths, plus auxiliary heads.

    ``repr`` is one line (``<Head fc: Linear(2048→1000), 2048 features → 1000 classes>``);
    the module itself prints with ``print(head.module)``.
    """

    path: str
    module: nn.Module
    in_features: int
    num_classes: int
    aux_paths: tuple[str, ...] = ()

    def __repr__(self) -> str:
        aux = f", aux {listing(self.aux_paths)}" if self.aux_paths else ""
        return (
            f"<Head {self.path}: {_shorten(_describe(self.module))}, "
            f"{self.in_features} features → {self.num_classes} classes{aux}>"
        )


@dataclass(frozen=True, repr=False)
class HeadReplacement:
    """What :func:`replace_head` did, printable.

    Attributes:
        paths: every replaced head path (main first).
        old: one description per path of the layer that was removed.
        new: one description per path of the module put in its place.
        kept_classes: classes whose pretrained rows were copied into the new head.
        spec: the model's spec after the change.
    """

    paths: tuple[str, ...]
    old: tuple[str, ...]
    new: tuple[str, ...]
    kept_classes: tuple[str, ...]
    spec: ModelSpec

    def __str__(self) -> str:
        lines = [f"{p}: {o} -> {n}" for p, o, n in zip(self.paths, self.old, self.new, strict=True)]
        if self.kept_classes:
            lines.append(
                f"pretrained rows kept for {len(self.kept_classes)} classes: "
                + ", ".join(self.kept_classes[:10])
                + (" …" if len(self.kept_classes) > 10 else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        # One line, without the spec (whose class names alone can run to pages).
        changes = "; ".join(
            f"{p}: {_shorten(o)} → {_shorten(n)}"
            for p, o, n in zip(self.paths, self.old, self.new, strict=True)
        )
        kept = f"; rows kept for {len(self.kept_classes)} classes" if self.kept_classes else ""
        return f"<HeadReplacement {changes}{kept}>"


def find_head(model: nn.Module) -> Head:
    """Locate the classifier of ``model``.

    Uses the attached spec when there is one, timm's ``get_classifier`` for timm models, and a
    probe forward pass otherwise.

    Raises:
        HeadError: no single head can be identified.

    Example:
        >>> tg.find_head(torchvision.models.vgg16()).path
        'classifier.6'
    """
    spec = spec_of(model)
    modules = dict(model.named_modules())
    main = modules[spec.head_path]
    layer = final_layer(main)
    return Head(
        path=spec.head_path,
        module=main,
        in_features=spec.feature_dim,
        num_classes=out_features(layer) or spec.num_classes,
        aux_paths=spec.head_paths[1:],
    )


def replace_head(
    model: nn.Module,
    num_classes: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    keep_classes: bool | Sequence[str] = False,
    dropout: float = 0.0,
    hidden: int | None = None,
    head_path: str | None = None,
) -> HeadReplacement:
    """Replace the classifier (and auxiliary classifiers) of ``model`` in place.

    The new layers are of the old one's kind (Linear stays Linear, a 1x1 conv head stays a
    conv), on the old one's device and dtype; the old layers leave ``parameters()`` and
    ``state_dict()``. The spec attached to the model, if any, is updated.

    Args:
        model: the model to change.
        num_classes: outputs of the new head; defaults to ``len(classes)``.
        classes: names of the new outputs, recorded in the spec.
        keep_classes: ``True`` copies the pretrained rows of every class in ``classes`` whose
            name the old head also has; a list copies only those. Needs class names on both sides.
        dropout: dropout probability before each new Linear of the main head.
        hidden: width of an optional hidden layer (Linear -> ReLU -> [Dropout] -> Linear).
        head_path: the head's module path, when you want to name it yourself.

    Returns:
        A :class:`HeadReplacement` describing the change.

    Raises:
        HeadError: no head found, inconsistent arguments, or a class to keep that one side lacks.

    Example:
        >>> change = tg.replace_head(model, num_classes=10)
        >>> print(change)
        fc: Linear(2048→1000) -> Linear(2048→10)
    """
    num_classes = _resolve_num_classes(num_classes, classes)
    if not 0.0 <= dropout < 1.0:
        raise HeadError(f"{option('dropout')} must be in [0, 1), got {dropout}")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise HeadError(f"{option('hidden')} must be a positive integer width, got {hidden!r}")
    if keep_classes and hidden:
        raise HeadError(
            f"{option('keep_classes')} cannot be combined with {option('hidden')}: pretrained "
            "rows take the old feature width, a hidden layer changes it"
        )
    spec = spec_of(model, head_path=head_path) if head_path else spec_of(model)
    if head_path is not None and spec.head_path != head_path:
        spec = spec.with_head(spec.num_classes, None, (head_path,))
    modules = dict(model.named_modules())
    rows = rows_to_keep(spec, classes, keep_classes)
    old_layers = {path: final_layer(modules[path]) for path in spec.head_paths}
    saved = {path: _saved_rows(layer, rows) for path, layer in old_layers.items()}

    if _is_timm(model) and head_path is None:
        new_paths = _reset_timm_classifier(model, num_classes)
    else:
        # A head that is a container (Linear -> ReLU -> Linear) keeps its hidden layers; only
        # the last layer, the one that makes the classes, is replaced.
        for path in spec.head_paths:
            layer_path = final_layer_path(model, path)
            set_module(model, layer_path, _layer_like(old_layers[path], num_classes))
        new_paths = spec.head_paths
    if dropout or hidden:
        main_layer = final_layer_path(model, new_paths[0])
        layer = model.get_submodule(main_layer)
        set_module(model, main_layer, _wrap(layer, num_classes, dropout, hidden))

    modules = dict(model.named_modules())
    for old_path, new_path in zip(spec.head_paths, new_paths, strict=True):
        _copy_rows(saved[old_path], final_layer(modules[new_path]), rows)
    new_spec = spec.with_head(
        num_classes, tuple(classes) if classes is not None else None, tuple(new_paths)
    )
    if getattr(model, SPEC_ATTRIBUTE, None) is not None:
        attach_spec(model, new_spec)
    return HeadReplacement(
        paths=tuple(new_paths),
        old=tuple(_describe(old_layers[p]) for p in spec.head_paths),
        new=tuple(_describe(modules[p]) for p in new_paths),
        kept_classes=tuple(name for name, _, _ in rows),
        spec=new_spec,
    )


def same_class(a: str, b: str) -> bool:
    """Class-name equality that ignores case, spacing and ``_``/``-`` differences."""
    return normalise_class(a) == normalise_class(b)


def normalise_class(name: str) -> str:
    """The form class names are compared in: lower case, single spaces, no ``_``/``-``."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _resolve_num_classes(num_classes: int | None, classes: Sequence[str] | None) -> int:
    if classes is not None:
        if isinstance(classes, str):
            raise HeadError("classes must be a list of names, not one string")
        if num_classes is not None and num_classes != len(classes):
            raise HeadError(
                f"{option('num_classes', num_classes)} but {len(classes)} class names given; "
                "pass one of them or make them agree"
            )
        num_classes = len(classes)
    if num_classes is None or num_classes < 1:
        raise HeadError(f"{option('num_classes')} must be a positive integer, got {num_classes!r}")
    return num_classes


def rows_to_keep(
    spec: ModelSpec, classes: Sequence[str] | None, keep: bool | Sequence[str]
) -> list[tuple[str, int, int]]:
    """(class name, old row, new row) for every pretrained row to carry over.

    Raises:
        HeadError: no new names, unknown old names, or names to keep that one side lacks.
    """
    if keep is False or keep is None:
        return []
    if classes is None:
        raise HeadError("keep_classes needs the new label names: pass classes=[...]")
    if spec.classes is None:
        raise HeadError(
            f"{spec.name}: the current head's class names are unknown (no pretrained weights "
            f"with categories), so no rows can be kept; drop {option('keep_classes')}"
        )
    old_index = {normalise_class(n): i for i, n in enumerate(spec.classes)}
    new_index = {normalise_class(n): i for i, n in enumerate(classes)}
    wanted = list(classes) if keep is True else list(keep)
    if keep is not True:
        unknown = [n for n in wanted if normalise_class(n) not in new_index]
        missing = [n for n in wanted if normalise_class(n) not in old_index]
        if unknown or missing:
            raise HeadError(
                f"keep_classes names {unknown or missing} that "
                + ("are not in classes" if unknown else f"the pretrained head of {spec.name} lacks")
            )
    return [
        (name, old_index[normalise_class(name)], new_index[normalise_class(name)])
        for name in wanted
        if normalise_class(name) in old_index
    ]


def _saved_rows(layer: nn.Module, rows: list[tuple[str, int, int]]):
    if not rows:
        return None
    index = torch.tensor([old for _, old, _ in rows], device=layer.weight.device)
    bias = layer.bias.detach()[index].clone() if layer.bias is not None else None
    return layer.weight.detach()[index].clone(), bias


def _copy_rows(saved, layer: nn.Module, rows: list[tuple[str, int, int]]) -> None:
    if saved is None:
        return
    weight, bias = saved
    index = torch.tensor([new for _, _, new in rows], device=layer.weight.device)
    with torch.no_grad():
        layer.weight[index] = weight.to(layer.weight.dtype)
        if bias is not None and layer.bias is not None:
            layer.bias[index] = bias.to(layer.bias.dtype)


def _layer_like(old: nn.Module, out: int, in_width: int | None = None) -> nn.Module:
    """A fresh layer of ``old``'s kind, device and dtype with ``out`` outputs."""
    width = in_width if in_width is not None else in_features(old)
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        return nn.Linear(width, out, bias=bias, **factory)
    if isinstance(old, nn.modules.conv._ConvNd):
        kernel = old.kernel_size if in_width is None else 1
        return type(old)(
            width,
            out,
            kernel_size=kernel,
            stride=old.stride if in_width is None else 1,
            padding=old.padding if in_width is None else 0,
            dilation=old.dilation if in_width is None else 1,
            bias=bias,
            **factory,
        )
    raise HeadError(
        f"cannot replace a {type(old).__name__} head; replace_head handles Linear and "
        "convolution heads. Assign your own module to the head path instead"
    )


def _wrap(layer: nn.Module, num_classes: int, dropout: float, hidden: int | None) -> nn.Module:
    parts: list[nn.Module] = []
    if hidden:
        if dropout:
            parts.append(nn.Dropout(dropout))
        parts += [_layer_like(layer, hidden), nn.ReLU(inplace=True)]
        layer = _layer_like(layer, num_classes, in_width=hidden)
    if dropout:
        parts.append(nn.Dropout(dropout))
    parts.append(layer)
    return nn.Sequential(*parts)


def _is_timm(model: nn.Module) -> bool:
    return hasattr(model, "reset_classifier") and hasattr(model, "get_classifier")


def _reset_timm_classifier(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    before = {id(m) for m in model.modules()}
    model.reset_classifier(num_classes)
    if reference is not None:
        for module in model.modules():
            if id(module) not in before:
                # timm builds the new head on the CPU in the default dtype.
                module.to(device=reference.device, dtype=reference.dtype)
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    by_id = {id(m): p for p, m in model.named_modules()}
    return tuple(by_id[id(h)] for h in heads)


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Sequential):
        return "Sequential(" + ", ".join(_describe(m) for m in module) + ")"
    if out_features(module) is not None:
        return f"{type(module).__name__}({in_features(module)}→{out_features(module)})"
    return type(module).__name__
