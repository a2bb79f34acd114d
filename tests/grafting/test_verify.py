"""compare_models / verify_graft: a changed function is flagged, an unchanged one passes,
heads of other widths are compared through their inputs, nothing is left changed, and the
steps are reported to a progress callback."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from torchgraft.errors import GraftError, VerificationError
from torchgraft.grafting.verify import (
    DEFAULT_TOLERANCE,
    VERIFY_STEPS,
    compare_models,
    verify_graft,
)

INPUT = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def twin_models(helpers, seed: int = 11):
    a = helpers.randomize(helpers.TinyNet(num_classes=3), seed)
    b = copy.deepcopy(a)
    return a, b


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_identical_models_pass_with_zero_difference(helpers, dtype):
    a, b = twin_models(helpers)
    result = compare_models(a, b, INPUT, dtype=dtype)
    assert result.ok
    assert result.feature_rel_diff == 0.0
    assert result.output_rel_diff == 0.0
    assert result.output_abs_diff == 0.0
    assert result.input_shape == (2, 3, 8, 8)
    assert "OK: same function" in str(result)


@pytest.mark.parametrize("key", ["conv2.weight", "bn1.running_mean", "fc.bias"])
def test_one_perturbed_value_is_flagged(helpers, key):
    a, b = twin_models(helpers)
    with torch.no_grad():
        a.state_dict()[key].view(-1)[0] += 1.0
    result = compare_models(a, b, INPUT, dtype=torch.float64)
    assert not result.ok
    assert result.output_rel_diff > DEFAULT_TOLERANCE
    assert "FAILED: the graft changed the function" in str(result)
    if key != "fc.bias":  # the head's bias does not change its input
        assert result.feature_rel_diff > DEFAULT_TOLERANCE


def test_relative_difference_is_measured_against_the_reference(helpers):
    a, b = twin_models(helpers)
    b.eval()
    with torch.no_grad():
        reference = b(INPUT)
        a.fc.bias += 0.5  # shifts every logit by exactly 0.5
    result = compare_models(a, b, INPUT)
    assert result.output_abs_diff == pytest.approx(0.5, rel=1e-5)
    assert result.output_rel_diff == pytest.approx(0.5 / reference.abs().max().item(), rel=1e-4)
    assert result.feature_rel_diff == 0.0


def test_tolerance_decides(helpers):
    a, b = twin_models(helpers)
    with torch.no_grad():
        a.fc.bias += 1e-3
    loose = compare_models(a, b, INPUT, tolerance=1.0)
    strict = compare_models(a, b, INPUT, tolerance=1e-6)
    assert loose.ok
    assert not strict.ok
    assert loose.output_rel_diff == strict.output_rel_diff


def test_models_with_different_heads_are_compared_through_the_head_inputs(helpers):
    backbone = helpers.randomize(helpers.TinyNet(num_classes=3), 12)
    other_head = helpers.TinyNet(num_classes=7)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    other_head.load_state_dict(state, strict=False)
    result = compare_models(other_head, backbone, INPUT)
    assert result.ok
    assert result.output_rel_diff is None
    assert result.output_abs_diff is None
    assert result.feature_rel_diff == 0.0
    with torch.no_grad():
        other_head.bn2.weight[0] += 1.0
    assert not compare_models(other_head, backbone, INPUT).ok


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_comparison_changes_neither_model(helpers, dtype):
    a, b = twin_models(helpers)
    with torch.no_grad():
        a.conv1.weight[0, 0, 0, 0] += 1.0
    a.train()
    a.bn2.eval()  # a mixed state must come back exactly
    b.eval()
    b.bn1.train()
    flags = {
        name: {n: m.training for n, m in model.named_modules()}
        for name, model in (("a", a), ("b", b))
    }
    before_a, before_b = helpers.snapshot(a), helpers.snapshot(b)
    compare_models(a, b, INPUT, dtype=dtype)
    helpers.assert_bitwise_equal(a, before_a)  # BN statistics included
    helpers.assert_bitwise_equal(b, before_b)
    assert {n: m.training for n, m in a.named_modules()} == flags["a"]
    assert {n: m.training for n, m in b.named_modules()} == flags["b"]
    assert a.conv1.weight.dtype == torch.float32
    assert not any(h for m in a.modules() for h in m._forward_pre_hooks.values())


# --- verify_graft: a graft checked against its source architecture -------------------------


class PaddedNet(nn.Module):
    """TinyNet's tensors with other padding: the same shapes, another function."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def test_verify_graft_passes_a_faithful_graft(helpers):
    source = helpers.randomize(helpers.TinyNet(), 13)
    renamed = {"net." + k: v for k, v in source.state_dict().items()}
    target = helpers.TinyNet()
    from torchgraft.grafting.api import graft

    graft(target, renamed)
    result = verify_graft(target, helpers.TinyNet(), source.state_dict(), dtype=torch.float64)
    assert result.ok
    assert result.output_rel_diff == 0.0


