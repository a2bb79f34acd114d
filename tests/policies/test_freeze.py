"""Freezing policies and the BatchNorm policy, proven with real optimisation steps."""

from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import torch
from torch import nn

import torchgraft as tg
from torchgraft.errors import ConfigError, TorchgraftError
from torchgraft.model.layer_groups import under
from torchgraft.policies.freezing import freeze, has_running_stats, pinned_norms, unfreeze
from torchgraft.policies.optimizer_groups import param_groups


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def stat_norms(model: nn.Module) -> list[str]:
    return [path for path, m in model.named_modules() if has_running_stats(m)]


# --- policies -------------------------------------------------------------------------------


def test_head_policy_trains_exactly_the_head(any_model):
    spec = tg.spec_of(any_model)
    summary = freeze(any_model, "head")
    head = {n for n, _ in any_model.named_parameters() if under(n, spec.head_paths)}
    assert head
    assert trainable_names(any_model) == head
    assert summary.trainable == sum(p.numel() for n, p in any_model.named_parameters() if n in head)
    assert summary.total == sum(p.numel() for p in any_model.parameters())
    assert [g.name for g in summary.groups] == list(spec.group_names)
    # None of these heads holds a BatchNorm: every statistics layer is fixed.
    assert pinned_norms(any_model) == stat_norms(any_model)
    assert summary.fixed_norms == tuple(stat_norms(any_model))


def test_last_n_trains_the_last_groups_and_the_head(build):
    model = build["resnet18"]()
    summary = freeze(model, "last:2")
    prefixes = {n.split(".")[0] for n in trainable_names(model)}
    assert prefixes == {"layer3", "layer4", "fc"}
    counts = {g.name: (g.trainable, g.frozen) for g in summary.groups}
    assert counts["layer2"][0] == 0
    assert counts["layer3"][1] == 0
    assert not any(p.startswith(("layer3", "layer4")) for p in pinned_norms(model))
    freeze(model, "last:0")
    assert {n.split(".")[0] for n in trainable_names(model)} == {"fc"}


def test_none_all_and_group_lists(build):
    model = build["resnet18"]()
    assert freeze(model, "none").frozen == 0
    assert pinned_norms(model) == []
    assert freeze(model, "all").trainable == 0
    freeze(model, ["layer1", "head"])
    assert {n.split(".")[0] for n in trainable_names(model)} == {"layer1", "fc"}


def test_patterns_and_module_lists(build):
    model = build["resnet18"]()
    freeze(model, "all", include="layer4.1.*")
    assert trainable_names(model) == {
        n for n, _ in model.named_parameters() if n.startswith("layer4.1.")
    }
    freeze(model, "head", exclude=["fc.bias"])
    assert trainable_names(model) == {"fc.weight"}
    by_path = (freeze(model, "all", modules=["layer4.1"]), trainable_names(model))
    by_object = (freeze(model, "all", modules=[model.layer4[1]]), trainable_names(model))
    assert by_path[1] == by_object[1]
    assert by_path[0].trainable == by_object[0].trainable
    # exclude wins over include and over the policy
    freeze(model, "last:1", include="layer3.*", exclude="layer*.bn*")
    assert not any(".bn" in n for n in trainable_names(model))
    assert any(n.startswith("layer3.") for n in trainable_names(model))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("body",), {}),
        (("last:x",), {}),
        ((3,), {}),
        ((["layer9"],), {}),
        (("head",), {"bn": "eval"}),
        (("head",), {"include": "layer4.9.*"}),
        (("head",), {"exclude": ["nothing*"]}),
        (("head",), {"modules": [nn.Linear(2, 2)]}),
        (("head",), {"modules": ["layer7"]}),
    ],
)
def test_bad_policies_raise_config_errors(build, args, kwargs):
    model = build["resnet18"]()
    before = trainable_names(model)
    with pytest.raises(ConfigError):
        freeze(model, *args, **kwargs)
    assert trainable_names(model) == before  # checked before anything changed


def test_a_model_without_a_head_freezes_by_pattern_but_not_by_group():
    # Returns one flat vector: no (batch, classes) output, so no head can be named.
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(0))
    with pytest.raises(TorchgraftError):
        freeze(body, "head")
    summary = freeze(body, "all", include="2.*")
    assert trainable_names(body) == {"2.weight", "2.bias"}
    assert summary.total == sum(p.numel() for p in body.parameters())
    assert pinned_norms(body) == ["1"]


