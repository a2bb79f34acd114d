"""``torchvision:NAME`` — every classification builder of ``torchvision.models``.

Pretrained weights are fetched by torchvision's own builder (its download and cache code,
under ``$TORCH_HOME/hub/checkpoints``) so the per-builder details torchvision applies with
weights (ViT's image size, Inception's ``transform_input``) stay torchvision's. The loaded
state_dict is then handed back as the graft source. Weights that are not cached and cannot
be downloaded raise :class:`~.download.WeightsUnavailableError` (:mod:`.download`).
"""

from __future__ import annotations

import re
from typing import Any

import torchvision
from torch import nn
from torchvision.models import get_model_builder, get_model_weights, list_models

from ..errors import SpecError
from ..model.anatomy import infer_spec
from ..model.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocessing
from ._base import BuiltModel, ZooEntry, did_you_mean
from .download import from_url

__all__ = ["HEAD_PATHS", "PREFIX", "build", "entries", "names", "resolve_weights"]

PREFIX = "torchvision"

#: Declared classifier paths per family: main head first, auxiliary heads after. A registry
#: test checks every builder against a probe forward pass.
HEAD_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"alexnet|vgg\d+(_bn)?", ("classifier.6",)),
    (r"resnet\d+|resnext.*|wide_resnet.*|regnet_.*|shufflenet_v2_.*", ("fc",)),
    (r"googlenet", ("fc", "aux1.fc2", "aux2.fc2")),
    (r"inception_v3", ("fc", "AuxLogits.fc")),
    (r"densenet\d+", ("classifier",)),
    (r"mobilenet_v2|mnasnet.*|efficientnet_.*", ("classifier.1",)),
    (r"mobilenet_v3_.*", ("classifier.3",)),
    (r"convnext_.*", ("classifier.2",)),
    (r"swin_.*", ("head",)),
    (r"vit_.*", ("heads.head",)),
    (r"maxvit_.*", ("classifier.5",)),
    (r"squeezenet.*", ("classifier.1",)),
)

#: Builder arguments passed when building without weights (silences torchvision's
#: "default init will change" warning while keeping today's behaviour).
NO_WEIGHTS_KWARGS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}

#: Native input size where it is not 224.
INPUT_SIZE = {"inception_v3": 299}


def names() -> list[str]:
    """Every classification builder in ``torchvision.models``."""
    return list_models(module=torchvision.models)


def entries() -> list[ZooEntry]:
    """One entry per builder with its declared head paths and weight names."""
    return [
        ZooEntry(f"{PREFIX}:{n}", declared_heads(n), tuple(_weights_enum(n).__members__))
        for n in names()
    ]


def declared_heads(name: str) -> tuple[str, ...]:
    """The head paths the family table declares for ``name`` (empty if unknown)."""
    for pattern, paths in HEAD_PATHS:
        if re.fullmatch(pattern, name):
            return paths
    return ()


def resolve_weights(name: str, weights: Any) -> Any:
    """The torchvision weights enum member for ``weights`` (None for none).

    Accepts ``True``/``"DEFAULT"``, a member name (``"IMAGENET1K_V2"``), the qualified name
    (``"ResNet50_Weights.IMAGENET1K_V2"``) or a member itself.

    Raises:
        SpecError: unknown weights, with the available names.
    """
    if weights is None or weights is False:
        return None
    enum = _weights_enum(name)
    if isinstance(weights, enum):
        return weights
    key = "DEFAULT" if weights is True else str(weights)
    key = key.split(".", 1)[1] if key.startswith(enum.__name__ + ".") else key
    if key.upper() in enum.__members__:
        return enum[key.upper()]
    available = ", ".join(enum.__members__)
    raise SpecError(
        f"torchvision:{name} has no weights '{weights}'; available: {available}"
        + did_you_mean(key.upper(), enum.__members__)
    )


def build(
    name: str,
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> BuiltModel:
    """Build ``torchvision:name``; see :class:`BuiltModel` for what comes back.

    ``in_chans`` is ignored here (torchvision builders take none); ``create_model`` changes
    the stem afterwards.

    Raises:
        SpecError: unknown model or weights name.
        WeightsUnavailableError: the weights are not cached and cannot be downloaded.
    """
    builder = _builder(name)
    enum_member = resolve_weights(name, weights)
    if enum_member is None:
        options = {**NO_WEIGHTS_KWARGS.get(name, {}), **kwargs}
        if num_classes is not None:
            options["num_classes"] = num_classes
        model = builder(weights=None, **options)
        return BuiltModel(model, _spec(name, model, None))
    label = f"torchvision {type(enum_member).__name__}.{enum_member.name}"
    model = from_url(
        f"{label} (torchvision:{name})",
        enum_member.url,
        lambda: builder(weights=enum_member, progress=True, **kwargs),
    )
    source = dict(model.state_dict())
    return BuiltModel(model, _spec(name, model, enum_member), source, label)


def _builder(name: str):
    try:
        return get_model_builder(name)
    except ValueError:
        raise SpecError(
            f"no torchvision model '{name}'" + did_you_mean(name, names(), f"{PREFIX}:")
        ) from None


def _weights_enum(name: str):
    return get_model_weights(name)


def _spec(name: str, model: nn.Module, weights: Any) -> ModelSpec:
    declared = tuple(p for p in declared_heads(name) if _has_module(model, p))
    size = getattr(model, "image_size", None) or INPUT_SIZE.get(name, 224)
    inferred = infer_spec(
        model, f"{PREFIX}:{name}", head_path=declared or None, input_size=(size, size)
    )
    classes = tuple(weights.meta["categories"]) if weights is not None else None
    if classes is not None and len(classes) != inferred.num_classes:
        classes = None
    return ModelSpec(
        name=f"{PREFIX}:{name}",
        num_classes=inferred.num_classes,
        head_paths=inferred.head_paths,
        feature_dim=inferred.feature_dim,
        first_conv=inferred.first_conv,
        in_chans=inferred.in_chans,
        layer_groups=inferred.layer_groups,
        preprocessing=_preprocessing(name, model, weights),
        weights=weights.name if weights is not None else None,
        classes=classes,
    )


def _preprocessing(name: str, model: nn.Module, weights: Any) -> Preprocessing:
    fixed = getattr(model, "image_size", None)
    if weights is not None:
        options = getattr(weights.transforms, "keywords", {})
        crop = options.get("crop_size", 224)
        resize = options.get("resize_size", crop)
        interpolation = options.get("interpolation")
        return Preprocessing(
            input_size=(3, crop, crop),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation=interpolation.value if interpolation is not None else "bilinear",
            crop_pct=crop / resize,
            fixed_input_size=fixed is not None,
        )
    size = fixed or INPUT_SIZE.get(name, 224)
    return Preprocessing(input_size=(3, size, size), fixed_input_size=fixed is not None)


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        return isinstance(model.get_submodule(path), nn.Module)
    except AttributeError:
        return False
