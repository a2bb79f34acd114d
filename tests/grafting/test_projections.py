"""Attention projections fused in one model and separate in the other: the source is given the
target's form (concatenated or split rows) before matching, and the graft computes the
source's function — checked by running both (timm's EVA with and without ``qkv_fused``)."""

from __future__ import annotations

import pytest
import timm
import torch

import torchgraft as tg
from support import assert_same_function, perturbed
from torchgraft.checkpoint.read import Checkpoint
from torchgraft.grafting.source import SourceWeights
from torchgraft.grafting.values.projections import regrouped

SIZE = 56


@pytest.fixture(autouse=True)
def _no_identification(monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:resnet18")


def _eva(**options):
    return timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, img_size=SIZE, **options
    ).eval()


def test_separate_projections_graft_into_a_fused_qkv():
    source = perturbed(_eva(qkv_fused=False), scale=0.1)
    target = _eva()
    report = tg.graft(target, source.state_dict(), source_model=_eva(qkv_fused=False))
    assert any("derived from the file's attention projections" in n for n in report.notes)
    assert any(n.startswith("verify against") and "OK" in n for n in report.notes)
    assert_same_function(target, source, SIZE)
    fused = target.blocks[0].attn.qkv.weight
    expected = torch.cat(
        [
            source.blocks[0].attn.q_proj.weight,
            source.blocks[0].attn.k_proj.weight,
            source.blocks[0].attn.v_proj.weight,
        ]
    )
    assert torch.equal(fused, expected)


def test_a_fused_qkv_grafts_into_separate_projections():
    source = perturbed(_eva(), scale=0.1)
    target = _eva(qkv_fused=False)
    report = tg.graft(target, source.state_dict(), source_model=_eva())
    assert any(n.startswith("verify against") and "OK" in n for n in report.notes)
    assert_same_function(target, source, SIZE)


def _weights(tensors):
    return SourceWeights(Checkpoint(dict(tensors), "state_dict", "test"))


def test_fused_rows_are_the_three_concatenated_query_first_in_the_first_ones_place():
    q, k, v = (torch.full((4, 4), float(i)) for i in range(3))
    source = {
        "embed.weight": torch.zeros(4, 4),
        "attn.query.weight": q,
        "attn.query.bias": q[0],
        "attn.key.weight": k,
        "attn.key.bias": k[0],
        "attn.value.weight": v,
        "attn.value.bias": v[0],
        "attn.out.weight": torch.ones(4, 4),
    }
    target = {
        "embed.weight": (4, 4),
        "attn.in_proj_weight": (12, 4),
        "attn.in_proj_bias": (12,),
        "attn.out.weight": (4, 4),
    }
    made = regrouped(_weights(source), target)
    assert list(made.checkpoint.tensors) == [
        "embed.weight",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out.weight",
    ]
    assert torch.equal(made.checkpoint.tensors["attn.in_proj_weight"], torch.cat([q, k, v]))
    assert made.derived["attn.in_proj_bias"] == (
        "attn.query.bias",
        "attn.key.bias",
        "attn.value.bias",
    )
    back = regrouped(
        made, {"attn.query.weight": (4, 4), "attn.key.weight": (4, 4), "attn.value.weight": (4, 4)}
    )
    assert torch.equal(back.checkpoint.tensors["attn.key.weight"], k)


def test_an_incomplete_triple_or_a_target_without_either_form_is_left_alone():
    source = _weights(
        {"attn.query.weight": torch.zeros(4, 4), "attn.key.weight": torch.zeros(4, 4)}
    )
    assert regrouped(source, {"attn.qkv.weight": (12, 4)}) is source
    whole = _weights({f"attn.{n}.weight": torch.zeros(4, 4) for n in ("query", "key", "value")})
    assert regrouped(whole, {"fc.weight": (4, 4)}) is whole


def test_a_name_sorted_source_stays_untrusted_in_its_order_after_regrouping():
    """safetensors sorts keys; the fused tensor is placed where 'query' was, which could make
    the order look unsorted — the judgement is the stored file's."""
    names = ("query", "key", "value")
    tensors = {f"a.attn.{n}.weight": torch.zeros(2, 2) for n in sorted(names)}
    tensors = dict(sorted({**tensors, "z.weight": torch.zeros(2, 2)}.items()))
    source = _weights(tensors)
    assert not source.order_trusted
    made = regrouped(source, {"a.attn.qkv.weight": (6, 2)})
    assert "a.attn.qkv.weight" in made.checkpoint.tensors
    assert not made.order_trusted


def test_a_source_models_order_is_read_in_derived_keys():
    """The source architecture's registration order names its stored keys; the matcher sees
    derived ones — each where the first of its originals was."""
    from torchgraft.grafting.values.projections import derived_order

    order = ["norm.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"]
    split = {
        "attn.q.weight": ("attn.qkv.weight",),
        "attn.k.weight": ("attn.qkv.weight",),
        "attn.v.weight": ("attn.qkv.weight",),
    }
    assert derived_order(order, split) == (
        "norm.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.qkv.bias",
        "attn.proj.weight",
    )  # fmt: skip
    fused = {"attn.qkv.weight": ("attn.q.weight", "attn.k.weight", "attn.v.weight")}
    separate = ["attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.proj.weight"]
    assert derived_order(separate, fused) == ("attn.qkv.weight", "attn.proj.weight")