# --- the BatchNorm policy ------------------------------------------------------------------


def test_frozen_statistics_survive_model_train(build, batch, snapshot):
    model = build["resnet18"]()
    freeze(model, "last:1", bn="frozen")
    before = snapshot(model)
    model.train()
    model(batch[0])
    after = model.state_dict()
    for key, value in before.items():
        if not key.startswith(("layer4.", "fc.")):
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["layer4.0.bn1.running_mean"], before["layer4.0.bn1.running_mean"])
    # The pinned layer behaves like an eval-mode layer (running statistics, no update).
    bn = model.layer1[0].bn1
    x = torch.randn(2, 64, 8, 8)
    reference = copy.deepcopy(bn).eval()(x)
    assert torch.equal(bn(x), reference)


def test_stats_policy_trains_affine_with_fixed_statistics(build, batch, train_step, snapshot):
    model = build["resnet18"]()
    summary = freeze(model, "head", bn="stats")
    bn_affine = {n for n, _ in model.named_parameters() if ".bn" in n or n.startswith("bn1.")}
    bn_affine |= {n for n, _ in model.named_parameters() if "downsample.1." in n}
    assert trainable_names(model) == bn_affine | {"fc.weight", "fc.bias"}
    assert summary.fixed_norms == tuple(stat_norms(model))
    before = snapshot(model)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1), momentum=0.9)
    train_step(model, optimizer, batch)
    after = model.state_dict()
    assert not torch.equal(after["layer1.0.bn1.weight"], before["layer1.0.bn1.weight"])
    assert torch.equal(after["layer1.0.bn1.running_var"], before["layer1.0.bn1.running_var"])
    assert torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])


def test_fixed_policy_keeps_statistics_of_the_training_layers_too(
    build, batch, train_step, snapshot
):
    model = build["resnet18"]()
    summary = freeze(model, "last:1", bn="fixed")
    assert summary.fixed_norms == tuple(stat_norms(model))  # layer4's norms included
    assert model.layer4[0].bn1.weight.requires_grad  # a training layer's affine trains
    assert not model.layer1[0].bn1.weight.requires_grad  # a frozen layer's stays frozen
    before = snapshot(model)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1), momentum=0.9)
    train_step(model, optimizer, batch)
    after = model.state_dict()
    assert not torch.equal(after["layer4.0.bn1.weight"], before["layer4.0.bn1.weight"])
    assert not torch.equal(after["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])
    for name in ("layer4.0.bn1", "layer1.0.bn1"):
        assert torch.equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
        assert torch.equal(after[f"{name}.running_var"], before[f"{name}.running_var"])
    assert torch.equal(after["layer1.0.bn1.weight"], before["layer1.0.bn1.weight"])
    unfreeze(model)
    assert pinned_norms(model) == []


def test_train_policy_lets_statistics_move(build, batch, snapshot):
    model = build["resnet18"]()
    summary = freeze(model, "head", bn="train")
    assert summary.fixed_norms == ()
    assert pinned_norms(model) == []
    assert model.layer1[0].bn1.weight.requires_grad
    assert not model.layer1[0].conv1.weight.requires_grad
    before = snapshot(model)
    model.train()
    model(batch[0])
    assert not torch.equal(model.layer1[0].bn1.running_mean, before["layer1.0.bn1.running_mean"])


class AllNorms(nn.Module):
    """Every normalisation layer with running statistics, and two without."""

    def __init__(self):
        super().__init__()
        self.bn1d = nn.BatchNorm1d(6)
        self.bn2d = nn.BatchNorm2d(6)
        self.bn3d = nn.BatchNorm3d(6)
        self.sync = nn.SyncBatchNorm(6)
        self.inst = nn.InstanceNorm2d(6, affine=True, track_running_stats=True)
        self.inst_plain = nn.InstanceNorm2d(6, track_running_stats=True)  # no parameters
        self.ln = nn.LayerNorm(6)
        self.gn = nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):  # x: (batch, 6, 4, 4)
        pooled = x.mean((2, 3))
        out = self.bn1d(pooled) + self.ln(pooled)
        out = out + self.bn3d(x.unsqueeze(2).expand(-1, -1, 2, -1, -1)).mean((2, 3, 4))
        for layer in (self.bn2d, self.sync, self.inst, self.inst_plain, self.gn):
            out = out + layer(x).mean((2, 3))
        return self.fc(out)


def test_every_norm_with_running_stats_is_fixed_and_released(snapshot):
    model = AllNorms()
    x = torch.randn(4, 6, 4, 4)
    freeze(model, "head", spec=tg.spec_of(model, example_input=x))
    assert pinned_norms(model) == ["bn1d", "bn2d", "bn3d", "sync", "inst", "inst_plain"]
    before = snapshot(model)
    model.train()
    model(x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    unfreeze(model, spec=tg.spec_of(model, example_input=x))
    assert pinned_norms(model) == []
    model(x)
    moved = {
        k.rpartition(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])
    }
    assert {"bn1d", "bn2d", "bn3d", "sync", "inst", "inst_plain"} <= moved


def test_timm_batchnorm_act_is_fixed(build, batch, snapshot, running_stat_keys):
    model = build["timm_test_efficientnet"]()
    freeze(model, "head")
    assert type(model.bn1).__name__ == "BatchNormAct2d"
    assert "bn1" in pinned_norms(model)
    before = snapshot(model)
    model.train()
    model(batch[0])
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in running_stat_keys(model))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fixed_statistics_survive_copies_pickling_and_scripting(build, batch, snapshot):
    model = build["resnet18"]()
    original = snapshot(model)
    types = [type(m) for m in model.modules()]
    freeze(model, "head")
    assert list(model.state_dict()) == list(original)  # keys unchanged
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    buffer = io.BytesIO()
    torch.save(model, buffer)  # whole-model pickle, as some users still do
    buffer.seek(0)
    copies = [
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
        torch.load(buffer, weights_only=False),
    ]
    for clone in copies:
        assert [type(m) for m in clone.modules()] == types
        assert list(clone.state_dict()) == list(original)
        assert pinned_norms(clone) == pinned_norms(model)
        clone.train()
        clone(batch[0])
        assert all(torch.equal(v, original[k]) for k, v in clone.state_dict().items())
        unfreeze(clone)
        assert pinned_norms(clone) == []
    scripted = torch.jit.script(model)  # what `torchgraft export --format torchscript` needs
    scripted.train()
    scripted(batch[0])
    assert all(torch.equal(v, original[k]) for k, v in scripted.state_dict().items())


