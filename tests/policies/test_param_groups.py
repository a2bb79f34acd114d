"""Parameter groups: the invariant, LR rules, no-decay rules, resume by name, the audit."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

import torchgraft as tg
from torchgraft.errors import ConfigError
from torchgraft.policies.freezing import freeze
from torchgraft.policies.optimizer_groups import (
    OptimizerAuditWarning,
    audit_optimizer,
    check_param_groups,
    no_weight_decay_names,
    param_groups,
)
from torchgraft.policies.optimizer_state import (
    load_optimizer_state_by_name,
    optimizer_state_by_name,
)


def by_name(groups):
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("policy", ["none", "last:1", "head"])
def test_every_trainable_parameter_is_in_exactly_one_group(any_model, policy):
    freeze(any_model, policy)
    groups = param_groups(any_model, lr=0.1, weight_decay=1e-4)
    placed = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in any_model.named_parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)  # each once, frozen ones nowhere
    params = dict(any_model.named_parameters())
    for group in groups:
        assert set(group) >= {"params", "param_names", "lr", "weight_decay", "name", "layer_group"}
        assert all(
            p is params[n] for n, p in zip(group["param_names"], group["params"], strict=True)
        )
    torch.optim.SGD(groups, momentum=0.9)  # any torch optimizer takes them


def test_head_and_backbone_learning_rates_share_momentum(build):
    model = build["resnet18"]()
    groups = param_groups(model, lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4)
    for group in groups:
        assert group["lr"] == (1e-2 if group["layer_group"] == "head" else 1e-3)
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
    assert [g["name"] for g in groups][-2:] == ["head", "head.no_decay"]


def test_layer_decay_is_geometric_from_the_head_down(build):
    model = build["timm_test_vit"]()
    order = tg.spec_of(model).group_names
    count = len(order)
    rates = {g["layer_group"]: g["lr"] for g in param_groups(model, lr=1e-2, layer_decay=0.5)}
    for index, group in enumerate(order):
        assert math.isclose(rates[group], 1e-2 * 0.5 ** (count - 1 - index))
    composed = {
        g["layer_group"]: g["lr"]
        for g in param_groups(model, lr=1e-2, backbone_lr=1e-3, layer_decay=0.5)
    }
    assert composed["head"] == 1e-2
    assert math.isclose(composed[order[-2]], 1e-3)
    assert math.isclose(composed[order[0]], 1e-3 * 0.5 ** (count - 2))
    scaled = by_name(param_groups(model, lr=1e-2, lr_scale={"head": 0.5, "stem": 0.0}))
    assert scaled["head"]["lr"] == 5e-3
    assert scaled["stem"]["lr"] == 0.0
    with pytest.raises(ConfigError):
        param_groups(model, lr=1e-2, lr_scale={"trunk": 2.0})


class Tokens(nn.Module):
    """Parameters every no-decay rule has to classify."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.rel_table = nn.Parameter(torch.zeros(5, 8))  # listed by no_weight_decay()
        self.mlp_tokens = nn.Sequential(nn.Linear(8, 8))  # a real matrix despite its name
        self.gamma = nn.Parameter(torch.ones(8))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def no_weight_decay(self):
        return {"rel_table"}

    def forward(self, ids):  # ids: (batch, tokens)
        x = self.embed(ids) + self.dist_token + self.rel_table.sum(0)
        return self.fc(self.norm(self.mlp_tokens(x) * self.gamma).mean(1))


def test_no_weight_decay_rules():
    model = Tokens()
    skip = no_weight_decay_names(model)
    assert skip == {
        "embed.weight",
        "dist_token",
        "rel_table",
        "mlp_tokens.0.bias",
        "gamma",
        "norm.weight",
        "norm.bias",
        "fc.bias",
    }
    spec = tg.spec_of(model, example_input=torch.zeros(2, 4, dtype=torch.long))
    groups = param_groups(model, lr=0.1, weight_decay=0.05, spec=spec)
    decays = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert {n for n, wd in decays.items() if wd == 0.0} == skip
    assert decays["mlp_tokens.0.weight"] == decays["fc.weight"] == 0.05


def test_timm_vit_tokens_and_norms_do_not_decay(build):
    model = build["timm_test_vit"]()
    groups = by_name(param_groups(model, lr=0.1, weight_decay=0.05))
    assert {"cls_token", "pos_embed"} <= set(groups["stem.no_decay"]["param_names"])
    assert "blocks.0.norm1.weight" in groups["blocks.0.no_decay"]["param_names"]
    assert groups["blocks.0"]["param_names"][0] == "blocks.0.attn.qkv.weight"
    assert all(g["weight_decay"] == 0.0 for name, g in groups.items() if name.endswith("no_decay"))


