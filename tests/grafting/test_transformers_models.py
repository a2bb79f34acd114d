"""Hugging Face transformers image models as graft sources and targets: a ViT's separate
query/key/value projections into timm's fused ``qkv`` and back, each computing the same
function (checked by running both); without the source architecture, the pairs that only
registration order tells apart are refused, not guessed."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import torchgraft as tg
from support import assert_same_function, perturbed
from torchgraft.errors import InexactGraftError

transformers = pytest.importorskip("transformers")

SIZE = 32


@pytest.fixture(autouse=True)
def _no_identification(monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:resnet18")


class _Logits(torch.nn.Module):
    """The HF model as a plain ``images -> logits`` module (to compare outputs)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(pixel_values=images).logits


def _hf_vit():
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=SIZE,
        patch_size=8,
        num_labels=10,
        layer_norm_eps=1e-6,  # timm's
    )
    return transformers.ViTForImageClassification(config).eval()


def _timm_vit():
    return VisionTransformer(
        img_size=SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2, num_classes=10
    ).eval()


def test_a_hugging_face_vit_grafts_into_timm_with_fused_qkv():
    source = perturbed(_hf_vit(), scale=0.1)
    target = _timm_vit()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert report.coverage == 1.0
    assert any(n.startswith("verify against") and "OK" in n for n in report.notes)
    assert_same_function(target, _Logits(source), SIZE)


def test_timm_grafts_into_a_hugging_face_vit_with_separate_projections():
    source = perturbed(_timm_vit(), scale=0.1)
    target = _hf_vit()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert any(n.startswith("verify against") and "OK" in n for n in report.notes)
    assert_same_function(_Logits(target), source, SIZE)


def test_without_the_source_architecture_the_layer_norms_are_not_guessed():
    """HF registers each block's two LayerNorms after its attention and MLP, timm around
    them: registration order cannot prove which is which."""
    target = _timm_vit()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InexactGraftError, match="layernorm_before"):
        tg.graft(target, perturbed(_hf_vit(), scale=0.1).state_dict())
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_a_hugging_face_resnet_grafts_into_torchvision_with_its_architecture_given():
    """HF registers each block's shortcut before its convolutions and keeps the convolutions
    in a Sequential of their own: the same-shaped BatchNorms are told apart by running the
    source architecture, whose block output is the Sequential's parent (the residual sum)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    config = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 1, 1, 1],
        layer_type="basic", num_labels=10,
    )  # fmt: skip
    source = perturbed(
        transformers.ResNetForImageClassification(config).eval(), scale=0.05, statistics=True
    )
    target = ResNet(BasicBlock, [2, 1, 1, 1], num_classes=10).eval()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert any("proven by running the source architecture" in n for n in report.notes)
    assert_same_function(target, _Logits(source), 64)
    with pytest.raises(InexactGraftError):  # without it, order alone: refused
        tg.graft(ResNet(BasicBlock, [2, 1, 1, 1], num_classes=10), source.state_dict())


def test_a_hugging_face_convnext_grafts_into_timm():
    """HF's ConvNeXt keeps its pointwise layers as Linear, timm's atto as 1x1 convs: reshaped,
    and the same function."""
    config = transformers.ConvNextConfig(
        hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=10
    )
    source = perturbed(transformers.ConvNextForImageClassification(config).eval(), scale=0.05)
    target = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert any(n.startswith("verify against") and "OK" in n for n in report.notes)
    assert_same_function(target, _Logits(source), 64)
