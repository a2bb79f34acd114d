"""ModelSpec: JSON round trip, group ownership by longest dotted prefix, validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import torchgraft as tg
from torchgraft.model.spec import IMAGENET_MEAN, IMAGENET_STD, LayerGroup, ModelSpec, Preprocessing


def _spec(**overrides) -> ModelSpec:
    fields = {
        "name": "torchvision:resnet18",
        "num_classes": 3,
        "head_paths": ("fc",),
        "feature_dim": 512,
        "first_conv": "conv1",
        "in_chans": 3,
        "layer_groups": (
            LayerGroup("stem", ("conv1", "bn1")),
            LayerGroup("layer1", ("layer1",)),
            LayerGroup("layer10", ("layer10",)),
            LayerGroup("head", ("fc",)),
        ),
    }
    fields.update(overrides)
    return ModelSpec(**fields)


def test_round_trip_through_json_text():
    spec = _spec(
        weights="IMAGENET1K_V1",
        classes=("cat", "dog", "owl"),
        preprocessing=Preprocessing(
            input_size=(1, 96, 128),
            mean=(0.5,),
            std=(0.25,),
            interpolation="bicubic",
            crop_pct=0.9,
            crop_mode="squash",
            fixed_input_size=True,
        ),
    )
    text = json.dumps(spec.to_dict())
    back = ModelSpec.from_dict(json.loads(text))
    assert back == spec
    # Tuples come back as tuples (frozen, hashable), not lists.
    assert isinstance(back.head_paths, tuple)
    assert isinstance(back.layer_groups[0].members, tuple)
    assert isinstance(back.preprocessing.input_size, tuple)
    assert isinstance(back.classes, tuple)
    assert hash(back.layer_groups) == hash(spec.layer_groups)


def test_to_dict_is_plain_json_data():
    data = _spec().to_dict()
    assert data["head_paths"] == ["fc"]
    assert data["layer_groups"][0] == {"name": "stem", "members": ["conv1", "bn1"]}
    assert data["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    assert data["preprocessing"]["std"] == list(IMAGENET_STD)
    assert data["classes"] is None


def test_round_trip_of_a_real_model_spec():
    spec = tg.create_model("torchvision:squeezenet1_1").torchgraft_spec
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("missing", ["name", "head_paths", "layer_groups", "num_classes"])
def test_from_dict_with_a_missing_field_raises_spec_error(missing):
    data = _spec().to_dict()
    del data[missing]
    with pytest.raises(tg.SpecError):
        ModelSpec.from_dict(data)


def test_from_dict_with_an_unknown_field_raises_spec_error():
    data = _spec().to_dict()
    data["colour"] = "blue"
    with pytest.raises(tg.SpecError):
        ModelSpec.from_dict(data)


def test_group_of_uses_the_longest_dotted_prefix():
    spec = _spec()
    owner = spec.group_of(
        ["conv1.weight", "bn1.bias", "layer1.0.w", "layer10.w", "layer1.weight", "fc.weight"]
    )
    assert owner == {
        "conv1.weight": "stem",
        "bn1.bias": "stem",
        "layer1.0.w": "layer1",
        "layer10.w": "layer10",  # "layer1" is a string prefix but not a dotted one
        "layer1.weight": "layer1",
        "fc.weight": "head",
    }


def test_group_of_prefers_the_more_specific_member():
    spec = _spec(
        layer_groups=(
            LayerGroup("body", ("blocks",)),
            LayerGroup("late", ("blocks.3",)),
            LayerGroup("head", ("fc",)),
        )
    )
    owner = spec.group_of(["blocks.3.conv.weight", "blocks.30.conv.weight", "blocks.2.w"])
    assert owner == {
        "blocks.3.conv.weight": "late",
        "blocks.30.conv.weight": "body",
        "blocks.2.w": "body",
    }


def test_group_of_matches_a_parameter_named_exactly_as_a_member():
    spec = _spec(layer_groups=(LayerGroup("stem", ("cls_token",)), LayerGroup("head", ("fc",))))
    assert spec.group_of(["cls_token"]) == {"cls_token": "stem"}


def test_uncovered_parameter_raises_spec_error_naming_it():
    spec = _spec()
    with pytest.raises(tg.SpecError, match=r"layer2\.0\.w"):
        spec.group_of(["layer1.0.w", "layer2.0.w"])
    # "layer1" must not swallow "layer1x" either.
    with pytest.raises(tg.SpecError, match="layer1x"):
        spec.group_of(["layer1x.w"])


def _reference_owner(name: str, groups: dict[str, str]) -> str | None:
    """Longest member equal to ``name`` or a dotted prefix of it (written independently)."""
    best = None
    for member, group in groups.items():
        if (name == member or name.startswith(member + ".")) and (
            best is None or len(member) > len(best[0])
        ):
            best = (member, group)
    return best[1] if best else None


_segment = st.sampled_from(["a", "b", "ab", "a1", "1", "10"])
_path = st.lists(_segment, min_size=1, max_size=4).map(".".join)


@given(members=st.lists(_path, min_size=1, max_size=6, unique=True), names=st.lists(_path))
def test_group_of_agrees_with_a_reference_implementation(members, names):
    owner_of_member = {m: f"g{i}" for i, m in enumerate(members)}
    spec = _spec(layer_groups=tuple(LayerGroup(g, (m,)) for m, g in owner_of_member.items()))
    expected = {n: _reference_owner(n, owner_of_member) for n in names}
    if any(v is None for v in expected.values()):
        with pytest.raises(tg.SpecError):
            spec.group_of(names)
    else:
        assert spec.group_of(names) == expected


def test_classes_of_the_wrong_length_raise_spec_error():
    with pytest.raises(tg.SpecError, match="2 class names"):
        _spec(classes=("cat", "dog"))
    with pytest.raises(tg.SpecError):
        dataclasses.replace(_spec(), classes=("a", "b", "c", "d"))


def test_with_head_updates_width_classes_and_head_group():
    spec = _spec(classes=("a", "b", "c"))
    changed = spec.with_head(5, ("v", "w", "x", "y", "z"), ("fc2",))
    assert changed.num_classes == 5
    assert changed.classes == ("v", "w", "x", "y", "z")
    assert changed.head_paths == ("fc2",)
    assert changed.layer_groups[-1] == LayerGroup("head", ("fc2",))
    assert changed.layer_groups[:-1] == spec.layer_groups[:-1]
    assert spec.num_classes == 3  # frozen: the original is unchanged
    with pytest.raises(tg.SpecError):
        spec.with_head(4, ("a", "b"))


def test_preprocessing_with_channels_averages_mean_and_std():
    grey = Preprocessing().with_channels(1)
    assert grey.input_size == (1, 224, 224)
    assert grey.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert grey.std == pytest.approx((sum(IMAGENET_STD) / 3,))
    assert Preprocessing().with_channels(3) == Preprocessing()
    assert Preprocessing(input_size=(3, 224, 224), crop_pct=0.875).resize_size == 256


@pytest.mark.parametrize(
    ("name", "library"),
    [
        ("torchvision:resnet18", "torchvision"),
        ("timm:resnet18", "timm"),
        ("custom:LeNet", "custom"),
        ("my.pkg:build", "module"),
        ("LeNet", "custom"),
    ],
)
def test_library_is_read_from_the_name(name, library):
    assert _spec(name=name).library == library
