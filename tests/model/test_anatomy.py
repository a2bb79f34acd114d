"""Anatomy of models never seen before: head, aux heads, first conv, groups, from behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft as tg
from handmade_models import DictOutput, LeNet, TwoHeadsConcat
from torchgraft.model.anatomy import infer_spec, spec_of

# --------------------------------------------------------------------------- models


class FlatMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x):
        return self.net(x)


class NestedDictHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                "body": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2), nn.ReLU()),
                "out": nn.ModuleDict({"norm": nn.LayerNorm(16), "logits": nn.Linear(16, 7)}),
            }
        )

    def forward(self, x):
        x = self.blocks["body"](self.blocks["stem"](x)).mean((2, 3))
        return self.blocks["out"]["logits"](self.blocks["out"]["norm"](x))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5)
        self.conv2 = nn.Conv1d(16, 32, 3)
        self.fc = nn.Linear(32, 6)

    def forward(self, x):  # (B, C=4, L)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(-1))


class AuxNet(nn.Module):
    """An auxiliary classifier that only runs in training mode (Inception style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.stage = nn.Conv2d(8, 16, 3)
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 9))
        self.fc = nn.Linear(16, 9)

    def forward(self, x):
        x = F.relu(self.stem(x))
        aux = self.aux(x) if self.training else None
        out = self.fc(F.relu(self.stage(x)).mean((2, 3)))
        return (out, aux) if self.training else out


class DataDependent(nn.Module):
    """Python control flow on a value: cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if x.abs().sum().item() >= 0:  # .item() needs real data
            x = F.relu(x)
        return self.fc(x.mean((2, 3)))


class ReshapeHead(nn.Module):
    """The last Linear gives 10 values, a functional reshape turns them into 5 outputs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.relu(self.body(x))).view(x.shape[0], 2, 5).mean(1)


class PatchEmbedder(nn.Module):
    """An embedding model: one vector per patch, (B, N, D), no classifier."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 24, 8, stride=8)
        self.proj = nn.Linear(24, 16)

    def forward(self, x):
        return self.proj(self.patch(x).flatten(2).transpose(1, 2))


class Calibrated(nn.Module):
    """A classifier followed by a square calibration layer: the probe picks the last one."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.cls = nn.Linear(32, 10)
        self.calib = nn.Linear(10, 10)

    def forward(self, x):
        return self.calib(self.cls(self.body(x)))


