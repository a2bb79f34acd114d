"""Unfreezing schedules: plans as data, applied to a real model and optimizer step by step."""

from __future__ import annotations

import math

import pytest
import torch

import torchgraft as tg
from torchgraft.errors import ConfigError
from torchgraft.policies.freezing import pinned_norms
from torchgraft.policies.optimizer_groups import (
    audit_optimizer,
    check_param_groups,
)
from torchgraft.policies.optimizer_state import (
    load_optimizer_state_by_name,
    optimizer_state_by_name,
)
from torchgraft.policies.schedules import Progressive, TwoPhase, UnfreezeAt, schedule_from_config

GROUPS = ("stem", "a", "b", "head")


def groups_by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def test_two_phase_plan_is_fastai_fine_tune():
    # fastai halves the LR once everything trains; torchgraft's default scale is 0.35
    # (bench/recipes.py), fastai's rates are one argument away.
    assert TwoPhase(lr=1e-3).unfrozen_scale == 0.35
    schedule = TwoPhase(lr=1e-3, freeze_epochs=2, lr_mult=100, unfrozen_scale=0.5)
    first = schedule.plan(1, GROUPS)
    assert first.trainable == ("head",)
    assert first.lr_scale["head"] == 1.0
    second = schedule.plan(2, GROUPS)
    assert second.trainable == GROUPS
    scale = second.lr_scale
    assert scale["head"] == 0.5
    assert math.isclose(scale["stem"], 0.5 / 100)
    assert math.isclose(scale["b"] / scale["a"], scale["a"] / scale["stem"])  # geometric


def test_unfreeze_at_plan_is_lightning_backbone_finetuning():
    schedule = UnfreezeAt(lr=1e-2, epoch=3, backbone_ratio=0.1, growth=2.0)
    assert schedule.plan(2, GROUPS).trainable == ("head",)
    assert schedule.plan(3, GROUPS).trainable == GROUPS
    assert [schedule.plan(e, GROUPS).lr_scale["a"] for e in (3, 4, 5, 6, 7)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
    ]
    assert schedule.plan(9, GROUPS).lr_scale["head"] == 1.0


def test_progressive_plan_is_ulmfit_gradual_unfreezing():
    schedule = Progressive(lr=1e-2, every=2, layer_decay=1 / 2.6)
    trainable = [schedule.plan(e, GROUPS).trainable for e in range(8)]
    assert trainable == [
        ("head",),
        ("head",),
        ("b", "head"),
        ("b", "head"),
        ("a", "b", "head"),
        ("a", "b", "head"),
        GROUPS,
        GROUPS,
    ]
    assert math.isclose(schedule.plan(0, GROUPS).lr_scale["stem"], 2.6**-3)


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "two_phase"},
        {"kind": "two_phase", "lr": 0.0},
        {"kind": "two_phase", "lr": 1e-3, "bn": "eval"},
        {"kind": "progressive", "lr": 1e-3, "every": 0},
        {"kind": "unfreeze_at", "lr": 1e-3, "epoch": -1},
        {"kind": "unfreeze_at", "lr": 1e-3, "ratio": 0.1},
        {"kind": "twophase", "lr": 1e-3},
    ],
)
def test_bad_schedule_configs_raise_config_errors(config):
    with pytest.raises(ConfigError):
        schedule_from_config(config)


def test_schedules_round_trip_through_config():
    for schedule in (
        TwoPhase(lr=1e-3),
        UnfreezeAt(lr=1e-3, epoch=2),
        Progressive(lr=1e-3, layer_decay=0.8),
    ):
        assert schedule_from_config(schedule.to_dict()) == schedule
    with pytest.raises(ConfigError, match="did you mean 'two_phase'"):
        schedule_from_config({"kind": "twophase", "lr": 1e-3})


def test_two_phase_applied_to_a_real_model(tiny_net, batch, train_step, snapshot):
    model = tiny_net()
    schedule = TwoPhase(lr=0.1, freeze_epochs=1, weight_decay=1e-3)
    optimizer = torch.optim.SGD(schedule.start(model), momentum=0.9)
    assert [g["name"] for g in optimizer.param_groups] == ["head", "head.no_decay"]

    change = schedule.apply(model, optimizer, 0)
    assert change.changed
    assert change.added == ()
    assert len(pinned_norms(model)) == 3
    before = snapshot(model)
    for _ in range(2):
        train_step(model, optimizer, batch)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("fc."))

    change = schedule.apply(model, optimizer, 1)
    backbone = {n for n, _ in model.named_parameters() if not n.startswith("fc.")}
    assert set(change.added) == backbone
    assert pinned_norms(model) == []
    check_param_groups(optimizer.param_groups, model)
    assert audit_optimizer(optimizer, model).warnings == ()
    groups = groups_by_name(optimizer)
    assert groups["head"]["lr"] == pytest.approx(0.035)  # lr 0.1 x unfrozen_scale 0.35
    assert groups["stem"]["lr"] == pytest.approx(0.00035)  # a hundredth of the head's
    assert groups["stem"]["weight_decay"] == 1e-3
    assert groups["stem.no_decay"]["weight_decay"] == 0.0
    assert groups["stem"]["momentum"] == 0.9  # the optimizer's defaults fill new groups
    assert "conv1.bias" in groups["stem.no_decay"]["param_names"]

    again = schedule.apply(model, optimizer, 1)  # idempotent
    assert again.added == ()
    assert len(optimizer.param_groups) == len(groups)
    before = snapshot(model)
    train_step(model, optimizer, batch)
    assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])  # BN follows


