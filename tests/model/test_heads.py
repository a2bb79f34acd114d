"""replace_head: plain modules, options (dropout, hidden), dtype/device, old head removal, and
keeping the pretrained rows of shared classes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights

import torchgraft as tg
from handmade_models import DictOutput, LeNet, TwoHeadsConcat
from torchgraft.model.spec import attach_spec

IMAGENET = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])

# --------------------------------------------------------------------------- models


class FlatMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)


class NestedDictHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                "out": nn.ModuleDict({"logits": nn.Linear(8, 7)}),
            }
        )

    def forward(self, x):
        return self.blocks["out"]["logits"](self.blocks["stem"](x).mean((2, 3)))


class Conv1dHead(nn.Module):
    """A 1-D conv net on (B, C, L) whose classifier is a 1x1 Conv1d, averaged over L."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5)
        self.classifier = nn.Conv1d(16, 6, 1)

    def forward(self, x):
        return self.classifier(F.relu(self.conv1(x))).mean(-1)


class ContainerHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.body(x))


def _logits(output):
    return output["logits"] if isinstance(output, dict) else output


# (factory, head path, feature width, input shape)
GENERIC = {
    "lenet": (LeNet, "fc3", 84, (2, 1, 32, 32)),
    "mlp": (FlatMLP, "net.2", 64, (2, 20)),
    "nested_dict": (NestedDictHead, "blocks.out.logits", 8, (2, 3, 16, 16)),
    "dict_output": (DictOutput, "classifier", 12, (2, 3, 16, 16)),
    "conv1d": (Conv1dHead, "classifier", 16, (2, 4, 30)),
}


# --------------------------------------------------------------------------- generic models


@pytest.mark.parametrize("case", GENERIC)
def test_replace_head_of_a_model_never_seen(case):
    factory, path, width, shape = GENERIC[case]
    model = factory()
    old = model.get_submodule(path)

    change = tg.replace_head(model, num_classes=3)

    new = model.get_submodule(path)
    assert new is not old
    assert type(new) is type(old)  # a 1x1 Conv1d head stays a Conv1d
    if isinstance(new, nn.Linear):
        assert (new.in_features, new.out_features) == (width, 3)
    else:
        assert (new.in_channels, new.out_channels, new.kernel_size) == (width, 3, (1,))
    assert change.paths == (path,)
    assert change.spec.num_classes == 3
    assert change.spec.head_paths == (path,)
    assert change.kept_classes == ()
    assert "→3" in change.new[0]
    with torch.no_grad():
        out = _logits(model(torch.randn(shape)))
    assert out.shape == (2, 3)


def test_replace_head_describes_what_it_did():
    change = tg.replace_head(LeNet(), num_classes=3)
    assert str(change) == "fc3: Linear(84→10) -> Linear(84→3)"


def test_no_single_head_raises_head_error():
    model = TwoHeadsConcat()
    with pytest.raises(tg.HeadError, match=r"'b'.*head_path="):
        tg.replace_head(model, num_classes=3)
    assert model.b.out_features == 5  # untouched


def test_head_path_override_on_a_model_without_a_single_head():
    model = TwoHeadsConcat()
    tg.replace_head(model, num_classes=3, head_path="b")
    assert model.b.out_features == 3
    assert model.a.out_features == 5
    assert model(torch.randn(2, 8)).shape == (2, 8)


def test_head_path_override_names_the_layer_to_replace():
    model = FlatMLP()
    first = model.net[0]
    change = tg.replace_head(model, num_classes=64, head_path="net.0")
    assert change.paths == ("net.0",)
    assert model.net[0] is not first
    assert (model.net[0].in_features, model.net[0].out_features) == (20, 64)
    assert model.net[2].out_features == 4  # the detected head is left alone


def test_head_path_naming_a_container_keeps_the_model_working():
    model = ContainerHead()
    tg.replace_head(model, num_classes=3, head_path="classifier")
    with torch.no_grad():
        assert model(torch.randn(2, 8)).shape == (2, 3)


# --------------------------------------------------------------------------- options


def test_dropout_goes_before_the_new_linear():
    model = LeNet()
    tg.replace_head(model, num_classes=3, dropout=0.3)
    head = model.fc3
    assert isinstance(head, nn.Sequential)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert head[0].p == 0.3
    assert (head[1].in_features, head[1].out_features) == (84, 3)
    model.train()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_hidden_layer_has_the_right_widths():
    model = LeNet()
    tg.replace_head(model, num_classes=3, hidden=64)
    head = model.fc3
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (84, 64)
    assert (head[2].in_features, head[2].out_features) == (64, 3)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert tg.find_head(model).num_classes == 3


def test_hidden_with_dropout_puts_dropout_before_each_linear():
    model = LeNet()
    tg.replace_head(model, num_classes=3, hidden=64, dropout=0.25)
    kinds = [type(m) for m in model.fc3]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.fc3[0].p == model.fc3[3].p == 0.25


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range_raises_head_error(dropout):
    with pytest.raises(tg.HeadError, match="dropout"):
        tg.replace_head(LeNet(), num_classes=3, dropout=dropout)


@pytest.mark.parametrize("num_classes", [0, -2])
def test_num_classes_must_be_positive(num_classes):
    with pytest.raises(tg.HeadError):
        tg.replace_head(LeNet(), num_classes=num_classes)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("hidden", [None, 16])
def test_new_layers_follow_the_old_heads_dtype(dtype, hidden):
    model = LeNet().to(dtype)
    tg.replace_head(model, num_classes=3, hidden=hidden)
    assert {p.dtype for p in model.parameters()} == {dtype}
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32, dtype=dtype))
    assert out.dtype == dtype
    assert out.shape == (2, 3)


def test_timm_head_follows_the_models_dtype():
    model = tg.create_model("timm:resnet18")
    model.to(torch.float64)
    tg.replace_head(model, num_classes=3)
    assert model.fc.weight.dtype == torch.float64
    assert model.num_classes == 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18"])
def test_new_layers_follow_the_old_heads_device(spec):
    model = tg.create_model(spec).cuda()
    tg.replace_head(model, num_classes=3, hidden=8)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, device="cuda")).shape == (2, 3)


# --------------------------------------------------------------------------- old head removal


def test_old_head_leaves_parameters_and_state_dict():
    model = LeNet()
    old = model.fc3
    old_weight, old_bias = old.weight, old.bias

    tg.replace_head(model, num_classes=3)

    assert model.fc3 is not old
    assert all(m is not old for m in model.modules())
    live = [p for p in model.parameters()]
    assert all(p is not old_weight and p is not old_bias for p in live)
    state = model.state_dict()
    assert state["fc3.weight"].shape == (3, 84)
    assert state["fc3.bias"].shape == (3,)
    old_ptrs = {old_weight.data_ptr(), old_bias.data_ptr()}
    assert not any(v.data_ptr() in old_ptrs for v in state.values())
    # An optimizer built now trains the new head, never the old one.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = optimizer.param_groups[0]["params"]
    assert any(p is model.fc3.weight for p in params)
    assert not any(p is old_weight for p in params)


def test_replacing_twice_keeps_one_head():
    model = LeNet()
    tg.replace_head(model, num_classes=3)
    tg.replace_head(model, num_classes=4)
    assert model.fc3.out_features == 4
    assert sum(1 for n, _ in model.named_parameters() if n.startswith("fc3.")) == 2


# --------------------------------------------------------------------------- keep_classes


@pytest.fixture
def imagenet_resnet18():
    """A torchvision ResNet-18 whose spec carries the 1000 ImageNet class names."""
    model = tg.create_model("torchvision:resnet18")
    spec = model.torchgraft_spec
    attach_spec(model, dataclasses.replace(spec, classes=tuple(IMAGENET)))
    return model


def _fresh(row: torch.Tensor, old_weight: torch.Tensor) -> bool:
    """True if ``row`` equals no row of the old weight."""
    return not bool((old_weight == row).all(dim=1).any())


def test_keep_classes_copies_the_rows_of_shared_classes(imagenet_resnet18):
    model = imagenet_resnet18
    old_w, old_b = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
    classes = ["goldfish", "my own thing", "tabby", "great white shark"]

    change = tg.replace_head(model, classes=classes, keep_classes=True)

    assert model.fc.out_features == 4
    for new_row, name in [(0, "goldfish"), (2, "tabby"), (3, "great white shark")]:
        old_row = IMAGENET.index(name)
        assert torch.equal(model.fc.weight[new_row], old_w[old_row]), name
        assert torch.equal(model.fc.bias[new_row], old_b[old_row]), name
    assert _fresh(model.fc.weight[1].detach(), old_w)
    assert set(change.kept_classes) == {"goldfish", "tabby", "great white shark"}
    assert model.torchgraft_spec.classes == tuple(classes)
    assert model.torchgraft_spec.num_classes == 4


def test_keep_classes_compares_names_loosely(imagenet_resnet18):
    model = imagenet_resnet18
    old_w = model.fc.weight.detach().clone()
    tg.replace_head(model, classes=["Great_White-Shark", "x"], keep_classes=True)
    assert torch.equal(model.fc.weight[0], old_w[IMAGENET.index("great white shark")])


def test_keep_classes_with_a_list_keeps_only_those(imagenet_resnet18):
    model = imagenet_resnet18
    old_w = model.fc.weight.detach().clone()
    change = tg.replace_head(model, classes=["goldfish", "x", "tabby"], keep_classes=["tabby"])
    assert torch.equal(model.fc.weight[2], old_w[IMAGENET.index("tabby")])
    assert _fresh(model.fc.weight[0].detach(), old_w)  # goldfish not asked for
    assert change.kept_classes == ("tabby",)


def test_keep_classes_in_bfloat16(imagenet_resnet18):
    model = imagenet_resnet18.to(torch.bfloat16)
    old_w = model.fc.weight.detach().clone()
    tg.replace_head(model, classes=["x", "tabby"], keep_classes=True)
    assert model.fc.weight.dtype == torch.bfloat16
    assert torch.equal(model.fc.weight[1], old_w[IMAGENET.index("tabby")])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": ["goldfish", "x"], "keep_classes": ["tabby"]}, "tabby"),  # not in classes
        ({"classes": ["goldfish", "x"], "keep_classes": ["x"]}, "lacks"),  # old head lacks it
        ({"classes": ["goldfish", "x"], "keep_classes": True, "hidden": 8}, "hidden"),
        ({"num_classes": 3, "classes": ["goldfish", "x"]}, "num_classes=3"),
        ({"num_classes": 3, "keep_classes": True}, "classes"),  # no new names
        ({"classes": "goldfish", "keep_classes": True}, "list"),  # one string, not a list
    ],
    ids=["unknown-name", "missing-in-old-head", "with-hidden", "count-mismatch", "no-names", "str"],
)
def test_keep_classes_errors_leave_the_model_unchanged(imagenet_resnet18, kwargs, match):
    model = imagenet_resnet18
    old = model.fc
    with pytest.raises(tg.HeadError, match=match):
        tg.replace_head(model, **kwargs)
    assert model.fc is old
    assert model.torchgraft_spec.num_classes == 1000


def test_keep_classes_needs_class_names_on_the_old_head():
    model = tg.create_model("torchvision:resnet18")  # no weights: no class names
    with pytest.raises(tg.HeadError, match="class names"):
        tg.replace_head(model, classes=["goldfish"], keep_classes=True)