def test_unfreeze_reverses_everything(build, batch, snapshot):
    model = build["mobilenet_v3_small"]()
    freeze(model, "head")
    model.eval()
    summary = unfreeze(model)
    assert summary.frozen == 0
    assert pinned_norms(model) == []
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(not m.training for m in model.modules())  # flags follow the model again
    before = snapshot(model)
    model.train()
    model(batch[0])
    assert not torch.equal(model.features[0][1].running_mean, before["features.0.1.running_mean"])


def test_summary_table_and_json(build):
    model = build["resnet18"]()
    summary = freeze(model, "last:1")
    data = json.loads(summary.to_json())
    assert data["trainable"] == summary.trainable
    assert data["frozen"] == summary.frozen
    assert [g["name"] for g in data["groups"]] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]
    assert len(data["fixed_norms"]) == 1 + 4 + 5 + 5
    text = str(summary)
    assert "layer4" in text
    assert f"{summary.trainable:,}" in text
    assert "fixed norms" in text


# --- proof: frozen means bitwise unchanged after real optimisation steps ---------------------


OPTIMIZERS = {
    "sgd_momentum_wd": lambda params: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=0.01
    ),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("model_name", ["resnet18", "timm_test_efficientnet"])
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_frozen_backbone_is_bitwise_unchanged_even_in_the_optimizer(
    build, batch, train_step, snapshot, model_name, optimizer_name
):
    model = build[model_name]()
    # Earlier full training left gradients on every parameter (the stale-gradient trap).
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    freeze(model, "head", bn="frozen")
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    # The classic trap: every parameter handed to the optimizer anyway, and model.train().
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    before = snapshot(model)
    model.train()
    for _ in range(2):
        train_step(model, optimizer, batch, none=False)  # zero_grad keeps zero tensors
    after = model.state_dict()
    head = tg.spec_of(model).head_paths
    for key, value in before.items():
        if under(key, head):
            assert not torch.equal(after[key], value), f"head {key} did not train"
        else:
            assert torch.equal(after[key], value), f"frozen {key} moved"


def test_hand_written_freeze_drifts_which_is_why_the_policy_exists(
    build, batch, train_step, snapshot
):
    model = build["resnet18"]()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("fc.")  # the blog-post freeze
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    before = snapshot(model)
    train_step(model, optimizer, batch)
    after = model.state_dict()
    assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert not torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
