"""``timm:NAME`` — any timm architecture, with timm's pretrained tags.

Weights are fetched by ``timm.create_model(..., pretrained=True)``, i.e. timm's own download
and cache code (the Hugging Face hub cache or torch hub) and its checkpoint filters; the
loaded state_dict is handed back as the graft source. The anatomy comes from timm's own
declarations: ``get_classifier()``, ``pretrained_cfg`` and ``group_matcher()``. Weights that
are not cached and cannot be downloaded raise :class:`~.download.WeightsUnavailableError`
at once, without huggingface_hub's minute of retries (:mod:`.download`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import timm
import timm.data
from torch import nn

from ..errors import SpecError
from ..model.anatomy import declared_image_size, infer_spec
from ..model.layer_groups import groups_from_ordinals
from ..model.spec import ModelSpec, Preprocessing
from ..wording import option
from ._base import BuiltModel, ZooEntry, did_you_mean
from .download import from_hf_hub, from_url

__all__ = ["PREFIX", "build", "entries", "is_model", "names"]

PREFIX = "timm"


def names() -> list[str]:
    """Every timm architecture name."""
    return timm.list_models()


def is_model(arch: str) -> bool:
    """True when timm has an architecture called ``arch``."""
    return timm.is_model(arch)


def entries() -> list[ZooEntry]:
    """One entry per architecture with its classifier path(s) and pretrained tags."""
    tags: dict[str, list[str]] = defaultdict(list)
    for full in timm.list_pretrained():
        arch, _, tag = full.partition(".")
        tags[arch].append(tag)
    result = []
    for arch in names():
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
        classifier = getattr(cfg, "classifier", None) or "?"
        heads = tuple(classifier) if isinstance(classifier, (tuple, list)) else (classifier,)
        result.append(ZooEntry(f"{PREFIX}:{arch}", heads, tuple(tags.get(arch, ()))))
    return result


def build(
    name: str,
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> BuiltModel:
    """Build ``timm:name`` (``name`` may carry a pretrained tag: ``resnet50.a1_in1k``).

    Without weights, ``num_classes`` and ``in_chans`` go straight to timm. With weights, the
    model is built as pretrained (native head and stem) and its state_dict becomes the source;
    ``create_model`` then changes head and stem and grafts.

    Raises:
        SpecError: unknown architecture or tag, with close matches.
        WeightsUnavailableError: the weights are not cached and cannot be downloaded.
    """
    arch, tag = _split_tag(name, weights)
    if weights is None or weights is False:
        options = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v}
        model = timm.create_model(arch, pretrained=False, **options, **kwargs)
        return BuiltModel(model, _spec(arch, model, None))
    full = f"{arch}.{tag}" if tag else arch
    model = _pretrained(full, **kwargs)
    tag = tag or model.pretrained_cfg.get("tag") or "default"
    return BuiltModel(
        model, _spec(arch, model, tag), dict(model.state_dict()), f"timm {arch}.{tag}"
    )


def _pretrained(full: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(full, pretrained=True)``, with a clear error when the weights are
    neither cached nor downloadable (the Hub for weights with a Hub id, as timm prefers)."""
    cfg = timm.models.get_pretrained_cfg(full)

    def load() -> nn.Module:
        return timm.create_model(full, pretrained=True, **kwargs)

    label = f"timm:{full}" + (f".{cfg.tag}" if cfg is not None and "." not in full else "")
    if cfg is not None and cfg.hf_hub_id:
        return from_hf_hub(label, cfg.hf_hub_id, load)
    if cfg is not None and cfg.url:
        return from_url(label, cfg.url, load)
    return load()


def _split_tag(name: str, weights: Any) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise SpecError(f"no timm model '{arch}'" + did_you_mean(arch, names(), f"{PREFIX}:"))
    if isinstance(weights, str) and weights.upper() != "DEFAULT":
        if tag and tag != weights:
            raise SpecError(
                f"timm:{name} names tag '{tag}' but {option('weights', weights)}; pass one"
            )
        tag = weights
    if tag and (weights is None or weights is False):
        raise SpecError(
            f"timm:{name} names pretrained tag '{tag}' but no weights were asked for; "
            f"pass {option('weights', 'DEFAULT')} to load them, or drop the tag"
        )
    if tag:
        available = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag not in available:
            raise SpecError(
                f"timm:{arch} has no pretrained tag '{tag}'; available: {', '.join(available) or 'none'}"
                + did_you_mean(tag, available)
            )
    return arch, tag or None


def _spec(arch: str, model: nn.Module, tag: str | None) -> ModelSpec:
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    by_id = {id(m): p for p, m in model.named_modules()}
    head_paths = tuple(by_id[id(h)] for h in heads if id(h) in by_id)
    config = timm.data.resolve_model_data_config(model)
    # pretrained_cfg names the size the weights were trained at; a model built with another
    # img_size (vit_tiny_patch16_224 with img_size=64) takes that one.
    size = declared_image_size(model) or tuple(config["input_size"][1:])
    inferred = infer_spec(model, f"{PREFIX}:{arch}", head_path=head_paths or None, input_size=size)
    names_ = [n for n, _ in model.named_parameters()]
    groups = inferred.layer_groups
    if hasattr(model, "group_matcher"):
        ordinals = timm.models.group_parameters(
            model, model.group_matcher(coarse=True), reverse=True
        )
        groups = groups_from_ordinals(names_, ordinals, inferred.head_paths)
    preprocessing = Preprocessing(
        input_size=(inferred.in_chans, *size),
        mean=_per_channel(config["mean"], inferred.in_chans),
        std=_per_channel(config["std"], inferred.in_chans),
        interpolation=config.get("interpolation", "bicubic"),
        crop_pct=config.get("crop_pct", 0.875),
        crop_mode=config.get("crop_mode", "center"),
        fixed_input_size=bool(model.pretrained_cfg.get("fixed_input_size", False)),
    )
    return ModelSpec(
        name=f"{PREFIX}:{arch}",
        num_classes=inferred.num_classes,
        head_paths=inferred.head_paths,
        feature_dim=inferred.feature_dim,
        first_conv=inferred.first_conv,
        in_chans=inferred.in_chans,
        layer_groups=groups,
        preprocessing=preprocessing,
        weights=tag,
        classes=_imagenet_classes(model) if tag else None,
    )


def _imagenet_classes(model: nn.Module) -> tuple[str, ...] | None:
    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        return None
    descriptions = timm.data.ImageNetInfo(subset).label_descriptions()
    # "tench, Tinca tinca" -> "tench": the first lemma is the class's common name.
    return tuple(d.split(",")[0].strip() for d in descriptions)


def _per_channel(values: Any, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels
