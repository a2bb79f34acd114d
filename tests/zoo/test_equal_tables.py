"""Equal tables are one answer when they compute the same (issue 20, item 2).

Several builders can share a checkpoint's (name, shape) table. They are built, loaded with
the checkpoint and run on one probe batch: when all agree the architecture is identified
(the first stands for all, said so); when they differ, they are named and nothing is
guessed. Real torchvision and timm models with perturbed weights; the identification index
is restricted to a few architectures and kept under ``tmp_path``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from support import assert_same_function, perturbed, save_sorted
from torchgraft.checkpoint.read import Checkpoint
from torchgraft.grafting.source import SourceWeights
from torchgraft.zoo import build_model, identified_architecture
from torchgraft.zoo.equal_tables import settle_equal_tables
from torchgraft.zoo.identify import ARCHS_ENV, identify
from torchgraft.zoo.meta_build import build_uninitialised

ARCHS = (
    "torchvision:resnet18",
    "timm:resnet18",
    "timm:efficientnet_b0",
    "timm:tf_efficientnet_b0",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("equal-tables-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHGRAFT_CACHE_DIR", str(folder))
        patch.setenv(ARCHS_ENV, ",".join(ARCHS))
        yield folder


def bare(spec: str, num_classes: int | None) -> torch.nn.Module:
    return build_model(spec, num_classes=num_classes).model


def tensors_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_builders_that_compute_the_same_are_one_answer(cache):
    tensors = tensors_of(perturbed(torchvision.models.resnet18(weights=None)))
    found = identify({k: tuple(t.shape) for k, t in tensors.items()})
    assert found.exact_all == ("torchvision:resnet18", "timm:resnet18")
    assert found.exact is None  # the table alone never picks one
    settled = settle_equal_tables(found, tensors, bare)
    assert settled.same_function is True
    assert settled.difference <= 1e-4
    assert settled.exact == "torchvision:resnet18"
    assert "equal tables, and the same function" in settled.summary()
    assert settled.to_dict()["exact"] == "torchvision:resnet18"


def test_builders_that_compute_differently_are_named_not_guessed(cache):
    # Same names and shapes, another padding and BatchNorm epsilon.
    tensors = tensors_of(perturbed(timm.create_model("tf_efficientnet_b0", pretrained=False)))
    found = identify({k: tuple(t.shape) for k, t in tensors.items()})
    assert found.exact_all == ("timm:efficientnet_b0", "timm:tf_efficientnet_b0")
    settled = settle_equal_tables(found, tensors, bare)
    assert settled.same_function is False
    assert settled.difference > 1e-2
    assert settled.exact is None
    summary = settled.summary()
    assert "one of timm:efficientnet_b0, timm:tf_efficientnet_b0" in summary
    assert "different functions" in summary
    assert "not guessed" in summary


def test_a_single_exact_builder_is_not_run(cache):
    tensors = tensors_of(torchvision.models.resnet18(weights=None))
    found = identify({k: tuple(t.shape) for k, t in tensors.items()}, libraries=("torchvision",))
    assert settle_equal_tables(found, tensors, bare) is found


def test_the_graft_takes_an_agreed_architecture_as_the_source(cache):
    tensors = tensors_of(perturbed(torchvision.models.resnet18(weights=None)))
    weights = SourceWeights(Checkpoint(tensors, "state_dict", "resnet18 weights"))
    found = identified_architecture(weights)
    assert found is not None
    model, note = found
    assert isinstance(model, torchvision.models.ResNet)
    assert "the same function" in note
    differing = tensors_of(perturbed(timm.create_model("tf_efficientnet_b0", pretrained=False)))
    weights = SourceWeights(Checkpoint(differing, "state_dict", "effnet weights"))
    assert identified_architecture(weights) is None  # different functions: not guessed


@pytest.mark.slow
def test_a_name_sorted_timm_vit_grafts_exactly_into_torchvision(tmp_path, monkeypatch):
    # The case: timm's ViT-B/16 saved with safetensors shares its table with DeiT-B;
    # both compute the same, so the architecture is identified and the graft is exact.
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(ARCHS_ENV, "timm:deit_base_patch16_224,timm:vit_base_patch16_224")
    import torchgraft as tg

    source = perturbed(timm.create_model("vit_base_patch16_224", pretrained=False))
    path = save_sorted(source, tmp_path / "vit.safetensors")
    target = torchvision.models.vit_b_16(weights=None).eval()
    report = tg.graft(target, str(path))
    assert report.coverage == 1.0
    assert any("the same function" in note for note in report.notes)
    assert_same_function(target, source, 224)


def test_a_model_built_uninitialised_computes_what_a_built_one_does_once_loaded():
    """Equal tables build each candidate without its random initialisation (every parameter
    is loaded next): buffers computed at build time — Swin's relative position index, made
    with in-place ``+=`` — are still right, and the loaded model equals an initialised one."""

    def build():
        return timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4
        ).eval()

    torch.manual_seed(0)
    made = build()
    skipped = build_uninitialised(build)
    for (name, buffer), (_, other) in zip(
        made.named_buffers(), skipped.named_buffers(), strict=True
    ):
        assert torch.equal(buffer, other), name
    skipped.load_state_dict(made.state_dict())
    probe = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(made(probe), skipped(probe))
