"""init_new_layers: only what was not loaded, with the rule each module type calls for."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from torch import nn

import torchgraft as tg
from torchgraft.errors import ConfigError
from torchgraft.policies.initializers import SCHEMES, init_new_layers


@pytest.fixture(scope="module")
def pretrained_source() -> dict[str, torch.Tensor]:
    """A 1000-class resnet18 state_dict standing in for downloaded weights."""
    torch.manual_seed(123)
    return torchvision.models.resnet18().state_dict()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_keys_the_report_lists_are_written(pretrained_source, scheme):
    model = tg.create_model("torchvision:resnet18", num_classes=5)
    report = tg.graft(model, pretrained_source)
    assert report.missing == ["fc.weight", "fc.bias"]  # the replaced head: shape mismatch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = init_new_layers(model, report, scheme=scheme)
    assert summary.keys == report.missing
    after = model.state_dict()
    for key, value in pretrained_source.items():
        if key not in report.missing:
            assert torch.equal(after[key], value), f"loaded {key} was touched"
    if scheme == "zero":
        assert not after["fc.weight"].any()
        assert not after["fc.bias"].any()
    else:
        assert not torch.equal(after["fc.weight"], before["fc.weight"])
    if scheme != "keep":
        assert not after["fc.bias"].any()


def test_a_graft_plan_and_a_list_of_names_work_too(pretrained_source):
    model = tg.create_model("torchvision:resnet18", num_classes=5)
    plan = tg.plan_graft(model, pretrained_source)
    assert init_new_layers(model, plan, "tutorial").keys == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = init_new_layers(model, ["fc.bias", "layer4.1.bn2.weight"], scheme="kaiming")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= {"fc.bias", "layer4.1.bn2.weight"}
    assert torch.equal(after["fc.weight"], before["fc.weight"])  # its bias alone was asked for
    assert torch.equal(after["layer4.1.bn2.weight"], torch.ones(512))
    assert [e.rule for e in summary.entries] == ["zeros", "constant 1"]


class Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3)
        self.bn = nn.BatchNorm2d(128)
        self.fc = nn.Linear(512, 1000)
        self.register_buffer("table", torch.arange(6.0))

    def forward(self, x):
        return self.fc(x)


ALL_KEYS = [
    "conv.weight",
    "conv.bias",
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
    "fc.weight",
    "fc.bias",
    "table",
]


def std_close(tensor: torch.Tensor, expected: float, tolerance: float = 0.05) -> bool:
    return abs(tensor.std().item() / expected - 1) < tolerance


def test_scheme_rules_by_module_type():
    layers = Layers()
    layers.bn.running_mean.fill_(3.0)
    init_new_layers(layers, ALL_KEYS, "tutorial")
    assert std_close(layers.conv.weight, math.sqrt(2 / (3 * 3 * 128)))
    assert std_close(layers.fc.weight, 0.01)
    assert torch.equal(layers.bn.weight, torch.ones(128))
    assert not layers.bn.running_mean.any()
    assert torch.equal(layers.bn.running_var, torch.ones(128))
    assert torch.equal(layers.table, torch.arange(6.0))  # a buffer the module computes

    init_new_layers(layers, ALL_KEYS, "kaiming")
    assert std_close(layers.conv.weight, math.sqrt(2 / (3 * 3 * 128)))  # fan_out
    assert std_close(layers.fc.weight, math.sqrt(2 / 512))  # fan_in

    init_new_layers(layers, ALL_KEYS, "xavier")
    bound = math.sqrt(6 / (512 + 1000))
    assert layers.fc.weight.abs().max() <= bound
    assert std_close(layers.fc.weight, bound / math.sqrt(3))

    init_new_layers(layers, ALL_KEYS, "trunc_normal")
    assert layers.fc.weight.abs().max() <= 0.04
    assert std_close(layers.fc.weight, 0.02 * 0.88, 0.1)

    init_new_layers(layers, ALL_KEYS, "zero")
    assert not layers.conv.weight.any()
    assert not layers.fc.weight.any()
    assert torch.equal(layers.bn.weight, torch.ones(128))  # norms stay 1/0, not dead


def test_keep_is_the_modules_own_default():
    layers = Layers()
    reference = Layers()
    torch.manual_seed(7)
    reference.fc.reset_parameters()
    torch.manual_seed(7)
    summary = init_new_layers(layers, ["fc.weight", "fc.bias"], "keep")
    assert torch.equal(layers.fc.weight, reference.fc.weight)
    assert torch.equal(layers.fc.bias, reference.fc.bias)  # one reset, as the module does it
    assert summary.entries[0].rule == "Linear.reset_parameters()"


def test_tokens_get_trunc_normal_and_generators_reproduce(build):
    model = build["timm_test_vit"]()
    keys = ["cls_token", "pos_embed", "head.weight"]
    first = init_new_layers(model, keys, "kaiming", generator=torch.Generator().manual_seed(3))
    values = [model.state_dict()[k].clone() for k in keys]
    init_new_layers(model, keys, "kaiming", generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in zip(keys, values, strict=True))
    assert [e.rule for e in first.entries][:2] == ["trunc_normal(std=0.02)"] * 2
    assert model.pos_embed.abs().max() <= 0.04
    assert model.pos_embed.any()


def test_summary_forms(pretrained_source):
    model = tg.create_model("torchvision:resnet18", num_classes=5)
    summary = init_new_layers(model, tg.graft(model, pretrained_source), "kaiming")
    data = json.loads(summary.to_json())
    assert data["scheme"] == "kaiming"
    assert [e["key"] for e in data["entries"]] == [
        "fc.weight",
        "fc.bias",
    ]
    assert "kaiming_normal(fan_in, relu)" in str(summary)
    assert "nothing to initialise" in str(init_new_layers(model, [], "kaiming"))


@pytest.mark.parametrize(
    ("names", "scheme", "message"),
    [
        (["fc.weight"], "he", "unknown init scheme"),
        (["fc.wieght"], "kaiming", "not in"),
        ("fc.weight", "kaiming", "list of state_dict"),
    ],
)
def test_bad_input_raises_config_errors(names, scheme, message):
    layers = Layers()
    before = {k: v.clone() for k, v in layers.state_dict().items()}
    with pytest.raises(ConfigError, match=message):
        init_new_layers(layers, names, scheme)
    assert all(torch.equal(v, before[k]) for k, v in layers.state_dict().items())
