"""The structural matcher (``auto`` when names and order both differ), on hand-built tables.

Each test builds a source and a target naming of the same little network and writes the
expected correspondence out by hand.
"""

from __future__ import annotations

import pytest

from torchgraft.grafting.correspondence import EVIDENCE
from torchgraft.grafting.match import MatchContext, match_auto
from torchgraft.grafting.structure import match_structure, natural_key
from torchgraft.grafting.values.adapt import AdaptContext

F32 = "torch.float32"
I64 = "torch.int64"
BN_ROLES = ("weight", "bias", "running_mean", "running_var")


def bn(prefix: str, width: int, roles=BN_ROLES) -> dict:
    table = {f"{prefix}.{role}": ((width,), F32) for role in roles}
    table[f"{prefix}.num_batches_tracked"] = ((), I64)
    return table


def pairs_of(match) -> dict[str, str]:
    return {t: s for t, (s, _) in match.pairs.items()}


def test_natural_key_orders_numbers_as_numbers():
    keys = ["blocks.10.w", "blocks.2.w", "layer10.w", "layer2.w", "blocks.1.w"]
    assert sorted(keys, key=natural_key) == [
        "blocks.1.w",
        "blocks.2.w",
        "blocks.10.w",
        "layer2.w",
        "layer10.w",
    ]


# --- a flat source against a nested target -------------------------------------------------
#: (in, out) channels of six inverted-residual-like blocks; the last two are identical.
BLOCKS = [(8, 16), (16, 24), (24, 32), (32, 40), (40, 40), (40, 40)]
#: Where each flat source block sits in the nested target (stage, index).
NESTED = ["blocks.0.0", "blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.3.1", "blocks.3.2"]


def flat_source(blocks=BLOCKS) -> dict:
    """EfficientNet-PyTorch style: ``_blocks.N._depthwise_conv`` … in registration order."""
    table = {"_conv_stem.weight": ((8, 3, 3, 3), F32), **bn("_bn0", 8)}
    for i, (cin, cout) in enumerate(blocks):
        table[f"_blocks.{i}._depthwise_conv.weight"] = ((cin, 1, 3, 3), F32)
        table.update(bn(f"_blocks.{i}._bn1", cin))
        table[f"_blocks.{i}._project_conv.weight"] = ((cout, cin, 1, 1), F32)
        table.update(bn(f"_blocks.{i}._bn2", cout))
    width = blocks[-1][1]
    table["_fc.weight"] = ((1000, width), F32)
    table["_fc.bias"] = ((1000,), F32)
    return table


def nested_target(num_classes: int = 1000, blocks=BLOCKS, nested=NESTED) -> dict:
    """timm style: ``blocks.S.J.conv_dw`` …, a different order inside each block (the
    pointwise conv first) and the classifier last."""
    table = {"conv_stem.weight": ((8, 3, 3, 3), F32), **bn("bn1", 8)}
    for path, (cin, cout) in zip(nested, blocks, strict=True):
        table[f"{path}.conv_pw.weight"] = ((cout, cin, 1, 1), F32)
        table[f"{path}.conv_dw.weight"] = ((cin, 1, 3, 3), F32)
        table.update(bn(f"{path}.bn1", cin))
        table.update(bn(f"{path}.bn2", cout))
    width = blocks[-1][1]
    table["classifier.weight"] = ((num_classes, width), F32)
    table["classifier.bias"] = ((num_classes,), F32)
    return table


def expected_flat_to_nested(head: bool = True, nested=NESTED) -> dict[str, str]:
    roles = (*BN_ROLES, "num_batches_tracked")
    expected = {"conv_stem.weight": "_conv_stem.weight"}
    expected.update({f"bn1.{r}": f"_bn0.{r}" for r in roles})
    for i, path in enumerate(nested):
        expected[f"{path}.conv_dw.weight"] = f"_blocks.{i}._depthwise_conv.weight"
        expected[f"{path}.conv_pw.weight"] = f"_blocks.{i}._project_conv.weight"
        expected.update({f"{path}.bn1.{r}": f"_blocks.{i}._bn1.{r}" for r in roles})
        expected.update({f"{path}.bn2.{r}": f"_blocks.{i}._bn2.{r}" for r in roles})
    if head:
        expected["classifier.weight"] = "_fc.weight"
        expected["classifier.bias"] = "_fc.bias"
    return expected


def test_flat_blocks_line_up_with_nested_stages_in_registration_order():
    match = match_auto(flat_source(), nested_target(), MatchContext())
    assert pairs_of(match) == expected_flat_to_nested()
    assert match.unresolved == {}


def test_flat_blocks_line_up_from_a_name_sorted_source():
    """Sorted like a safetensors file (``_blocks.10`` before ``_blocks.2``, ``_bn1`` before
    ``_depthwise_conv``): the numbered names still carry the order."""
    name_sorted = dict(sorted(flat_source().items()))
    match = match_auto(name_sorted, nested_target(), MatchContext(order_trusted=False))
    assert pairs_of(match) == expected_flat_to_nested()


#: Identical blocks at flat indices 1 and 2 that land at nested ``blocks.1.0`` and
#: ``blocks.1.1``: the index names "1" exist on both sides but mean different blocks.
COLLIDING_BLOCKS = [(8, 16), (16, 16), (16, 16), (16, 24)]
COLLIDING_NESTED = ["blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0"]


@pytest.mark.parametrize("order_trusted", [True, False])
def test_identical_flat_blocks_whose_indices_collide_with_nested_indices(order_trusted):
    source = flat_source(COLLIDING_BLOCKS)
    if not order_trusted:
        source = dict(sorted(source.items()))
    target = nested_target(blocks=COLLIDING_BLOCKS, nested=COLLIDING_NESTED)
    match = match_auto(source, target, MatchContext(order_trusted=order_trusted))
    assert match.pairs["blocks.1.0.conv_dw.weight"][0] == "_blocks.1._depthwise_conv.weight"
    assert match.pairs["blocks.1.1.conv_dw.weight"][0] == "_blocks.2._depthwise_conv.weight"
    assert pairs_of(match) == expected_flat_to_nested(nested=COLLIDING_NESTED)


def test_flat_to_nested_confidences():
    match = match_auto(flat_source(), nested_target(), MatchContext())
    confidence = {t: c for t, (_, c) in match.pairs.items()}
    assert confidence["conv_stem.weight"] == 1.0  # unique fingerprint
    # blocks 4 and 5 are identical: numbered names in the source's real registration order
    # decide, and that proves the pairing
    assert match.evidence["blocks.3.1.conv_dw.weight"] == "order"
    assert confidence["blocks.3.1.conv_dw.weight"] == 1.0
    assert confidence["blocks.3.0.conv_dw.weight"] == 1.0
    sorted_match = match_auto(
        dict(sorted(flat_source().items())), nested_target(), MatchContext(order_trusted=False)
    )
    sorted_confidence = {t: c for t, (_, c) in sorted_match.pairs.items()}
    # name-sorted: _blocks.N are a ModuleList's indices, registered in index order: their
    # natural order is the registration order, which proves the pairing
    assert sorted_match.evidence["blocks.3.2.conv_dw.weight"] == "index-order"
    assert sorted_confidence["blocks.3.2.conv_dw.weight"] == EVIDENCE["index-order"] == 1.0
    assert sorted_confidence["conv_stem.weight"] == 1.0


def test_a_new_head_pairs_as_a_leftover_with_low_confidence():
    match = match_auto(flat_source(), nested_target(num_classes=10), MatchContext())
    assert match.pairs["classifier.weight"] == ("_fc.weight", EVIDENCE["leftover"])
    assert match.pairs["classifier.bias"] == ("_fc.bias", EVIDENCE["leftover"])
    assert pairs_of(match) == expected_flat_to_nested()


def test_an_adapted_stem_pairs_as_a_leftover():
    target = nested_target()
    target["conv_stem.weight"] = ((8, 1, 3, 3), F32)  # a grayscale model
    context = MatchContext(adapt=AdaptContext(first_conv_key="conv_stem.weight"))
    match = match_auto(flat_source(), target, context)
    assert match.pairs["conv_stem.weight"][0] == "_conv_stem.weight"
    assert pairs_of(match) == expected_flat_to_nested()


