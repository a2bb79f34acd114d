"""Which modules get adapters: 'auto' from the anatomy, globs, and what is refused."""

from __future__ import annotations

import pytest
import torch
from adapter_models import expected_auto, mobilenet, timm_vit, tiny_torchvision_vit
from torch import nn

import torchgraft as tg

pytest.importorskip("peft")


def _spec_parts(model):
    spec = tg.spec_of(model)
    return spec.head_path, spec.first_conv


@pytest.mark.parametrize(
    "build",
    [
        mobilenet,
        lambda: tg.create_model("timm:efficientnet_b0", num_classes=5, weights=None),
        lambda: tg.create_model("torchvision:mobilenet_v3_small", num_classes=5, weights=None),
        timm_vit,
        tiny_torchvision_vit,
    ],
    ids=["timm-mobilenetv3", "timm-efficientnet_b0", "tv-mobilenet_v3_small", "timm-vit", "tv-vit"],
)
def test_auto_picks_exactly_the_pointwise_convs_and_linears_of_the_body(build):
    model = build()
    head, stem = _spec_parts(model)
    expected = expected_auto(model, head, stem)
    summary = tg.add_adapters(model)
    assert summary.target_names == expected
    assert expected  # the rule found something in every architecture
    for name in expected:  # peft's layer sits where the module was, the module as its base
        layer = model.get_submodule(name)
        assert hasattr(layer, "lora_A"), name
        assert layer.get_base_layer() is not layer, name


def test_auto_on_a_cnn_names_its_reasons_and_what_it_left_out():
    model = mobilenet()
    summary = tg.add_adapters(model)
    reasons = {t.name: t.reason for t in summary.targets}
    assert reasons["blocks.1.0.conv_pw"] == "pointwise convolution"
    assert reasons["blocks.0.0.se.conv_reduce"] == "pointwise convolution (squeeze-excitation)"
    assert "classifier" not in reasons
    assert "conv_stem" not in reasons
    left = {
        reason.split(":")[0]: names
        for names, reason in ((x.names, x.reason) for x in summary.left_out)
    }
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert left["depthwise convolutions"] == tuple(depthwise)
    assert len(depthwise) == 11
    assert left["the stem (first convolution)"] == ("conv_stem",)
    assert left["the head"] == ("classifier",)
    text = str(summary)
    assert "depthwise" in text
    assert "pointwise convolution" in text
    assert "%" in text


def test_auto_on_vits_reasons_attention_and_mlp():
    summary = tg.add_adapters(timm_vit())
    reasons = {t.name: t.reason for t in summary.targets}
    assert reasons["blocks.0.attn.qkv"] == reasons["blocks.2.attn.proj"] == "attention projection"
    assert reasons["blocks.0.mlp.fc1"] == reasons["blocks.2.mlp.fc2"] == "MLP linear"
    assert len(reasons) == 3 * 4

    tv = tiny_torchvision_vit()
    summary = tg.add_adapters(tv)
    assert summary.target_names == [
        f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in range(2) for j in (0, 3)
    ]
    (attention,) = [x for x in summary.left_out if "MultiheadAttention" in x.reason]
    assert attention.names == tuple(
        f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)
    )
    assert "drift" in attention.reason  # says why, not only what
    mha = tv.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert type(mha) is nn.MultiheadAttention  # untouched, not peft's wrapper


def test_summary_counts_and_json():
    model = mobilenet()
    summary = tg.add_adapters(model, method="dora", rank=4, alpha=8, dropout=0.1)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.trainable == trainable
    assert summary.total == sum(p.numel() for p in model.parameters())
    assert summary.trainable_share == pytest.approx(trainable / summary.total)
    data = summary.to_dict()
    assert (data["method"], data["rank"], data["alpha"], data["dropout"]) == ("dora", 4, 8, 0.1)
    assert [t["module"] for t in data["targets"]] == summary.target_names
    assert all(t["reason"] for t in data["targets"])
    import json

    assert json.loads(json.dumps(data)) == data
    assert "dora" in repr(summary)
    assert "rank 4" in str(summary)


def test_globs_select_by_dotted_path():
    model = timm_vit()
    summary = tg.add_adapters(model, targets=["blocks.*.attn.qkv", "blocks.1.mlp.fc2"])
    assert summary.target_names == [
        "blocks.0.attn.qkv",
        "blocks.1.attn.qkv",
        "blocks.1.mlp.fc2",
        "blocks.2.attn.qkv",
    ]
    assert summary.left_out == ()
    # a glob over whole blocks passes over containers but not the norms inside them
    with pytest.raises(
        tg.AdapterError, match=r"'blocks\.0\.norm1' \(LayerNorm\) is not a Linear or Conv2d"
    ):
        tg.add_adapters(timm_vit(), targets="blocks.0.*")


def test_a_glob_that_matches_nothing_is_named_with_names_to_choose_from():
    model = timm_vit()
    with pytest.raises(
        tg.AdapterError, match=r"'blocks\.\*\.atn\.qkv' matches no module \(did you mean"
    ) as info:
        tg.add_adapters(model, targets=["blocks.*.mlp.fc1", "blocks.*.atn.qkv"])
    assert "blocks.0.attn.qkv" in str(info.value)
    assert not any(hasattr(m, "lora_A") for m in model.modules())  # nothing was changed


@pytest.mark.parametrize(
    ("build", "target", "message"),
    [
        (mobilenet, "blocks.1.0.conv_dw", r"\(Conv2d\) has groups=40: peft cannot merge"),
        (mobilenet, "blocks.1.0.bn1", r"\(BatchNormAct2d\) is not a Linear or Conv2d"),
        (mobilenet, "classifier", r"'classifier' \(Linear\) is the head"),
        (
            tiny_torchvision_vit,
            "encoder.layers.encoder_layer_0.self_attention",
            r"\(MultiheadAttention\) is \(inside\) an nn.MultiheadAttention",
        ),
        (
            tiny_torchvision_vit,
            "*.self_attention.out_proj",
            r"out_proj' \(NonDynamicallyQuantizableLinear\) is \(inside\) an nn.MultiheadAttention",
        ),
    ],
)
def test_targets_that_cannot_carry_an_adapter_are_named_with_their_type(build, target, message):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tg.AdapterError, match=message):
        tg.add_adapters(model, targets=target)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen either


def test_named_spatial_convs_can_be_adapted():
    model = mobilenet()
    summary = tg.add_adapters(model, targets="conv_stem")  # a 3×3, groups=1 convolution
    assert summary.target_names == ["conv_stem"]
    assert summary.targets[0].reason == "named by 'conv_stem'"