def test_check_param_groups_names_every_problem(build):
    model = build["resnet18"]()
    freeze(model, "last:1")
    good = param_groups(model, lr=0.1)
    check_param_groups(good, model)
    fc_weight, conv = model.fc.weight, model.conv1.weight
    cases = {
        "trainable but in no group": good[:-1],
        "is in groups": [*good, {"params": [fc_weight], "name": "again"}],
        "is frozen": [*good, {"params": [conv], "name": "frozen"}],
        "not a parameter of the model": [*good, {"params": [torch.zeros(1, requires_grad=True)]}],
        "names parameter": [
            {**good[0], "param_names": list(reversed(good[0]["param_names"]))},
            *good[1:],
        ],
    }
    for message, groups in cases.items():
        with pytest.raises(ConfigError, match=message):
            check_param_groups(groups, model)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0},
        {"lr": float("nan")},
        {"lr": 0.1, "layer_decay": -1.0},
        {"lr": 0.1, "weight_decay": -1},
    ],
)
def test_invalid_rates_raise_config_errors(build, bad):
    with pytest.raises(ConfigError):
        param_groups(build["plain"](), **bad)


# --- resume by name across an unfreeze -----------------------------------------------------


def head_only_run(model, make_optimizer, batch, train_step, steps=3):
    freeze(model, "head")
    optimizer = make_optimizer(param_groups(model, lr=0.05, weight_decay=1e-4))
    for _ in range(steps):
        train_step(model, optimizer, batch)
    return optimizer


OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    "adamw": lambda groups: torch.optim.AdamW(groups),
}


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_resume_by_name_after_unfreezing(build, batch, train_step, optimizer_name):
    make = OPTIMIZERS[optimizer_name]
    model = build["plain"]()
    optimizer = head_only_run(model, make, batch, train_step)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer_state_by_name(optimizer)}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain data: no pickled code needed

    resumed = build["plain"]()
    resumed.load_state_dict(saved["model"])
    freeze(resumed, "none")  # the unfreeze: the backbone joins, the groups differ
    new_optimizer = make(param_groups(resumed, lr=0.05, weight_decay=1e-4))
    with pytest.raises(ValueError, match="parameter group"):
        new_optimizer.load_state_dict(optimizer.state_dict())  # what plain torch does
    result = load_optimizer_state_by_name(new_optimizer, saved["optim"])

    assert set(result.restored) == {"fc.weight", "fc.bias"}
    assert set(result.fresh) == {n for n, _ in resumed.named_parameters()} - {
        "fc.weight",
        "fc.bias",
    }
    assert result.unused == ()
    assert set(result.groups) == {"head", "head.no_decay"}
    params = dict(resumed.named_parameters())
    old = dict(model.named_parameters())
    for name in ("fc.weight", "fc.bias"):
        restored, original = new_optimizer.state[params[name]], optimizer.state[old[name]]
        assert restored.keys() == original.keys()
        for key in restored:
            assert torch.equal(restored[key], original[key]), (name, key)
            assert restored[key] is not original[key]
    assert all(not new_optimizer.state[params[n]] for n in result.fresh)

    # The restored head takes exactly the step the uninterrupted run takes.
    model.eval(), resumed.eval()
    for net, opt in ((model, optimizer), (resumed, new_optimizer)):
        nn.functional.cross_entropy(net(batch[0]), batch[1]).backward()
        opt.step()
    assert torch.equal(model.fc.weight, resumed.fc.weight)


def test_state_by_name_restores_settings_and_checks_its_input(build, batch, train_step):
    model = build["plain"]()
    optimizer = head_only_run(model, OPTIMIZERS["sgd"], batch, train_step, steps=1)
    optimizer.param_groups[0]["lr"] = 0.001  # e.g. an LR scheduler moved it
    saved = optimizer_state_by_name(optimizer)
    freeze(model, "none")
    fresh = OPTIMIZERS["sgd"](param_groups(model, lr=0.05))
    load_optimizer_state_by_name(fresh, saved)
    assert by_name(fresh.param_groups)["head"]["lr"] == 0.001
    assert by_name(fresh.param_groups)["stem"]["lr"] == 0.05
    with pytest.raises(ConfigError, match="no saved state"):
        load_optimizer_state_by_name(fresh, saved, strict=True)
    with pytest.raises(ConfigError, match="not optimizer state"):
        load_optimizer_state_by_name(fresh, optimizer.state_dict())
    unnamed = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="param_names"):
        optimizer_state_by_name(unnamed)


# --- the audit -----------------------------------------------------------------------------


def test_audit_flags_frozen_and_forgotten_parameters(build):
    model = build["resnet18"]()
    freeze(model, "head")
    with pytest.warns(OptimizerAuditWarning, match="frozen parameter"):
        audit = audit_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert len(audit.warnings) == 1
    assert audit.rows[0]["names"][0] == "conv1.weight"

    freeze(model, "last:1")
    stale = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr=0.01)[-2:], momentum=0.9)
    with pytest.warns(OptimizerAuditWarning, match="in no group and will not train"):
        audit_optimizer(stale, model)

    groups = param_groups(model, lr=0.1, backbone_lr=0.01, weight_decay=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        audit = audit_optimizer(torch.optim.AdamW(groups), model)
    assert audit.warnings == ()
    text = str(audit)
    assert "layer4.no_decay" in text
    assert "0.01" in text
    assert "fc.weight" in text
    assert audit.to_dict()["groups"][0]["name"] == "layer4"
