"""A pass that looks at a model leaves it as it found it: every module's own mode back (a
frozen BatchNorm in eval inside a training model stays in eval), every hook removed — after
an exception raised from a hook too — and autograd as asked."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import torchgraft as tg
from torchgraft.model.passes import Hook, evaluating, hooked
from torchgraft.policies.freezing import pinned_norms


def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


def image() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


def modes(model: nn.Module) -> dict[str, bool]:
    return {path: m.training for path, m in model.named_modules()}


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


class Stop(Exception):
    pass


def test_every_module_is_in_eval_inside_and_gets_its_own_mode_back():
    model = resnet().train()
    model.bn1.eval()  # a frozen BatchNorm in eval inside a training model
    model.layer2.eval()  # and a whole eval block
    before = modes(model)
    with evaluating(model):
        seen = modes(model)
        model(image())
    assert not any(seen.values())
    assert modes(model) == before
    assert model.training
    assert not model.bn1.training
    assert not model.layer2[0].bn1.training


def test_an_eval_model_with_one_training_child_keeps_it():
    model = resnet().eval()
    model.layer1[0].bn2.train()
    before = modes(model)
    with evaluating(model):
        assert not model.layer1[0].bn2.training
    assert modes(model) == before


def test_the_eval_pass_moves_no_statistics():
    model = resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with evaluating(model):
        model(image())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_pre_and_forward_hooks_run_and_are_removed():
    model = resnet()
    calls: list[str] = []
    hooks = [
        (model.fc, "pre", lambda _m, args: calls.append(f"pre {tuple(args[0].shape)}")),
        Hook(model.fc, "forward", lambda _m, _args, out: calls.append(f"out {tuple(out.shape)}")),
    ]
    with evaluating(model, hooks) as handles:
        assert len(handles) == 2
        assert hook_count(model) == 2
        model(image())
    assert calls == ["pre (2, 512)", "out (2, 10)"]
    assert hook_count(model) == 0
    model(image())
    assert len(calls) == 2  # gone: a later forward calls nothing


def test_an_exception_from_a_hook_restores_modes_and_removes_hooks():
    model = resnet().train()
    model.bn1.eval()
    before = modes(model)

    def stop(_module, _args, _output):
        raise Stop

    reached = []
    hooks = [(model.layer1, "forward", stop), (model.fc, "pre", lambda *_: reached.append(1))]
    with pytest.raises(Stop), evaluating(model, hooks):
        model(image())
    assert not reached  # the pass stopped early: the head never ran
    assert hook_count(model) == 0
    assert modes(model) == before


def test_an_exception_in_the_block_restores_too():
    model = resnet().train()
    with pytest.raises(RuntimeError, match="boom"), evaluating(model, [(model.fc, "pre", print)]):
        raise RuntimeError("boom")
    assert model.training
    assert all(modes(model).values())
    assert hook_count(model) == 0


def test_prepend_puts_the_hook_before_the_modules_own():
    model = resnet()
    order: list[str] = []
    model.fc.register_forward_pre_hook(lambda *_: order.append("own"))
    hooks = [
        (model.fc, "pre", lambda *_: order.append("first"), True),
        (model.fc, "pre", lambda *_: order.append("last")),
    ]
    with evaluating(model, hooks):
        model(image())
    assert order == ["first", "own", "last"]
    assert hook_count(model) == 1  # the module's own hook stays


def test_a_frozen_models_pinned_norms_keep_their_pins():
    model = resnet()
    tg.freeze(model, "head")
    model.train()
    pinned = pinned_norms(model)
    assert pinned  # the body's BatchNorms: eval behaviour whatever the model's mode
    before = modes(model)
    hooks_before = hook_count(model)
    with evaluating(model, [(model.fc, "pre", lambda *_: None)]):
        model(image())
    assert modes(model) == before
    assert hook_count(model) == hooks_before  # freezing's own hooks untouched
    assert pinned_norms(model) == pinned


@pytest.mark.parametrize(
    ("grad", "enabled", "inference"),
    [(False, False, False), (True, True, False), ("inference", False, True)],
)
def test_autograd_as_asked(grad, enabled, inference):
    model = resnet()
    seen = {}

    def look(_module, _args, output):
        seen.update(enabled=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled())
        seen["graph"] = output.requires_grad

    with torch.no_grad(), evaluating(model, [(model.fc, "forward", look)], grad=grad):
        model(image())
    assert seen == {"enabled": enabled, "inference": inference, "graph": enabled}
    assert torch.is_grad_enabled()  # back as it was outside


def test_grad_on_inside_a_caller_that_turned_it_off():
    model = resnet()
    with torch.no_grad(), evaluating(model, grad=True):
        loss = model(image()).sum()
    loss.backward()
    assert model.conv1.weight.grad is not None


def test_wrong_arguments_are_refused_and_change_nothing():
    model = resnet().train()
    with pytest.raises(ValueError, match="grad"), evaluating(model, grad="yes"):
        pass
    assert model.training
    bad = [(model.fc, "pre", print), (model.fc, "after", print)]
    with pytest.raises(ValueError, match="'after'"), evaluating(model, bad):
        pass
    assert model.training
    assert all(modes(model).values())
    assert hook_count(model) == 0  # the first hook, registered before the second failed


def test_hooked_alone_leaves_modes_and_autograd_to_the_caller():
    model = resnet().train()
    captured = []
    with hooked([(model.fc, "pre", lambda _m, args: captured.append(args[0]))]) as handles:
        out = model(image())
        handles[0].remove()  # removing early is allowed
    assert model.training
    assert out.requires_grad
    assert captured[0].shape == (2, 512)
    assert hook_count(model) == 0