def test_apply_leaves_lrs_alone_within_a_stage(tiny_net):
    """Within one stage, apply() must not touch LRs (an LR scheduler sets them every step);
    the stage carries its epoch number, which once made every epoch look like a change."""
    model = tiny_net()
    schedule = TwoPhase(lr=0.1, freeze_epochs=1)
    optimizer = torch.optim.SGD(schedule.start(model), momentum=0.9)
    assert schedule.apply(model, optimizer, 0).changed
    assert schedule.apply(model, optimizer, 1).changed  # unfrozen: a real change
    for group in optimizer.param_groups:
        group["lr"] = 1e-5  # what a scheduler would have set by the end of epoch 1
    for epoch in (2, 3):
        change = schedule.apply(model, optimizer, epoch)
        assert not change.changed
        assert change.added == ()
        assert all(g["lr"] == 1e-5 for g in optimizer.param_groups)


def test_unfreeze_at_growth_is_a_change_until_capped(tiny_net):
    model = tiny_net()
    schedule = UnfreezeAt(lr=0.1, epoch=1, backbone_ratio=0.25, growth=2.0)
    optimizer = torch.optim.SGD(schedule.start(model), momentum=0.9)
    changes = [schedule.apply(model, optimizer, epoch).changed for epoch in range(6)]
    # 0: start; 1: unfrozen at 0.25; 2: 0.5; 3: 1.0 (capped); 4, 5: the same stage.
    assert changes == [True, True, True, True, False, False]


def test_progressive_adds_one_group_per_epoch(build, batch, train_step):
    model = build["resnet18"]()
    schedule = Progressive(lr=0.1, layer_decay=0.5, bn="stats")
    optimizer = torch.optim.SGD(schedule.start(model), momentum=0.9)
    # bn="stats": the frozen groups' BatchNorm affine trains from the start, at their own LR.
    assert groups_by_name(optimizer)["layer1.no_decay"]["lr"] == pytest.approx(0.1 * 0.5**4)
    for epoch, newest in enumerate(["head", "layer4", "layer3"]):
        change = schedule.apply(model, optimizer, epoch)
        assert change.stage.trainable[0] == newest
        assert {n.split(".")[0] for n in change.added} == ({newest} if epoch else set())
        check_param_groups(optimizer.param_groups, model)
        assert not any(p.startswith(newest) for p in pinned_norms(model))
        train_step(model, optimizer, batch)
    assert len(pinned_norms(model)) == 1 + 4 + 5  # stem, layer1, layer2 still fixed


def test_new_groups_carry_initial_lr_for_a_rebuilt_scheduler(tiny_net):
    model = tiny_net()
    schedule = UnfreezeAt(lr=0.1, epoch=1, backbone_ratio=0.1, growth=1.0)
    optimizer = torch.optim.SGD(schedule.start(model), momentum=0.9)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)  # sets initial_lr on its groups
    change = schedule.apply(model, optimizer, 1)
    assert change.changed
    assert change.added
    assert all(g["initial_lr"] == g["lr"] for g in optimizer.param_groups)
    assert groups_by_name(optimizer)["stem"]["lr"] == pytest.approx(0.01)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)  # rebuilding works


def test_resume_mid_schedule_is_bitwise_equal(tiny_net, batch, train_step):
    schedule = Progressive(lr=0.05, weight_decay=1e-4)

    def run(model, optimizer, epochs):
        for epoch in epochs:
            schedule.apply(model, optimizer, epoch)
            for _ in range(2):
                train_step(model, optimizer, batch)

    straight = tiny_net()
    optimizer = torch.optim.SGD(schedule.start(straight), momentum=0.9)
    run(straight, optimizer, range(2))
    saved_model = {k: v.clone() for k, v in straight.state_dict().items()}
    saved_optim = optimizer_state_by_name(optimizer)
    saved_optim["state"] = {
        n: {k: v.clone() for k, v in s.items()} for n, s in saved_optim["state"].items()
    }
    run(straight, optimizer, range(2, 4))

    resumed = tiny_net()
    resumed.load_state_dict(saved_model)
    new_optimizer = torch.optim.SGD(schedule.start(resumed, epoch=1), momentum=0.9)
    loaded = load_optimizer_state_by_name(new_optimizer, saved_optim, strict=True)
    assert loaded.fresh == ()
    run(resumed, new_optimizer, range(2, 4))
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert tg.spec_of(resumed).group_names == tg.spec_of(straight).group_names
