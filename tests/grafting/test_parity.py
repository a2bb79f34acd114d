"""Parity: ``auto`` grafts random weights between torchvision and timm builds of the same
architecture (other names, other order) and both compute the same function, to 1e-5
relative in float64; the same across checkpoint formats. Plus the traps: pairs that take
every tensor yet compute another function, and pairs the matcher gets wrong.

Outputs are compared with plain torch on copies of both models: in float64, except for the
depthwise-convolution networks, where float64 grouped convolutions take minutes on a CPU and
float32 already agrees exactly (both libraries run the same kernels). The weights are
random but well scaled (He-normal kernels, BatchNorm near identity), so every residual
branch matters and a swapped block would show.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from safetensors.torch import save_file

from torchgraft.errors import InexactGraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.graft_plan import Action
from torchgraft.grafting.match import MatchContext, match_auto
from torchgraft.grafting.verify import compare_models

TOLERANCE = 1e-5
F32 = "torch.float32"


def create(spec: str):
    import torchgraft

    return torchgraft.create_model(spec)


def well_scaled(model, seed: int = 0):
    """Random weights that keep activations in range through any depth."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if value.dim() > 1:
                fan_in = value[0].numel()
                value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif key.endswith(("running_var", "weight")):
                value.copy_(torch.rand(value.shape, generator=generator) * 0.4 + 0.8)
            else:
                value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    return model


def logits(model, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Eval-mode outputs of a copy of ``model`` in ``dtype`` (the model is left as it was)."""
    runner = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        return runner(x.to(dtype))


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


def probe(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


F64, F32_RUN = torch.float64, torch.float32

# (source, target, input size, comparison dtype): names and order differ in every pair.
PAIRS = [
    pytest.param(
        "timm:mobilenetv2_100", "torchvision:mobilenet_v2", 32, F32_RUN, id="mobilenet_v2"
    ),
    pytest.param(
        "torchvision:efficientnet_b0",
        "timm:efficientnet_b0",
        32,
        F32_RUN,
        id="efficientnet_b0",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "torchvision:swin_t",
        "timm:swin_tiny_patch4_window7_224",
        224,
        F64,
        id="swin_t",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "timm:vit_base_patch16_224",
        "torchvision:vit_b_16",
        224,
        F64,
        id="vit_b_16",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("source_spec", "target_spec", "size", "dtype"), PAIRS)
def test_auto_graft_between_libraries_keeps_the_function(source_spec, target_spec, size, dtype):
    source = well_scaled(create(source_spec))
    target = create(target_spec)
    report = graft(target, source.state_dict())
    assert report.coverage == 1.0
    assert report.missing == []
    # only a buffer the other library does not persist may be left over (Swin's index)
    assert all(k.endswith("relative_position_index") for k in report.unexpected)
    assert report.counts["rename"] > 0.9 * len(report.entries)
    x = probe(size)
    difference = relative_difference(logits(target, x, dtype), logits(source, x, dtype))
    print(f"\nparity {source_spec} -> {target_spec}: max relative difference {difference:.2e}")
    assert difference <= TOLERANCE


# --- across checkpoint formats -------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def mobilenet_source():
    return well_scaled(create("torchvision:mobilenet_v2"), seed=3)


def write(fmt: str, state, tmp_path):
    state = {k: v.contiguous() for k, v in state.items()}
    if fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)  # stored sorted by name: the registration order is gone
    elif fmt == "lightning":
        path = tmp_path / "w.ckpt"
        lightning = {
            "state_dict": {"model." + k: v for k, v in state.items()},
            "epoch": 1,
            "pytorch-lightning_version": "2.4.0",
        }
        torch.save(lightning, path)
    else:
        path = tmp_path / "hf"
        path.mkdir()
        save_file(state, path / "model.safetensors")
    return path


@pytest.mark.slow
def test_every_checkpoint_format_gives_the_same_graft_and_function(tmp_path):
    source = mobilenet_source()
    reference = create("timm:mobilenetv2_100")
    expected = graft(reference, source.state_dict()).mapping
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    for fmt in ("pt", "safetensors", "lightning", "hf-folder"):
        folder = tmp_path / fmt
        folder.mkdir()
        target = create("timm:mobilenetv2_100")
        # name-sorted formats lose the registration order; the source architecture gives
        # it back (without it, numbered names only suggest the pairing and the graft refuses)
        architecture = create("torchvision:mobilenet_v2")
        report = graft(target, write(fmt, source.state_dict(), folder), source_model=architecture)
        prefix = "model." if fmt == "lightning" else ""
        assert report.mapping == {t: prefix + s for t, s in expected.items()}, fmt
        assert report.coverage == 1.0
        for key, value in target.state_dict().items():
            assert torch.equal(value, reference_state[key]), (fmt, key)
    x = probe(32)
    difference = relative_difference(logits(reference, x, F32_RUN), logits(source, x, F32_RUN))
    assert difference <= TOLERANCE


# --- traps: every tensor fits, the function differs ----------------------------------------


@pytest.mark.slow
def test_trap_mobilenet_v3_differs_only_by_batchnorm_epsilon():
    """torchvision's MobileNetV3 uses BatchNorm eps=1e-3, timm's mobilenetv3_large_100 1e-5:
    the graft is complete and correct, yet the function is not the same."""
    source = well_scaled(create("torchvision:mobilenet_v3_large"), seed=4)
    target = create("timm:mobilenetv3_large_100")
    report = graft(target, source.state_dict())
    assert report.coverage == 1.0
    assert [(e.target, e.source) for e in report.by_action(Action.RESHAPE)] == [
        ("conv_head.weight", "classifier.0.weight")  # a Linear stored as a 1x1 conv
    ]
    x = probe(32)
    trapped = compare_models(target, source, x, tolerance=TOLERANCE)
    assert not trapped.ok
    assert trapped.output_rel_diff > 1e-3
    assert trapped.diverges_at == ("bn1", "features.0.1")  # the first BatchNorm, as expected
    for module in target.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3  # the one real difference
    fixed = compare_models(target, source, x, tolerance=TOLERANCE)
    assert fixed.ok, fixed


# --- pairs the matcher gets wrong ----------------------------------------------------------


def test_regnet_y_order_only_pairs_are_flagged_low_confidence():
    target = create("timm:regnety_004")
    plan = plan_graft(target, create("torchvision:regnet_y_400mf").state_dict())
    confidence = {e.target: e.confidence for e in plan.entries}
    assert confidence["s1.b1.conv1.conv.weight"] == 0.5
    assert confidence["s1.b1.downsample.conv.weight"] == 0.5
    evidence = {e.target: e.evidence for e in plan.entries}
    assert evidence["s1.b1.conv1.conv.weight"] == "registration-order"
    assert any("registration order alone" in note for note in plan.notes)


def test_regnet_y_graft_refuses_what_only_registration_order_paired():
    """torchvision's RegNet registers the shortcut (proj) before the block (f.a), timm the
    block (conv1) before the shortcut (downsample): registration order pairs them swapped,
    which would compute something else. The graft refuses and loads nothing."""
    target = create("timm:regnety_004")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    source = create("torchvision:regnet_y_400mf").state_dict()
    plan = plan_graft(target, source)
    stage1 = "trunk_output.block1.block1-0"
    assert plan.mapping["s1.b1.conv1.conv.weight"] == f"{stage1}.proj.0.weight"  # swapped
    with pytest.raises(InexactGraftError) as refused:
        graft(target, source)
    message = str(refused.value)
    assert (
        "s1.b1.conv1.conv.weight: ← trunk_output.block1.block1-0.proj.0 [registration-order]"
        in message
    )
    assert "source_model=" in message
    assert "allow_uncertain=True" in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_lite2_flat_blocks_pair_with_the_right_nested_blocks():
    from efficientnet_lite_pytorch import EfficientNet

    with torch.device("meta"):
        source = EfficientNet.from_name("efficientnet-lite2").state_dict()
        target = create("timm:tf_efficientnet_lite2")
    infos = {k: (tuple(v.shape), str(v.dtype)) for k, v in source.items()}
    target_infos = {k: (tuple(v.shape), str(v.dtype)) for k, v in target.state_dict().items()}
    match = match_auto(infos, target_infos, MatchContext())
    assert match.pairs["blocks.1.1.conv_pw.weight"][0] == "_blocks.2._expand_conv.weight"
    assert match.pairs["blocks.1.2.conv_pw.weight"][0] == "_blocks.3._expand_conv.weight"


def bn(prefix: str, width: int) -> dict:
    return {
        f"{prefix}.{r}": ((width,), F32) for r in ("weight", "bias", "running_mean", "running_var")
    }


def test_convnext_layer_scale_layouts_do_not_break_structural_matching():
    source, target, expected = {}, {}, {}
    for block in range(3):
        s, t = f"features.1.{block}", f"stages.0.blocks.{block}"
        source[f"{s}.layer_scale"] = ((8, 1, 1), F32)
        source[f"{s}.block.0.weight"] = ((8, 1, 7, 7), F32)
        source[f"{s}.block.0.bias"] = ((8,), F32)
        source[f"{s}.block.2.weight"] = ((8,), F32)
        source[f"{s}.block.2.bias"] = ((8,), F32)
        source[f"{s}.block.3.weight"] = ((32, 8), F32)
        source[f"{s}.block.3.bias"] = ((32,), F32)
        source[f"{s}.block.5.weight"] = ((8, 32), F32)
        source[f"{s}.block.5.bias"] = ((8,), F32)
        target[f"{t}.gamma"] = ((8,), F32)
        target[f"{t}.conv_dw.weight"] = ((8, 1, 7, 7), F32)
        target[f"{t}.conv_dw.bias"] = ((8,), F32)
        target[f"{t}.norm.weight"] = ((8,), F32)
        target[f"{t}.norm.bias"] = ((8,), F32)
        target[f"{t}.mlp.fc1.weight"] = ((32, 8), F32)
        target[f"{t}.mlp.fc1.bias"] = ((32,), F32)
        target[f"{t}.mlp.fc2.weight"] = ((8, 32), F32)
        target[f"{t}.mlp.fc2.bias"] = ((8,), F32)
        expected[f"{t}.gamma"] = f"{s}.layer_scale"
        expected[f"{t}.conv_dw.weight"] = f"{s}.block.0.weight"
        expected[f"{t}.mlp.fc1.weight"] = f"{s}.block.3.weight"
        expected[f"{t}.mlp.fc2.bias"] = f"{s}.block.5.bias"
    match = match_auto(source, target, MatchContext())
    assert {t: match.pairs[t][0] for t in expected if t in match.pairs} == expected


def test_vgg_linear_classifier_pairs_with_a_conv_pre_logits():
    source = {
        "features.0.weight": ((8, 3, 3, 3), F32),
        "features.0.bias": ((8,), F32),
        "classifier.0.weight": ((16, 8 * 2 * 2), F32),
        "classifier.0.bias": ((16,), F32),
        "classifier.3.weight": ((16, 16), F32),
        "classifier.3.bias": ((16,), F32),
        "classifier.6.weight": ((10, 16), F32),
        "classifier.6.bias": ((10,), F32),
    }
    target = {
        "features.0.weight": ((8, 3, 3, 3), F32),
        "features.0.bias": ((8,), F32),
        "pre_logits.fc1.weight": ((16, 8, 2, 2), F32),
        "pre_logits.fc1.bias": ((16,), F32),
        "pre_logits.fc2.weight": ((16, 16, 1, 1), F32),
        "pre_logits.fc2.bias": ((16,), F32),
        "head.fc.weight": ((10, 16), F32),
        "head.fc.bias": ((10,), F32),
    }
    match = match_auto(source, target, MatchContext())
    assert match.pairs["head.fc.weight"][0] == "classifier.6.weight"  # this part works
    paired = {t: s for t, (s, _) in match.pairs.items()}
    assert paired.get("pre_logits.fc1.weight") == "classifier.0.weight"
    assert paired.get("pre_logits.fc2.weight") == "classifier.3.weight"


@pytest.mark.slow
def test_regnet_y_ties_are_settled_by_running_the_source_model():
    """With the source architecture at hand, order-only ties are tried both ways and the
    assignment that reproduces the source block's output wins: the graft becomes exact."""
    source = well_scaled(create("torchvision:regnet_y_400mf")).eval()
    target = create("timm:regnety_004")
    plan = plan_graft(target, source.state_dict(), source_model=source)
    stage1 = "trunk_output.block1.block1-0"
    assert plan.mapping["s1.b1.conv1.conv.weight"] == f"{stage1}.f.a.0.weight"
    assert plan.mapping["s1.b1.downsample.conv.weight"] == f"{stage1}.proj.0.weight"
    assert plan.mapping["s1.b1.conv1.bn.running_var"] == f"{stage1}.f.a.1.running_var"
    assert any(note.startswith("resolve:") for note in plan.notes)
    graft(target, source.state_dict(), plan=plan)
    example = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    assert compare_models(target, source, example).ok
