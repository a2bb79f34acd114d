"""A graft is run before loading whenever the source architecture is known (issue 20, item 3).

Real torchvision and timm models with perturbed weights. The trap: torchvision's
``mobilenet_v3_large`` and timm's ``mobilenetv3_large_100`` hold the same tensors, and their
BatchNorm epsilons differ (1e-3 against 1e-5), so the grafted model computes another function.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import torchgraft as tg
from support import assert_same_function, perturbed, save_sorted
from torchgraft.errors import GraftWarning, VerificationError
from torchgraft.grafting.checked import likely_cause


@pytest.fixture(scope="module")
def mobilenet_state():
    model = perturbed(torchvision.models.mobilenet_v3_large(weights=None), statistics=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_graft_that_changes_the_function_is_refused_before_loading(mobilenet_state):
    target = timm.create_model("mobilenetv3_large_100", pretrained=False).eval()
    before = snapshot(target)
    with pytest.raises(VerificationError) as refused:
        tg.graft(target, mobilenet_state, source_model="torchvision:mobilenet_v3_large")
    message = str(refused.value)
    assert "torchvision:mobilenet_v3_large, given" in message
    assert "Nothing was loaded" in message
    assert "BatchNorm/LayerNorm epsilon 1e-05 in the target against 0.001" in message
    assert "allow_mismatch=True" in message
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.slow
def test_a_mismatch_accepted_on_purpose_loads_and_says_so(mobilenet_state):
    target = timm.create_model("mobilenetv3_large_100", pretrained=False).eval()
    with pytest.warns(GraftWarning, match="changes the function"):
        report = tg.graft(
            target,
            mobilenet_state,
            source_model="torchvision:mobilenet_v3_large",
            allow_mismatch=True,
        )
    assert report.verification["ok"] is False
    found = report.verification
    assert max(found["feature_rel_diff"], found["output_rel_diff"]) > found["tolerance"]
    assert "epsilon" in report.verification["cause"]
    assert torch.equal(
        target.state_dict()["conv_stem.weight"], mobilenet_state["features.0.0.weight"]
    )


def test_a_faithful_graft_is_checked_and_timed():
    source = perturbed(torchvision.models.resnet18(weights=None), statistics=True)
    target = timm.create_model("resnet18", pretrained=False).eval()
    report = tg.graft(target, source.state_dict(), source_model="torchvision:resnet18")
    assert report.verification["ok"] is True
    assert report.verification["seconds"] < 10
    assert any("checked in" in note and "before loading" in note for note in report.notes)
    assert_same_function(target, source, 64)


def test_verify_false_skips_the_check():
    source = perturbed(torchvision.models.resnet18(weights=None), statistics=True)
    target = timm.create_model("resnet18", pretrained=False).eval()
    report = tg.graft(
        target, source.state_dict(), source_model="torchvision:resnet18", verify=False
    )
    assert report.verification is None


def test_likely_cause_names_the_epsilon_and_tensorflow_padding():
    target = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-5))
    source = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3))
    assert likely_cause(target, source, ("1", "1")) == (
        "at 1 (source 1): BatchNorm/LayerNorm epsilon 1e-05 in the target against 0.001"
    )
    from timm.layers import Conv2dSame

    same = nn.Sequential(Conv2dSame(3, 4, 3, stride=2))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    cause = likely_cause(same, plain, ("0", "0"))
    assert "padding (0, 0) in the target against (1, 1)" in cause
    assert "TensorFlow 'same' padding in the target (Conv2dSame)" in cause
    assert likely_cause(plain, plain, ("0", "0")) is None  # nothing in the layers differs


@pytest.fixture
def identify_only(tmp_path, monkeypatch):
    """Identification restricted to the given specs, its index under ``tmp_path``."""
    from torchgraft.zoo.identify import ARCHS_ENV

    def restrict(*specs: str) -> None:
        monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv(ARCHS_ENV, ",".join(specs))

    return restrict


@pytest.mark.slow
def test_an_identified_source_architecture_is_run_before_loading(tmp_path, identify_only):
    # torchvision's EfficientNet-B0, name-sorted, into timm's TF port ("same" padding): the
    # source architecture is identified from the file, and running it refuses the graft.
    identify_only("torchvision:efficientnet_b0")
    source = perturbed(torchvision.models.efficientnet_b0(weights=None), statistics=True)
    path = save_sorted(source, tmp_path / "effnet.safetensors")
    target = timm.create_model("tf_efficientnet_b0", pretrained=False).eval()
    before = snapshot(target)
    with pytest.raises(VerificationError) as refused:
        tg.graft(target, str(path))
    message = str(refused.value)
    assert "torchvision:efficientnet_b0, identified from the file" in message
    assert "TensorFlow 'same' padding in the target (Conv2dSame)" in message
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
    # Into the faithful port the same file grafts, checked the same way.
    twin = timm.create_model("efficientnet_b0", pretrained=False).eval()
    report = tg.graft(twin, str(path))
    assert report.verification["ok"] is True
    assert_same_function(twin, source, 64)


@pytest.mark.slow
def test_keys_left_ambiguous_ask_for_the_source_architecture(tmp_path, identify_only):
    # torchvision's MNASNet keeps its stem in one flat Sequential (layers.0 … layers.16),
    # timm nests it: in a name-sorted file some same-shaped norms stay ambiguous, and the
    # identified architecture's registration order settles them.
    identify_only("torchvision:mnasnet1_0")
    source = perturbed(torchvision.models.mnasnet1_0(weights=None), statistics=True)
    path = save_sorted(source, tmp_path / "mnasnet.safetensors")
    target = timm.create_model("mnasnet_100", pretrained=False).eval()
    report = tg.graft(target, str(path))
    assert report.coverage == 1.0
    assert any("identified as torchvision:mnasnet1_0" in note for note in report.notes)
    assert_same_function(target, source, 64)


@pytest.mark.slow
def test_a_training_checkpoint_with_prefixes_is_settled_by_its_identified_architecture(
    tmp_path, identify_only
):
    """The weights of a DistributedDataParallel replica (``module.``) inside a training
    checkpoint: the identified architecture names its modules without the prefix, and both
    its registration order and the side-by-side run of its blocks still apply."""
    identify_only("torchvision:regnet_y_400mf")
    source = perturbed(torchvision.models.regnet_y_400mf(weights=None), statistics=True)
    path = tmp_path / "last.ckpt"
    weights = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "model": weights, "optimizer": {"lr": 0.1}}, path)
    target = timm.create_model("regnety_004", pretrained=False).eval()
    report = tg.graft(target, str(path))
    assert not any("could not be run" in note for note in report.notes)
    assert report.verification["ok"] is True
    assert_same_function(target, source, 64)
