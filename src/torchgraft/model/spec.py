"""ModelSpec: the anatomy of a model that every other part of torchgraft reads.

A spec is plain, frozen data (JSON round-trip with :meth:`ModelSpec.to_dict` and
:meth:`ModelSpec.from_dict`). :func:`torchgraft.create_model` attaches one to the model it
returns (``model.torchgraft_spec``); :func:`torchgraft.spec_of` (in :mod:`.anatomy`) returns
it, or infers one for a plain ``nn.Module`` the tool has never seen. This module is pure
data and imports nothing else of torchgraft's but its errors and wording.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import SpecError
from ..wording import listing

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_SIDE",
    "SPEC_ATTRIBUTE",
    "LayerGroup",
    "ModelSpec",
    "Preprocessing",
    "attach_spec",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The largest image side torchgraft prepares: the input, and the resize before the crop
#: (``side / crop_pct``). Beyond it one image costs gigabytes (a 40,000² input, or a crop of
#: 1e-9 that asks Pillow for a side of 1.6e10); configs and saved records are held to it.
MAX_SIDE = 8192

#: The attribute under which :func:`torchgraft.create_model` stores a model's spec.
SPEC_ATTRIBUTE = "torchgraft_spec"


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for the model (timm's ``pretrained_cfg`` vocabulary).

    ``input_size`` is (channels, height, width). Evaluation resizes the short side to
    ``height / crop_pct`` and takes a ``crop_mode`` crop of ``height`` x ``width``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    fixed_input_size: bool = False

    @property
    def resize_size(self) -> int:
        """Short-side size before the centre crop."""
        return round(self.input_size[1] / self.crop_pct)

    def with_channels(self, in_chans: int) -> Preprocessing:
        """The same preprocessing for ``in_chans`` input channels.

        Mean and std are averaged over the original channels when the count changes, which
        is what the `sum`/`mean` first-conv adaptations expect of a grey image.
        """
        if in_chans == self.input_size[0]:
            return self
        mean = sum(self.mean) / len(self.mean)
        std = sum(self.std) / len(self.std)
        return dataclasses.replace(
            self,
            input_size=(in_chans, *self.input_size[1:]),
            mean=(mean,) * in_chans,
            std=(std,) * in_chans,
        )


@dataclass(frozen=True, repr=False)
class LayerGroup:
    """A named slice of the model between stem and head.

    ``members`` are module paths or parameter names. A parameter belongs to the member
    equal to its name or the longest one that is a dotted prefix of it (``layer1`` holds
    ``layer1.0.conv1.weight`` but not ``layer10.weight``).
    """

    name: str
    members: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<LayerGroup {self.name}: {listing(self.members)}>"


@dataclass(frozen=True, repr=False)
class ModelSpec:
    """Everything downstream needs to know about a model's anatomy.

    Attributes:
        name: canonical spec string, e.g. ``"torchvision:resnet50"``.
        weights: the weights the model was created with (enum name, timm tag or file), or None.
        num_classes: output width of the main head.
        head_paths: module paths of the classifier(s), main head first, auxiliary heads after.
        feature_dim: input width of the main head.
        first_conv: module path of the input convolution (None for models without one).
        in_chans: input channels the model expects.
        layer_groups: groups from stem to head; the last one is always ``"head"``.
        preprocessing: input size, normalisation and resize/crop policy.
        classes: class names of the head's outputs, when known.
    """

    name: str
    num_classes: int
    head_paths: tuple[str, ...]
    feature_dim: int
    first_conv: str | None
    in_chans: int
    layer_groups: tuple[LayerGroup, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    weights: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise SpecError(
                f"{self.name}: {len(self.classes)} class names given for a head with "
                f"{self.num_classes} outputs; pass exactly one name per output"
            )

    def __repr__(self) -> str:
        # One line: a spec with ImageNet class names would otherwise print 1,000 of them.
        # A weights file is named by its file name; the full path is in spec.weights.
        weights = f"@{self.weights.rsplit('/', 1)[-1]}" if self.weights else ""
        classes = f" ({listing(self.classes, 2)})" if self.classes else ""
        size = "×".join(str(n) for n in self.preprocessing.input_size)
        names = self.group_names
        groups = " … ".join(names[:1] + names[-1:]) if len(names) > 2 else ", ".join(names)
        return (
            f"<ModelSpec {self.name}{weights}: head {self.head_path} "
            f"({self.feature_dim} features → {self.num_classes} classes{classes}), "
            f"{len(names)} layer groups ({groups}), input {size}>"
        )

    @property
    def head_path(self) -> str:
        """Path of the main classifier."""
        return self.head_paths[0]

    @property
    def library(self) -> str:
        """``torchvision``, ``timm``, ``module`` (a user's builder) or ``custom`` (inferred)."""
        prefix = self.name.split(":", 1)[0]
        if prefix in ("torchvision", "timm", "custom"):
            return prefix
        return "module" if ":" in self.name else "custom"

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(group.name for group in self.layer_groups)

    def group_of(self, parameter_names: Iterable[str]) -> dict[str, str]:
        """Map each parameter name to the name of the layer group that holds it.

        Raises:
            SpecError: a parameter no group holds (the model changed after the spec was made).
        """
        owner: dict[str, str] = {}
        for group in self.layer_groups:
            for member in group.members:
                owner[member] = group.name
        result: dict[str, str] = {}
        uncovered: list[str] = []
        for name in parameter_names:
            group_name = _longest_member(name, owner)
            if group_name is None:
                uncovered.append(name)
            else:
                result[name] = group_name
        if uncovered:
            raise SpecError(
                f"{self.name}: no layer group holds {_preview(uncovered)}; the model changed "
                "after its spec was made. Rebuild the spec with torchgraft.spec_of(model, refresh=True)"
            )
        return result

    def with_head(
        self,
        num_classes: int,
        classes: tuple[str, ...] | None = None,
        head_paths: tuple[str, ...] | None = None,
    ) -> ModelSpec:
        """The spec after the head was replaced by one with ``num_classes`` outputs."""
        paths = head_paths or self.head_paths
        groups = tuple(
            LayerGroup("head", paths) if g.name == "head" else g for g in self.layer_groups
        )
        return dataclasses.replace(
            self, num_classes=num_classes, classes=classes, head_paths=paths, layer_groups=groups
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            SpecError: a field is missing or unknown.
        """
        try:
            fields = dict(data)
            fields["head_paths"] = tuple(fields["head_paths"])
            fields["layer_groups"] = tuple(
                LayerGroup(g["name"], tuple(g["members"])) for g in fields["layer_groups"]
            )
            pre = dict(fields.get("preprocessing") or {})
            for key in ("input_size", "mean", "std"):
                if key in pre:
                    pre[key] = tuple(pre[key])
            fields["preprocessing"] = Preprocessing(**pre)
            if fields.get("classes") is not None:
                fields["classes"] = tuple(fields["classes"])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise SpecError(f"not a valid model spec document: {exc}") from exc


def attach_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Store ``spec`` on ``model`` (as ``model.torchgraft_spec``) and return the model."""
    # object.__setattr__ keeps nn.Module from treating the spec as a submodule or buffer.
    object.__setattr__(model, SPEC_ATTRIBUTE, spec)
    return model


def _longest_member(name: str, owner: Mapping[str, str]) -> str | None:
    candidate = name
    while True:
        if candidate in owner:
            return owner[candidate]
        if "." not in candidate:
            return owner.get("")
        candidate = candidate.rsplit(".", 1)[0]


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
