"""Input channels: create_model(in_chans=...) and replace_input_channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

import torchgraft as tg
from torchgraft.model.spec import IMAGENET_MEAN, IMAGENET_STD


def test_torchvision_resnet18_with_one_input_channel():
    model = tg.create_model("torchvision:resnet18", in_chans=1, num_classes=4)
    assert type(model.conv1) is nn.Conv2d
    assert model.conv1.in_channels == 1
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    # Every other setting of the stem is kept.
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == (
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert model.conv1.bias is None
    spec = model.torchgraft_spec
    assert spec.in_chans == 1
    assert spec.first_conv == "conv1"
    assert spec.preprocessing.input_size[0] == 1
    assert spec.preprocessing.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert spec.preprocessing.std == pytest.approx((sum(IMAGENET_STD) / 3,))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_timm_in_chans_goes_to_timm():
    model = tg.create_model("timm:resnet18", in_chans=1, num_classes=4)
    assert model.conv1.in_channels == 1
    assert model.torchgraft_spec.in_chans == 1
    assert len(model.torchgraft_spec.preprocessing.mean) == 1
    assert len(model.torchgraft_spec.preprocessing.std) == 1
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_timm_in_chans_keeps_conv2d_same():
    model = tg.create_model("timm:tf_efficientnet_lite0", in_chans=1)
    assert type(model.conv_stem) is Conv2dSame
    assert model.conv_stem.in_channels == 1
    assert model.torchgraft_spec.preprocessing.mean == (0.5,)  # tf_ models: mean = std = 0.5
    assert model.torchgraft_spec.preprocessing.std == (0.5,)


def test_replace_input_channels_keeps_conv2d_same_and_its_padding():
    model = tg.create_model("timm:tf_efficientnet_lite0")
    old = model.conv_stem
    assert type(old) is Conv2dSame

    new = tg.replace_input_channels(model, 1)

    assert model.conv_stem is new
    assert new is not old
    assert type(new) is Conv2dSame
    assert new.weight.shape == (32, 1, 3, 3)
    assert (new.stride, new.kernel_size, new.dilation, new.groups) == (
        old.stride,
        old.kernel_size,
        old.dilation,
        old.groups,
    )
    assert old.in_channels == 3  # the old layer itself is not mutated
    # TensorFlow "SAME" padding on an even input with stride 2 pads 0 before, 1 after; a
    # symmetric padding of 1 would give different values.
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), new.weight, new.bias, stride=2)
        symmetric = F.conv2d(x, new.weight, new.bias, stride=2, padding=1)
        got = new(x)
    assert got.shape == (2, 32, 32, 32)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, symmetric)

    spec = model.torchgraft_spec
    assert spec.in_chans == 1
    assert spec.preprocessing.input_size == (1, 224, 224)
    assert spec.preprocessing.mean == (0.5,)
    assert spec.preprocessing.std == (0.5,)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


def test_replace_input_channels_to_more_channels():
    model = tg.create_model("torchvision:resnet18")
    tg.replace_input_channels(model, 5)
    assert model.conv1.weight.shape == (64, 5, 7, 7)
    assert model.torchgraft_spec.in_chans == 5
    assert len(model.torchgraft_spec.preprocessing.mean) == 5
    assert len(model.torchgraft_spec.preprocessing.std) == 5
    assert "conv1.weight" in model.state_dict()
    assert model.state_dict()["conv1.weight"].shape == (64, 5, 7, 7)


def test_replace_input_channels_follows_dtype():
    model = tg.create_model("torchvision:resnet18").to(torch.float64)
    tg.replace_input_channels(model, 1)
    assert model.conv1.weight.dtype == torch.float64


def test_same_channel_count_is_a_no_op():
    model = tg.create_model("torchvision:resnet18")
    old = model.conv1
    assert tg.replace_input_channels(model, 3) is old
    assert model.conv1 is old


def test_invalid_channel_count_raises_spec_error():
    model = tg.create_model("torchvision:resnet18")
    with pytest.raises(tg.SpecError, match="in_chans"):
        tg.replace_input_channels(model, 0)


def test_model_without_a_conv_raises_spec_error():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(tg.SpecError, match="no input convolution"):
        tg.replace_input_channels(model, 1)


def test_grouped_first_conv_raises_spec_error():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, groups=2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(tg.SpecError, match="grouped"):
        tg.replace_input_channels(Grouped(), 1)


def test_plain_module_gets_new_channels_without_a_spec():
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    model = Small()
    tg.replace_input_channels(model, 2)
    assert model.conv.in_channels == 2
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 3)
