"""Merging gives back the plain architecture, computing what the adapted model computed."""

from __future__ import annotations

import pytest
import torch
from adapter_models import CNN_SIDE, batch, mobilenet, timm_vit, tiny_torchvision_vit, train_steps

import torchgraft as tg
from torchgraft.adapters.peft_layers import adapter_layers

pytest.importorskip("peft")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize(
    ("build", "side"),
    [(mobilenet, CNN_SIDE), (timm_vit, None), (tiny_torchvision_vit, None)],
    ids=["cnn", "timm-vit", "tv-vit"],
)
def test_merged_model_is_the_plain_architecture_with_the_same_function(build, side, method):
    model = build()
    tg.add_adapters(model, method=method, rank=4)
    train_steps(model, steps=2, side=side)
    images, _ = batch(model, side=side, seed=7)
    with torch.no_grad():
        adapted = model.eval()(images)

    report = tg.merge_adapters(model)

    assert report.checked
    assert report.difference <= report.tolerance == 1e-5
    assert report.method == method
    assert len(report.merged) > 0
    assert not adapter_layers(model)
    assert not hasattr(model, "peft_config")
    fresh = build()
    assert list(model.state_dict()) == list(fresh.state_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        merged, reloaded = model(images), fresh.eval()(images)
    assert torch.equal(merged, reloaded)
    scale = adapted.abs().max()
    assert (merged - adapted).abs().max() <= 1e-5 * scale
    assert "merged" in str(report)
    assert report.to_dict()["difference"] == report.difference


def test_a_merge_that_skips_the_scaling_is_caught_and_undone(monkeypatch):
    model = timm_vit()
    tg.add_adapters(model, method="lora", rank=8, alpha=16)  # scale 2
    train_steps(model, steps=3)
    layer = model.get_submodule("blocks.1.attn.qkv")
    original = layer.get_delta_weight

    def unscaled(adapter):  # the bug: B·A without alpha / rank
        kept = layer.scaling[adapter]
        layer.scaling[adapter] = 1.0
        try:
            return original(adapter)
        finally:
            layer.scaling[adapter] = kept

    monkeypatch.setattr(layer, "get_delta_weight", unscaled)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = batch(model, seed=5)
    with torch.no_grad():
        before = model.eval()(images)

    with pytest.raises(
        tg.AdapterMergeError, match=r"changed the model's outputs by .* relative"
    ) as info:
        tg.merge_adapters(model)

    assert info.value.difference > 1e-5
    assert info.value.exit_code == 1
    assert "blocks.1.attn.qkv" in str(info.value)  # the layer at fault, found alone
    # adapted as before: same modules, keys and values bitwise, same function, still trains
    assert model.get_submodule("blocks.1.attn.qkv") is layer
    assert not layer.merged
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(images), before)
    train_steps(model, steps=1)
    monkeypatch.undo()
    assert tg.merge_adapters(model).difference <= 1e-5  # the real merge still works


def test_merge_without_check_and_refusals():
    model = mobilenet()
    with pytest.raises(tg.AdapterError, match="no adapters to merge"):
        tg.merge_adapters(model)
    tg.add_adapters(model)
    report = tg.merge_adapters(model, check=False)
    assert not report.checked
    assert report.difference is None
    assert report.probe_shape is None
    assert "not checked" in str(report)
    with pytest.raises(tg.AdapterError, match="no adapters to merge"):
        tg.merge_adapters(model)
    tg.add_adapters(model)  # merged: adapters may be added again
    assert tg.merge_adapters(model, probe=torch.randn(1, 3, 48, 48)).probe_shape == (1, 3, 48, 48)


def test_the_check_runs_in_ieee_fp32_and_puts_torch_settings_back():
    from torchgraft.adapters.outputs import ieee_fp32

    backends = torch.backends
    torch.set_float32_matmul_precision("high")  # what a fast training setup may have chosen
    try:
        settings = (
            backends.cuda.matmul.fp32_precision,
            backends.cudnn.conv.fp32_precision,
            backends.cudnn.deterministic,
            backends.cudnn.benchmark,
        )
        with ieee_fp32():
            assert (
                backends.cuda.matmul.fp32_precision == backends.cudnn.conv.fp32_precision == "ieee"
            )
        model = mobilenet()
        tg.add_adapters(model)
        tg.merge_adapters(model)
        after = (
            backends.cuda.matmul.fp32_precision,
            backends.cudnn.conv.fp32_precision,
            backends.cudnn.deterministic,
            backends.cudnn.benchmark,
        )
        assert after == settings
        assert torch.get_float32_matmul_precision() == "high"  # still readable: APIs not mixed
    finally:
        torch.set_float32_matmul_precision("highest")