class BodyNamedHead(nn.Module):
    """A final conv block called ``head`` (detection naming) before the real classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.stage1 = nn.Conv2d(8, 8, 3)
        self.stage2 = nn.Conv2d(8, 16, 3)
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.stage2(F.relu(self.stage1(F.relu(self.stem(x)))))
        return self.fc(self.head(x).mean((2, 3)))


# (factory, head_paths, feature_dim, num_classes, first_conv, in_chans, input shape)
CASES = {
    "lenet": (LeNet, ("fc3",), 84, 10, "conv1", 1, (2, 1, 32, 32)),
    "mlp": (FlatMLP, ("net.4",), 32, 4, None, 20, (2, 20)),
    "nested_dict": (
        NestedDictHead,
        ("blocks.out.logits",),
        16,
        7,
        "blocks.stem.0",
        3,
        (2, 3, 32, 32),
    ),
    "dict_output": (DictOutput, ("classifier",), 12, 6, "features.0", 3, (2, 3, 32, 32)),
    "conv1d": (Conv1dNet, ("fc",), 32, 6, "conv1", 4, (2, 4, 50)),
    "aux": (AuxNet, ("fc", "aux.2"), 16, 9, "stem", 3, (2, 3, 32, 32)),
    "data_dependent": (DataDependent, ("fc",), 8, 5, "conv", 3, (2, 3, 32, 32)),
}


def _under(name, paths):
    return any(name == p or name.startswith(p + ".") for p in paths)


@pytest.mark.parametrize("case", CASES)
def test_find_head_and_spec_of_a_model_never_seen(case):
    factory, heads, feature_dim, num_classes, first_conv, in_chans, _ = CASES[case]
    model = factory()

    head = tg.find_head(model)
    assert head.path == heads[0]
    assert head.module is model.get_submodule(heads[0])
    assert head.in_features == feature_dim
    assert head.num_classes == num_classes
    assert head.aux_paths == heads[1:]

    spec = tg.spec_of(model)
    assert spec.name == f"custom:{factory.__name__}"
    assert spec.library == "custom"
    assert spec.head_paths == heads
    assert spec.feature_dim == feature_dim
    assert spec.num_classes == num_classes
    assert spec.first_conv == first_conv
    assert spec.in_chans == in_chans
    assert spec.classes is None


@pytest.mark.parametrize("case", CASES)
def test_inferred_groups_cover_every_parameter_once_with_head_last(case):
    factory, heads, *_ = CASES[case]
    model = factory()
    spec = tg.spec_of(model)
    names = [n for n, _ in model.named_parameters()]
    assert spec.group_names[-1] == "head"
    assert spec.layer_groups[-1].members == heads
    assert len(set(spec.group_names)) == len(spec.group_names)
    owner = spec.group_of(names)
    assert sorted(owner) == sorted(names)
    assert {n for n, g in owner.items() if g == "head"} == {n for n in names if _under(n, heads)}
    assert set(owner.values()) == set(spec.group_names)  # no empty group


def test_lenet_probe_finds_its_only_input_size():
    spec = tg.spec_of(LeNet())
    assert spec.preprocessing.input_size == (1, 32, 32)
    assert len(spec.preprocessing.mean) == 1
    assert spec.layer_groups[0].name == "stem"


@pytest.mark.parametrize(
    ("factory", "head"), [(LeNet, "fc3"), (DataDependent, "fc")], ids=["meta", "real-fallback"]
)
def test_the_probe_changes_nothing_in_the_model(factory, head):
    model = factory()
    model.train()
    model.get_submodule(head).eval()  # a mixed train/eval state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    model.get_submodule(head).weight.requires_grad_(False)

    assert spec_of(model).head_path == head

    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # BatchNorm statistics included
    assert model.get_submodule(head).weight.requires_grad is False
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not hasattr(model, "torchgraft_spec")  # inferring does not attach


def test_infer_spec_with_explicit_example_input():
    spec = infer_spec(Conv1dNet(), example_input=torch.randn(3, 4, 17))
    assert spec.head_paths == ("fc",)
    assert spec.in_chans == 4


@pytest.mark.parametrize(
    ("factory", "layer"),
    [(ReshapeHead, "fc"), (TwoHeadsConcat, "b"), (PatchEmbedder, "proj")],
    ids=["functional-reshape", "concatenated-heads", "embedding-model"],
)
def test_no_single_head_raises_head_error_naming_the_layer(factory, layer):
    model = factory()
    with pytest.raises(tg.HeadError) as info:
        tg.find_head(model)
    message = str(info.value)
    assert f"'{layer}'" in message
    assert "head_path=" in message
    with pytest.raises(tg.HeadError):
        tg.spec_of(model)


def test_head_path_override_names_a_different_head():
    model = Calibrated()
    assert tg.find_head(model).path == "calib"  # what behaviour alone suggests
    spec = infer_spec(model, head_path="cls")
    assert spec.head_paths == ("cls",)
    assert spec.feature_dim == 32
    assert spec.layer_groups[-1].members == ("cls",)
    owner = spec.group_of([n for n, _ in model.named_parameters()])
    assert owner["cls.weight"] == "head"
    assert owner["calib.weight"] != "head"


def test_head_path_override_rescues_a_model_without_a_single_head():
    spec = tg.spec_of(TwoHeadsConcat(), head_path="b")
    assert spec.head_paths == ("b",)
    assert spec.feature_dim == 16


def test_unknown_head_path_raises_head_error_listing_modules():
    with pytest.raises(tg.HeadError, match="body"):
        infer_spec(Calibrated(), head_path="classifier")


def test_a_body_module_called_head_is_not_the_head_group():
    model = BodyNamedHead()
    spec = tg.spec_of(model)
    assert spec.head_paths == ("fc",)
    assert spec.group_names.count("head") == 1
    owner = spec.group_of([n for n, _ in model.named_parameters()])
    assert owner["head.0.weight"] != "head"
