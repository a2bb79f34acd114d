"""Adapters saved as data and restored onto a plain model, bitwise; bad input refused."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from adapter_models import batch, mobilenet, timm_vit, train_steps

import torchgraft as tg
from torchgraft.adapters.peft_layers import adapter_layers
from torchgraft.sidecars import sidecar_path

pytest.importorskip("peft")


def _pair(build, method="lora", **options):
    """An adapted, trained model and a plain twin with the same base weights.

    BatchNorm statistics stay fixed while training (the engine's ``bn="frozen"``): the
    adapter file holds adapters and head, not statistics that moved."""
    trained, plain = build(), build()
    plain.load_state_dict(trained.state_dict())
    tg.add_adapters(trained, method=method, rank=4, **options)
    train_steps(trained, steps=2, side=64 if build is mobilenet else None, norms_fixed=True)
    return trained, plain


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_state_and_config_round_trip_bitwise(method):
    trained, plain = _pair(timm_vit, method)
    state, config = tg.adapter_state_dict(trained), tg.adapter_config(trained)
    assert set(config) == {"method", "rank", "alpha", "dropout", "targets", "peft_version"}
    assert config["targets"] == tg.add_adapters(timm_vit(), rank=4).target_names  # auto's
    assert json.loads(json.dumps(config)) == config  # plain data
    assert {"head.weight", "head.bias"} <= set(state)
    assert all(".lora_" in k or k.startswith("head.") for k in state)
    assert any("lora_magnitude_vector" in k for k in state) == (method == "dora")

    summary = tg.load_adapters(plain, state, config)

    assert summary.target_names == config["targets"]
    _assert_same(plain, trained)
    assert [n for n, p in plain.named_parameters() if p.requires_grad] == [
        n for n, p in trained.named_parameters() if p.requires_grad
    ]
    images, _ = batch(trained)
    with torch.no_grad():
        assert torch.equal(plain.eval()(images), trained.eval()(images))


def test_files_round_trip_through_torchgraft_readers(tmp_path):
    trained, plain = _pair(mobilenet, "dora")
    path = tg.save_adapters(trained, tmp_path / "run")
    assert path.name == "adapters.safetensors"
    assert sidecar_path(path).is_file()
    state, config = tg.read_adapters(tmp_path / "run")
    assert config == tg.adapter_config(trained)
    tg.load_adapters(plain, state, config)
    _assert_same(plain, trained)


def test_files_that_do_not_belong_together_or_ask_for_more_are_refused(tmp_path):
    trained, _ = _pair(timm_vit)
    path = tg.save_adapters(trained, tmp_path)
    sidecar = sidecar_path(path)
    record = json.loads(sidecar.read_text())

    record["adapters"]["builder"] = "os:system"  # a record never selects code
    sidecar.write_text(json.dumps(record))
    with pytest.raises(tg.AdapterError, match=r"unknown fields \['builder'\]"):
        tg.read_adapters(tmp_path)
    del record["adapters"]["builder"]
    record["adapters"]["rank"] = "8"
    sidecar.write_text(json.dumps(record))
    with pytest.raises(tg.AdapterError, match="rank is a whole number"):
        tg.read_adapters(tmp_path)
    record["adapters"]["rank"] = 4
    sidecar.write_text(json.dumps(record))
    tg.read_adapters(tmp_path)  # intact again

    other = timm_vit()
    tg.add_adapters(other, rank=4)
    from safetensors.torch import save_file

    # another model's tensors in place of these: the sidecar's hash no longer matches
    save_file({k: v.contiguous() for k, v in tg.adapter_state_dict(other).items()}, path)
    with pytest.raises(tg.CheckpointError, match="sha256 differs"):
        tg.read_adapters(tmp_path)
    with pytest.raises(tg.CheckpointError):
        tg.read_adapters(tmp_path / "nowhere")


def test_tensors_that_do_not_fit_leave_the_model_plain():
    trained, plain = _pair(timm_vit)
    state, config = tg.adapter_state_dict(trained), tg.adapter_config(trained)
    key = "blocks.0.attn.qkv.lora_A.default.weight"
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    bad = [
        ({k: v for k, v in state.items() if k != key}, r"missing \['blocks\.0\.attn\.qkv\.lora_A"),
        ({**state, "blocks.9.extra": torch.zeros(1)}, r"unexpected \['blocks\.9\.extra'\]"),
        (
            {**state, key: state[key][:2]},
            r"mismatched .*\(2, 192\) torch.float32, the model has \(4, 192\)",
        ),
        ({**state, key: state[key].double()}, r"mismatched .*torch.float64"),
    ]
    for wrong, message in bad:
        with pytest.raises(tg.AdapterError, match=message):
            tg.load_adapters(plain, wrong, config)
        assert not adapter_layers(plain)
        assert not hasattr(plain, "torchgraft_adapters")
        assert all(p.requires_grad for p in plain.parameters())
        after = plain.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(tg.AdapterError, match=r"'blocks\.7\.attn\.qkv' matches no module"):
        tg.load_adapters(plain, state, {**config, "targets": ["blocks.7.attn.qkv"]})
    with pytest.raises(tg.AdapterError, match="matches no module"):
        tg.load_adapters(plain, state, {**config, "targets": ["blocks.*.attn.qkv"]})  # literal


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 0}, "rank is between 1 and 4096, not 0"),
        ({"rank": True}, "rank is a whole number"),
        ({"rank": 2.5}, "rank is a whole number"),
        ({"method": "ia3"}, r"method is one of \['dora', 'lora'\], not 'ia3'"),
        ({"alpha": 0}, "alpha is a finite number above 0"),
        ({"alpha": math.nan}, "alpha is a finite number above 0"),
        ({"dropout": 1.0}, "dropout is at least 0 and below 1"),
        ({"targets": 5}, "targets is 'auto' or module-path globs"),
        ({"targets": []}, "targets is 'auto' or module-path globs"),
    ],
)
def test_bad_settings_are_typed_errors(options, message):
    model = mobilenet()
    with pytest.raises(tg.AdapterError, match=message):
        tg.add_adapters(model, **options)
    assert not adapter_layers(model)


def test_adapters_twice_and_records_of_plain_models_are_refused():
    model = mobilenet()
    with pytest.raises(tg.AdapterError, match="no adapters added by torchgraft"):
        tg.adapter_config(model)
    tg.add_adapters(model)
    with pytest.raises(tg.AdapterError, match="already has adapters"):
        tg.add_adapters(model, targets="conv_head")
    with pytest.raises(tg.AdapterError, match="already has adapters"):
        tg.load_adapters(model, tg.adapter_state_dict(model), tg.adapter_config(model))


def test_without_peft_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(tg.MissingExtraError, match=r'pip install "torchgraft\[peft\]"'):
        tg.add_adapters(mobilenet())
