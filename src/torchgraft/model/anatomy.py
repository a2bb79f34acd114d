"""Anatomy of a model never seen before: its head, auxiliary heads, first conv and groups.

The head is found from behaviour, not names: one probe forward pass (see :mod:`.probe`)
records the modules in call order; the head is the last module with a weight matrix to run,
and it must produce the output's class dimension. Auxiliary heads are layers of the same
output width that do not run in eval mode (Inception's and GoogLeNet's aux classifiers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import HeadError
from ._modules import final_layer, in_features, is_conv, out_features
from .layer_groups import infer_groups
from .probe import COMMON_SIZES, ForwardTrace, trace_forward
from .spec import SPEC_ATTRIBUTE, ModelSpec, Preprocessing

__all__ = ["HeadAnatomy", "declared_image_size", "find_head_by_probe", "infer_spec", "spec_of"]


@dataclass(frozen=True)
class HeadAnatomy:
    """Where the classifier is and how wide it is."""

    head_paths: tuple[str, ...]
    num_classes: int
    feature_dim: int
    first_conv: str | None
    in_chans: int
    input_size: tuple[int, ...]


def find_head_by_probe(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_size: int | tuple[int, ...] | None = None,
) -> HeadAnatomy:
    """Find the classifier of any model with one probe forward pass.

    Raises:
        HeadError: the last layer with weights does not produce the output's class
            dimension, so no single head can be named.
    """
    trace = _trace(model, example_input, input_size)
    modules = dict(model.named_modules())
    head, num_classes = _detect_head(model, modules, trace)
    aux = _aux_heads(modules, trace, head, num_classes)
    return _anatomy(modules, trace, (head, *aux))


def infer_spec(
    model: nn.Module,
    name: str | None = None,
    *,
    example_input: torch.Tensor | None = None,
    input_size: int | tuple[int, ...] | None = None,
    head_path: str | Sequence[str] | None = None,
) -> ModelSpec:
    """A full :class:`ModelSpec` for a plain ``nn.Module``.

    Args:
        model: the model (left unchanged).
        name: the spec's name; defaults to ``custom:<ClassName>``.
        example_input: an input the model accepts; otherwise common image sizes are tried.
        input_size: spatial size (int or (H, W)) to probe with.
        head_path: name the head(s) yourself instead of detecting them (the probe still
            runs, for the first conv and the input shape, but need not find a head).

    Raises:
        HeadError: no single head can be identified (pass ``head_path``).
    """
    trace = _trace(model, example_input, input_size)
    modules = dict(model.named_modules())
    if head_path is not None:
        head_paths = (head_path,) if isinstance(head_path, str) else tuple(head_path)
        _check_paths(model, head_paths)
    else:
        head, num_classes = _detect_head(model, modules, trace)
        head_paths = (head, *_aux_heads(modules, trace, head, num_classes))
    anatomy = _anatomy(modules, trace, head_paths)
    spatial = anatomy.input_size[1:]
    preprocessing = Preprocessing().with_channels(anatomy.in_chans)
    if len(spatial) == 2:
        preprocessing = Preprocessing(
            input_size=(anatomy.in_chans, *spatial),
            mean=preprocessing.mean,
            std=preprocessing.std,
        )
    return ModelSpec(
        name=name or f"custom:{type(model).__name__}",
        num_classes=anatomy.num_classes,
        head_paths=head_paths,
        feature_dim=anatomy.feature_dim,
        first_conv=anatomy.first_conv,
        in_chans=anatomy.in_chans,
        layer_groups=infer_groups(model, head_paths),
        preprocessing=preprocessing,
    )


def spec_of(model: nn.Module, *, refresh: bool = False, **infer_options: Any) -> ModelSpec:
    """The spec attached to ``model``, or one inferred from the module itself.

    Args:
        model: any ``nn.Module``.
        refresh: infer again even if a spec is attached (after editing the model by hand).
        infer_options: passed to :func:`torchgraft.anatomy.infer_spec` (``example_input``,
            ``input_size``, ``head_path``).

    Raises:
        HeadError: the model has no identifiable single classifier head.

    Example:
        >>> spec = spec_of(torchvision.models.resnet18())
        >>> spec.head_path, spec.feature_dim
        ('fc', 512)
    """
    attached = getattr(model, SPEC_ATTRIBUTE, None)
    if attached is not None and not refresh:
        return attached
    name = attached.name if attached is not None else "custom:" + type(model).__name__
    inferred = infer_spec(model, name=name, **infer_options)
    if attached is not None:
        inferred = dataclasses.replace(
            inferred,
            weights=attached.weights,
            preprocessing=attached.preprocessing.with_channels(inferred.in_chans),
            classes=attached.classes if attached.num_classes == inferred.num_classes else None,
        )
    return inferred


def _trace(model, example_input, input_size) -> ForwardTrace:
    declared = declared_image_size(model)
    sizes = (input_size,) if input_size else (*filter(None, [declared]), *COMMON_SIZES)
    return trace_forward(model, example_input, sizes)


def declared_image_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a ViT-like model was built for (timm's ``patch_embed.img_size``,
    torchvision's ``image_size``): the one size it accepts, or with timm's
    ``dynamic_img_size`` the size of its position-embedding grid. None for a model that
    declares none (a CNN)."""
    declared = getattr(getattr(model, "patch_embed", None), "img_size", None)
    declared = declared if declared is not None else getattr(model, "image_size", None)
    if isinstance(declared, int) and declared > 0:
        return (declared, declared)
    pair = isinstance(declared, (tuple, list)) and len(declared) == 2
    if pair and all(isinstance(d, int) and d > 0 for d in declared):
        return (int(declared[0]), int(declared[1]))
    return None


