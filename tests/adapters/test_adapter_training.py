"""Adapted models train only their adapters and head; the base stays bitwise frozen."""

from __future__ import annotations

import pytest
import torch
from adapter_models import CNN_SIDE, batch, mobilenet, snapshot, timm_vit, train_steps
from torch import nn

import torchgraft as tg

pytest.importorskip("peft")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize(
    ("build", "side"), [(mobilenet, CNN_SIDE), (timm_vit, None)], ids=["cnn", "vit"]
)
def test_steps_move_adapters_and_head_and_never_the_base(build, side, method):
    model = build()
    cls = type(model)
    tg.add_adapters(model, method=method, rank=4)
    assert type(model) is cls  # no PeftModel wrapper: spec, head and forward keep working
    head = tg.spec_of(model).head_path
    frozen, trained = snapshot(model, trainable=False), snapshot(model, trainable=True)
    assert all(".lora_" in n or n.startswith(f"{head}.") for n in trained)
    assert {n for n in trained if n.startswith(f"{head}.")} == {f"{head}.weight", f"{head}.bias"}
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in trained)
    assert not any(".lora_" in n for n in frozen)

    train_steps(model, steps=3, side=side)

    after = dict(model.named_parameters())
    assert after.keys() == frozen.keys() | trained.keys()  # no parameter re-created or lost
    moved = [n for n, p in frozen.items() if not torch.equal(after[n], p)]
    assert moved == []  # bitwise
    assert all(after[n].grad is not None and after[n].grad.abs().sum() > 0 for n in trained)
    unchanged = [n for n, p in trained.items() if torch.equal(after[n], p)]
    # A, B and the head all move; a DoRA magnitude whose gradient is ~1e-7 may round to no
    # change in fp32 after three small steps, but not all of them
    assert all("lora_magnitude_vector" in n for n in unchanged)
    assert len(unchanged) < sum("lora_magnitude_vector" in n for n in trained) / 2 or not unchanged


def test_adding_adapters_changes_no_output():
    model = timm_vit().eval()
    images, _ = batch(model)
    with torch.no_grad():
        before = model(images)
        tg.add_adapters(model, method="dora")
        assert torch.equal(model(images), before)  # B starts at zero; DoRA's magnitude = norm


@pytest.mark.parametrize("training", [False, True])
def test_the_new_modules_take_the_mode_of_the_model(training):
    model = timm_vit().train(training)
    tg.add_adapters(model, dropout=0.5)
    assert {m.training for m in model.modules()} == {training}  # no dropout in an eval model


def test_batchnorm_modules_are_left_alone():
    model = mobilenet()
    norms = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    tg.add_adapters(model)
    assert {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    } == norms
    assert all(m.training == model.training and not m._forward_pre_hooks for m in norms.values())


def test_param_groups_of_an_adapted_model_place_every_trainable_parameter_once():
    model = mobilenet()
    tg.add_adapters(model, method="dora")
    groups = tg.param_groups(model, lr=1e-2, backbone_lr=1e-3)
    placed = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lrs["classifier.weight"] == 1e-2
    assert lrs["blocks.1.0.conv_pw.lora_A.default.weight"] == 1e-3