def test_role_synonyms_pair_keras_style_norms():
    source = {
        "stem.kernel": ((8, 3, 3, 3), F32),
        "norm.gamma": ((8,), F32),
        "norm.beta": ((8,), F32),
        "norm.moving_mean": ((8,), F32),
        "norm.moving_variance": ((8,), F32),
    }
    target = {"conv.weight": ((8, 3, 3, 3), F32), **bn("bn", 8)}
    match = match_structure(dict(sorted(source.items())), target, MatchContext(order_trusted=False))
    assert pairs_of(match) == {
        "conv.weight": "stem.kernel",
        "bn.weight": "norm.gamma",
        "bn.bias": "norm.beta",
        "bn.running_mean": "norm.moving_mean",
        "bn.running_var": "norm.moving_variance",
    }
    assert all(c == 1.0 for _, c in match.pairs.values())


def test_a_tensor_pairs_with_a_module_that_holds_only_it():
    source = {
        "embeddings.position.value": ((1, 5, 8), F32),
        "encoder.dense.weight": ((8, 8), F32),
    }
    target = {"pos_embed": ((1, 5, 8), F32), "blk.fc.weight": ((8, 8), F32)}
    match = match_structure(source, target, MatchContext())
    assert pairs_of(match) == {
        "pos_embed": "embeddings.position.value",
        "blk.fc.weight": "encoder.dense.weight",
    }


def test_ordinal_sibling_names_break_ties_in_a_sorted_source():
    source = {**bn("_bn1", 8), **bn("_bn0", 8)}  # stored sorted the wrong way round
    target = {**bn("norm_a", 8), **bn("norm_b", 8)}
    match = match_structure(source, target, MatchContext(order_trusted=False))
    assert match.pairs["norm_a.weight"] == ("_bn0.weight", EVIDENCE["numbered-names"])
    assert match.pairs["norm_b.running_var"] == ("_bn1.running_var", EVIDENCE["numbered-names"])
    assert match.pairs["norm_a.num_batches_tracked"][0] == "_bn0.num_batches_tracked"


def test_non_ordinal_names_in_a_sorted_source_are_only_candidates():
    """Nothing tells alpha from omega: a trial assignment (confidence 0) recorded as a tie
    for the architecture or the BatchNorm statistics to settle, never a pairing to load."""
    source = dict(sorted({**bn("alpha", 8), **bn("omega", 8)}.items()))
    target = {**bn("first", 8), **bn("second", 8)}
    match = match_structure(source, target, MatchContext(order_trusted=False))
    floats = {k for k in target if not k.endswith("num_batches_tracked")}
    assert {match.evidence[k] for k in floats} == {"candidate"}
    assert {match.pairs[k][1] for k in floats} == {0.0}
    assert sorted(map(sorted, match.ties)) == [[("alpha", "first"), ("omega", "second")]]


@pytest.mark.parametrize("order_trusted", [True, False])
def test_source_registration_order_breaks_ties_in_a_sorted_source(order_trusted):
    source = dict(sorted({**bn("omega", 8), **bn("alpha", 8)}.items()))
    target = {**bn("first", 8), **bn("second", 8)}
    order = (*bn("omega", 8), *bn("alpha", 8))  # omega was registered first
    context = MatchContext(source_order=order, order_trusted=order_trusted)
    match = match_structure(source, target, context)
    # registration order alone is weak evidence (libraries differ): paired, confidence 0.5
    assert match.pairs["first.weight"] == ("omega.weight", EVIDENCE["registration-order"])
    assert match.pairs["second.bias"] == ("alpha.bias", EVIDENCE["registration-order"])
    assert EVIDENCE["registration-order"] == 0.5


def test_counts_of_unequal_size_are_not_forced():
    """Three same-shaped source norms for two target norms: nothing to decide by."""
    source = {**bn("a0", 8), **bn("a1", 8), **bn("a2", 8)}
    target = {**bn("x", 8), **bn("y", 8)}
    match = match_structure(dict(sorted(source.items())), target, MatchContext(order_trusted=False))
    assert "x.weight" not in match.pairs
    assert match.unresolved["x.weight"].startswith("ambiguous: 12 unpaired sources")