def _detect_head(model: nn.Module, modules: dict[str, nn.Module], trace: ForwardTrace):
    """The last layer with weights to run, which must produce the output's class dimension."""
    layers = [p for p in trace.order if out_features(modules[p]) is not None]
    if not layers:
        raise HeadError(
            f"{type(model).__name__} has no Linear or convolution layer to act as a head"
        )
    head = layers[-1]
    if len(trace.output_shape) < 2:
        raise HeadError(
            f"{type(model).__name__} returns shape {trace.output_shape}; a classifier returns "
            "(batch, classes)"
        )
    num_classes = trace.output_shape[1]
    width = out_features(modules[head])
    if width != num_classes:
        raise HeadError(
            f"cannot identify a single head in {type(model).__name__}: the last layer with "
            f"weights, '{head}' ({_describe(modules[head])}), gives {width} outputs but the "
            f"model returns {num_classes} per sample; pass head_path='...' to name the head"
        )
    return head, num_classes


def _anatomy(
    modules: dict[str, nn.Module], trace: ForwardTrace, head_paths: tuple[str, ...]
) -> HeadAnatomy:
    """Widths come from the main head's last layer (a container head: its last Linear/conv)."""
    main = final_layer(modules[head_paths[0]])
    first = modules[head_paths[0]]
    first_layer = next((m for m in first.modules() if in_features(m) is not None), main)
    return HeadAnatomy(
        head_paths=head_paths,
        num_classes=out_features(main) or 0,
        feature_dim=in_features(first_layer) or 0,
        first_conv=_first_conv(modules, trace),
        in_chans=trace.input_shape[1],
        input_size=trace.input_shape[1:],
    )


def _aux_heads(
    modules: dict[str, nn.Module], trace: ForwardTrace, head: str, num_classes: int
) -> list[str]:
    return [
        path
        for path, module in modules.items()
        if path != head and not trace.ran(path) and out_features(module) == num_classes
    ]


def _first_conv(modules: dict[str, nn.Module], trace: ForwardTrace) -> str | None:
    for path in trace.order:
        if is_conv(modules[path]):
            return path
    return None


def _check_paths(model: nn.Module, paths: Sequence[str]) -> None:
    modules = dict(model.named_modules())
    for path in paths:
        if path not in modules:
            raise HeadError(
                f"head_path '{path}' is not a module of {type(model).__name__}; "
                f"its top-level modules are {[n for n, _ in model.named_children()]}"
            )


def _describe(module: nn.Module) -> str:
    return f"{type(module).__name__} {in_features(module)}→{out_features(module)}"
