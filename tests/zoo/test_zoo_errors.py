"""Zoo misses say what was meant; local ``package.module:callable`` builders."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch

import torchgraft as tg

# --------------------------------------------------------------------------- helpful misses


@pytest.mark.parametrize(
    ("spec", "suggestion"),
    [
        ("torchvision:resnt50", "'torchvision:resnet50'"),
        ("timm:resnet5O", "'timm:resnet50'"),
        ("torchvison:resnet50", "'torchvision'"),
    ],
)
def test_unknown_model_suggests_close_names(spec, suggestion):
    with pytest.raises(tg.SpecError, match="did you mean") as info:
        tg.create_model(spec)
    assert suggestion in str(info.value)


def test_bare_name_suggests_both_libraries():
    with pytest.raises(tg.SpecError) as info:
        tg.create_model("resnet50")
    message = str(info.value)
    assert "names no library" in message
    assert "'torchvision:resnet50'" in message
    assert "'timm:resnet50'" in message


def test_bare_unknown_name_explains_the_spec_forms():
    with pytest.raises(tg.SpecError, match="torchvision:NAME"):
        tg.create_model("resnt50")


@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec_raises_spec_error(spec):
    with pytest.raises(tg.SpecError):
        tg.create_model(spec)


def test_unknown_torchvision_weights_list_the_available_ones():
    with pytest.raises(tg.SpecError) as info:
        tg.create_model("torchvision:resnet50", weights="IMAGENET1K_V9")
    message = str(info.value)
    assert "IMAGENET1K_V9" in message
    assert "IMAGENET1K_V1" in message
    assert "IMAGENET1K_V2" in message


def test_unknown_timm_tag_lists_the_available_ones(torch_home):
    with pytest.raises(tg.SpecError) as info:
        tg.create_model("timm:resnet18.no_such_tag", weights=True)
    message = str(info.value)
    assert "no_such_tag" in message
    assert "a1_in1k" in message
    with pytest.raises(tg.SpecError, match="no_such_tag"):
        tg.create_model("timm:resnet18", weights="no_such_tag")


def test_timm_tag_without_weights_is_refused():
    with pytest.raises(tg.SpecError, match="weights"):
        tg.create_model("timm:resnet18.a1_in1k")


def test_unknown_library_module_is_a_spec_error():
    with pytest.raises(tg.SpecError, match="cannot import"):
        tg.create_model("tg_no_such_package_xyz.models:build")


# --------------------------------------------------------------------------- local builders

BUILDERS = """
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def with_num_classes(num_classes=10):
    return SmallNet(num_classes=num_classes)


def without_num_classes():
    return SmallNet(num_classes=10)


def with_kwargs(**kwargs):
    return SmallNet(**kwargs)


def not_a_module(num_classes=10):
    return {"fc.weight": torch.zeros(num_classes, 8)}


def needs_depth(depth):
    return SmallNet()


CONSTANT = 3
"""


@pytest.fixture
def builders(tmp_path, monkeypatch) -> str:
    """A fresh importable module of builders; returns its name."""
    name = f"tg_builders_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_builder_with_num_classes_gets_it(builders):
    model = tg.create_model(f"{builders}:with_num_classes", num_classes=3)
    assert model.fc.out_features == 3
    spec = model.torchgraft_spec
    assert spec.name == f"{builders}:with_num_classes"
    assert spec.library == "module"
    assert spec.head_paths == ("fc",)
    assert spec.num_classes == 3
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_builder_without_num_classes_gets_its_head_replaced(builders):
    model = tg.create_model(f"{builders}:without_num_classes", num_classes=3)
    assert model.fc.out_features == 3
    assert model.fc.in_features == 8
    assert model.torchgraft_spec.num_classes == 3
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_builder_without_in_chans_gets_its_stem_replaced(builders):
    model = tg.create_model(f"{builders}:without_num_classes", in_chans=1)
    assert model.conv.in_channels == 1
    assert model.torchgraft_spec.in_chans == 1
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_builder_taking_kwargs_receives_num_classes_and_in_chans(builders):
    model = tg.create_model(f"{builders}:with_kwargs", num_classes=4, in_chans=2)
    assert model.fc.out_features == 4
    assert model.conv.in_channels == 2


def test_a_class_is_a_builder_too(builders):
    model = tg.create_model(f"{builders}:SmallNet", num_classes=6)
    assert model.fc.out_features == 6


def test_builder_kwargs_are_passed_through(builders):
    model = tg.create_model(f"{builders}:needs_depth", depth=3)
    assert model.fc.out_features == 10
    with pytest.raises(tg.SpecError, match="needs_depth"):
        tg.create_model(f"{builders}:needs_depth")  # missing argument


def test_builder_returning_a_non_module_raises_spec_error(builders):
    with pytest.raises(tg.SpecError, match=r"dict.*not an nn\.Module"):
        tg.create_model(f"{builders}:not_a_module")


def test_non_callable_target_raises_spec_error(builders):
    with pytest.raises(tg.SpecError, match="not a callable"):
        tg.create_model(f"{builders}:CONSTANT")


def test_missing_callable_suggests_close_names(builders):
    with pytest.raises(tg.SpecError, match="did you mean") as info:
        tg.create_model(f"{builders}:with_num_clases")
    assert "with_num_classes" in str(info.value)


def test_local_builder_has_no_named_weights(builders):
    with pytest.raises(tg.SpecError, match="named weights"):
        tg.create_model(f"{builders}:with_num_classes", weights="DEFAULT")