def test_verify_graft_flags_same_shapes_with_another_function(helpers):
    source = helpers.randomize(helpers.TinyNet(), 13)
    target = PaddedNet()
    from torchgraft.grafting.api import graft

    report = graft(target, source.state_dict())
    assert report.coverage == 1.0  # every tensor fits...
    result = verify_graft(target, helpers.TinyNet(), source.state_dict())
    assert not result.ok  # ...and the function is not the same
    assert result.feature_rel_diff > 1e-2
    assert result.diverges_at == ("conv1", "conv1")  # no padding: conv1's output is smaller
    with pytest.raises(VerificationError, match="FAILED") as info:
        verify_graft(target, helpers.TinyNet(), source.state_dict(), raise_on_failure=True)
    assert info.value.exit_code == 1
    assert isinstance(info.value, GraftError)  # `except GraftError` catches it too
    message = str(info.value)
    assert f"{result.feature_rel_diff:.2e} relative" in message  # the worst difference
    assert "tolerance 1e-04" in message
    assert "target module 'conv1' (source 'conv1')" in message


def test_a_passing_verification_does_not_raise_and_locates_nothing(helpers):
    source = helpers.randomize(helpers.TinyNet(), 13)
    target = copy.deepcopy(source)
    result = verify_graft(target, helpers.TinyNet(), source.state_dict(), raise_on_failure=True)
    assert result.ok
    assert result.diverges_at is None
    assert result.to_dict()["diverges_at"] is None
    assert result.problem is None


@pytest.mark.slow
def test_a_perturbed_graft_between_libraries_raises_naming_the_layer():
    """torchvision resnet18 weights grafted into timm's resnet18 keep the function; one
    BatchNorm scaled afterwards breaks it, and the error names that layer — not the shortcut
    that torchvision runs between it and the next block."""
    import torchgraft as tg

    source = tg.create_model("torchvision:resnet18")
    with torch.no_grad():
        for value in source.state_dict().values():
            if value.is_floating_point() and value.dim() == 1:
                value.uniform_(0.8, 1.2)  # BatchNorm near identity: every layer matters
    target = tg.create_model("timm:resnet18")
    tg.graft(target, source.state_dict())
    passed = tg.verify_graft(target, "torchvision:resnet18", source.state_dict())
    assert passed.ok, passed
    with torch.no_grad():
        target.layer3[0].bn2.weight.mul_(1.5)
    with pytest.raises(GraftError) as info:
        tg.verify_graft(target, "torchvision:resnet18", source.state_dict(), raise_on_failure=True)
    message = str(info.value)
    assert message.startswith("verification FAILED: ")
    assert "relative from torchvision:resnet18, tolerance 1e-04" in message
    assert "tolerance 1e-04" in message
    assert "target module 'layer3.0.bn2' (source 'layer3.0.bn2')" in message


def test_verify_graft_refuses_weights_that_do_not_fit_the_source_architecture(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=3), 13)
    target = helpers.TinyNet(num_classes=3)
    half = {k: v for k, v in source.state_dict().items() if k.startswith(("conv1", "fc"))}
    with pytest.raises(GraftError, match="do not load into TinyNet as they are"):
        verify_graft(target, helpers.TinyNet(num_classes=3), half)


@pytest.mark.parametrize("broken", [False, True], ids=["same-function", "changed-function"])
def test_verification_reports_each_step_and_gives_the_same_result(broken):
    source = torchvision.models.squeezenet1_1(weights=None)  # a real model, random weights
    target = copy.deepcopy(source)
    if broken:
        with torch.no_grad():
            target.features[3].expand1x1.bias += 1.0  # the second pass looks for where
    calls = []
    watched = verify_graft(
        target,
        torchvision.models.squeezenet1_1(),
        source.state_dict(),
        on_step=lambda *call: calls.append(call),
    )
    plain = verify_graft(target, torchvision.models.squeezenet1_1(), source.state_dict())
    assert calls == [(done, VERIFY_STEPS) for done in range(VERIFY_STEPS + 1)]
    assert watched == plain  # watching changes nothing, the numbers included
    assert watched.ok is not broken
    assert (watched.diverges_at is not None) is broken
