"""Values transformed, not only renamed: position embeddings resampled for another patch grid,
relative-position tables for another window, embeddings without their leading dimension, and
linear weights stored transposed — each equal to what the libraries themselves compute.

Ground truth is external: timm's ``checkpoint_filter_fn`` (what ``timm.create_model(...,
pretrained=True, img_size=...)`` applies) and torchvision's ``interpolate_embeddings``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from timm.models import swin_transformer, vision_transformer
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

import torchgraft as tg
from support import perturbed
from torchgraft.errors import GraftError
from torchgraft.grafting import plan_from_mapping
from torchgraft.grafting.graft_plan import Action


@pytest.fixture(autouse=True)
def _no_identification(monkeypatch):
    # These grafts are planned from names: the zoo index plays no part.
    monkeypatch.setenv("TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:resnet18")


def _entry(report, key):
    return next(e for e in report.entries if e.target == key)


@pytest.mark.parametrize(
    ("name", "prefix"), [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)]
)
def test_a_timm_vit_at_another_image_size_equals_timms_own_loading(name, prefix):
    source = perturbed(timm.create_model(name, pretrained=False), scale=0.5)
    weights = source.state_dict()
    target = timm.create_model(name, pretrained=False, img_size=64)
    report = tg.graft(target, weights)
    entry = _entry(report, "pos_embed")
    assert entry.action is Action.ADAPT
    assert entry.adapt["prefix"] == prefix
    assert entry.detail == (
        "position embedding resampled from 14×14 to 4×4 patches (resample_abs_pos_embed)"
    )
    expected = vision_transformer.checkpoint_filter_fn(
        dict(weights), timm.create_model(name, pretrained=False, img_size=64)
    )
    for key, value in expected.items():
        assert torch.equal(target.state_dict()[key], value), key
    with torch.no_grad():  # and it runs at its own size
        assert target.eval()(torch.randn(1, 3, 64, 64)).isfinite().all()


def _torchvision_vit(image_size: int) -> VisionTransformer:
    return VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )


def test_a_torchvision_vit_at_another_image_size_equals_interpolate_embeddings():
    source = perturbed(_torchvision_vit(64), scale=0.5)
    weights = source.state_dict()
    target = _torchvision_vit(32)
    report = tg.graft(target, weights)
    entry = _entry(report, "encoder.pos_embedding")
    assert entry.action is Action.ADAPT
    assert "from 8×8 to 4×4 patches (interpolate_embeddings)" in entry.detail
    expected = interpolate_embeddings(32, 8, dict(weights))["encoder.pos_embedding"]
    assert torch.equal(target.encoder.pos_embedding, expected)


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolator, in the expected values
def test_a_swin_with_another_window_equals_timms_own_loading():
    name = "swin_tiny_patch4_window7_224"
    source = perturbed(timm.create_model(name, pretrained=False), scale=0.5)
    weights = source.state_dict()

    def small():
        return timm.create_model(name, pretrained=False, img_size=128, window_size=4)

    target = small()
    report = tg.graft(target, weights)
    tables = [k for k in weights if k.endswith("relative_position_bias_table")]
    assert tables
    for key in tables:
        entry = _entry(report, key)
        assert entry.action is Action.ADAPT
        assert entry.detail == "relative-position table resized from window 7×7 to 4×4 (timm)"
    expected = swin_transformer.checkpoint_filter_fn(dict(weights), small())
    for key in tables:
        assert torch.equal(target.state_dict()[key], expected[key]), key


def test_an_embedding_without_its_leading_dimension_reads_the_same():
    """OpenAI's CLIP stores its position embedding as (L, D), timm as (1, L, D)."""
    name = "vit_tiny_patch16_224"
    weights = perturbed(timm.create_model(name, pretrained=False), scale=0.5).state_dict()
    with_leading = timm.create_model(name, pretrained=False, img_size=64)
    tg.graft(with_leading, weights)
    without = timm.create_model(name, pretrained=False, img_size=64)
    flat = {
        **weights,
        "pos_embed": weights["pos_embed"][0],
        "cls_token": weights["cls_token"][0, 0],
    }
    report = tg.graft(without, flat)
    assert _entry(report, "cls_token").action is Action.RESHAPE
    assert torch.equal(without.pos_embed, with_leading.pos_embed)
    assert torch.equal(without.cls_token, with_leading.cls_token)


def test_a_length_that_leaves_no_square_grid_is_not_guessed():
    name = "vit_tiny_patch16_224"
    weights = timm.create_model(name, pretrained=False).state_dict()
    weights["pos_embed"] = weights["pos_embed"][:, :150]  # 149 patches: no square
    target = timm.create_model(name, pretrained=False, img_size=64)
    before = target.pos_embed.detach().clone()
    report = tg.graft(target, weights, allow_partial=True)
    entry = _entry(report, "pos_embed")
    assert entry.action is Action.SKIP_SHAPE
    assert "150 positions leave no square grid after the target's 1 leading token" in entry.detail
    assert torch.equal(target.pos_embed, before)


class _Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.proj(x)


def test_a_bare_matrix_used_as_x_at_w_is_transposed():
    """CLIP keeps ``proj`` as a (in, out) matrix applied as ``x @ proj``."""
    matrix = torch.randn(6, 4)
    target = _Projection()
    plan = plan_from_mapping(target, {"proj": matrix}, {"proj.weight": "proj"})
    report = tg.graft(target, {"proj": matrix}, plan=plan)
    entry = _entry(report, "proj.weight")
    assert entry.action is Action.ADAPT
    assert entry.adapt == {"kind": "transpose"}
    x = torch.randn(3, 6)
    torch.testing.assert_close(target(x), x @ matrix)


def test_a_module_weight_of_reversed_shape_is_never_transposed():
    """Two Linear weights of reversed shapes are two layers (fc1 and fc2), not one stored
    transposed: nothing loads, and the graft says so."""
    target = _Projection()
    before = target.proj.weight.detach().clone()
    plan = tg.plan_graft(target, {"proj.weight": torch.randn(6, 4)})
    assert _entry(plan, "proj.weight").action is Action.SKIP_SHAPE
    with pytest.raises(GraftError, match=r"1 target keys get nothing, e\.g\. proj\.weight"):
        tg.graft(target, {"proj.weight": torch.randn(6, 4)})
    assert torch.equal(target.proj.weight, before)


def test_a_torchvision_resnet_has_no_position_grids():
    from torchgraft.grafting.values.positions import position_grids

    assert position_grids(torchvision.models.resnet18()) == {}
    grids = position_grids(timm.create_model("vit_tiny_patch16_224", img_size=96))
    assert grids["pos_embed"].grid == (6, 6)
    assert grids["pos_embed"].prefix == 1
