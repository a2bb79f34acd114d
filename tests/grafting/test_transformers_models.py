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


def _verified(report) -> bool:
    return any(n.startswith("verify against") and "OK" in n for n in report.notes)


def test_a_hugging_face_deit_with_its_distillation_token_grafts_into_timm():
    from timm.models.deit import VisionTransformerDistilled

    config = transformers.DeiTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        image_size=SIZE, patch_size=8, num_labels=10, layer_norm_eps=1e-6,
    )  # fmt: skip
    source = perturbed(transformers.DeiTForImageClassificationWithTeacher(config).eval(), 0.1)
    target = VisionTransformerDistilled(
        img_size=SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
        num_classes=10,
    ).eval()  # fmt: skip
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert report.coverage == 1.0
    assert _verified(report)
    assert_same_function(target, _Logits(source), SIZE)


def _hf_regnet(last_width: int):
    # RegNetX-400MF's depths; its last width is 400 in torchvision, 384 in timm's regnetx_004
    config = transformers.RegNetConfig(
        embedding_size=32, hidden_sizes=[32, 64, 160, last_width], depths=[1, 2, 7, 12],
        groups_width=16, layer_type="x", num_labels=10,
    )  # fmt: skip
    model = transformers.RegNetForImageClassification(config).eval()
    return perturbed(model, scale=0.05, statistics=True)


@pytest.mark.slow
@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_a_hugging_face_regnet_grafts_into_torchvision_and_timm(library):
    import torchvision

    source = _hf_regnet(400 if library == "torchvision" else 384)
    if library == "torchvision":
        target = torchvision.models.regnet_x_400mf(num_classes=10).eval()
    else:
        target = timm.create_model("regnetx_004", pretrained=False, num_classes=10).eval()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert report.coverage == 1.0
    assert _verified(report)
    assert_same_function(target, _Logits(source), 64)


def _swin_pair():
    from timm.models.swin_transformer import SwinTransformer

    config = transformers.SwinConfig(
        image_size=64, patch_size=4, embed_dim=24, depths=[2, 2, 2], num_heads=[1, 2, 4],
        window_size=4, num_labels=10,
    )  # fmt: skip
    source = perturbed(transformers.SwinForImageClassification(config).eval(), scale=0.1)
    target = SwinTransformer(
        img_size=64, patch_size=4, embed_dim=24, depths=(2, 2, 2), num_heads=(1, 2, 4),
        window_size=4, num_classes=10,
    ).eval()  # fmt: skip
    return source, target


def test_a_hugging_face_swin_grafts_into_timm():
    """transformers registers each stage's patch merging at the end of its stage, timm at the
    start of the next: the stages hold the same layers grouped differently. Its blocks return
    (B, H·W, C) where timm's return (B, H, W, C): the LayerNorms are settled by comparing the
    same values laid out alike."""
    source, target = _swin_pair()
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert report.coverage == 1.0
    assert _verified(report)
    merging = next(e for e in report.entries if e.target == "layers.1.downsample.reduction.weight")
    assert merging.source == "swin.encoder.layers.0.downsample.reduction.weight"
    assert_same_function(target, _Logits(source), 64)


def test_without_its_architecture_a_hugging_face_swin_is_refused_not_guessed():
    source, target = _swin_pair()
    with pytest.raises(InexactGraftError, match="layernorm_before"):
        tg.graft(target, source.state_dict())


def test_a_hugging_face_dinov2_backbone_grafts_into_a_timm_vit_without_a_head():
    """Neither model has a classifier, and their outputs differ in form (every token against
    the class token): the check compares the last layer both have."""
    config = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=28,
        patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6,
    )  # fmt: skip
    source = perturbed(transformers.Dinov2Model(config).eval(), scale=0.1)
    target = VisionTransformer(
        img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
        init_values=1.0, num_classes=0,
    ).eval()  # fmt: skip
    report = tg.graft(target, source.state_dict(), source_model=source)
    assert report.coverage == 1.0
    assert any("at norm ← layernorm: OK" in n for n in report.notes)
    assert report.unexpected == ["embeddings.mask_token"]
    images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            target.forward_features(images), source(pixel_values=images).last_hidden_state
        )
