"""Matching strategies, one by one: the pure functions on hand-built ``{key: (shape, dtype)}``
tables, and the same strategies through ``plan_graft`` / ``graft`` on tiny real modules.

Every expected mapping here is written out by hand.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from torchgraft.errors import GraftError, GraftWarning, InexactGraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.graft_plan import Action
from torchgraft.grafting.match import (
    MatchContext,
    match_auto,
    match_exact,
    match_order,
    match_shape,
    strip_prefixes,
)
from torchgraft.grafting.values.adapt import AdaptContext

F32 = "torch.float32"
I64 = "torch.int64"


def bn(prefix: str, width: int, counter: bool = True) -> dict:
    table = {f"{prefix}.{role}": ((width,), F32) for role in ("weight", "bias")}
    table.update({f"{prefix}.{role}": ((width,), F32) for role in ("running_mean", "running_var")})
    if counter:
        table[f"{prefix}.num_batches_tracked"] = ((), I64)
    return table


def tiny_table(num_classes: int = 3, names=("conv1", "bn1", "conv2", "bn2", "fc")) -> dict:
    """The key table of TinyNet (conftest), optionally under other names."""
    c1, b1, c2, b2, fc = names
    return {
        f"{c1}.weight": ((4, 3, 3, 3), F32),
        **bn(b1, 4),
        f"{c2}.weight": ((4, 4, 3, 3), F32),
        **bn(b2, 4),
        f"{fc}.weight": ((num_classes, 4), F32),
        f"{fc}.bias": ((num_classes,), F32),
    }


def rename_state(state, names_from, names_to):
    table = dict(zip(names_from, names_to, strict=True))
    out = {}
    for key, value in state.items():
        module, _, role = key.rpartition(".")
        out[f"{table[module]}.{role}"] = value
    return out


TINY_NAMES = ("conv1", "bn1", "conv2", "bn2", "fc")
ROLES_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# --- exact ---------------------------------------------------------------------------------


def test_exact_pairs_every_key_with_itself():
    table = tiny_table()
    match = match_exact(table, table, MatchContext())
    assert match.pairs == {k: (k, 1.0) for k in table}


def test_exact_lists_missing_unexpected_and_mismatched():
    target = tiny_table()
    source = dict(target)
    del source["bn2.running_var"]  # missing
    source["extra.weight"] = ((2,), F32)  # unexpected
    source["fc.weight"] = ((7, 4), F32)  # shape mismatch
    with pytest.raises(GraftError) as info:
        match_exact(source, target, MatchContext())
    message = str(info.value)
    assert "missing (1): bn2.running_var" in message
    assert "unexpected (1): extra.weight" in message
    assert "shape mismatch (1): fc.weight [7, 4] vs [3, 4]" in message


def test_exact_through_graft_refuses_and_leaves_the_model(helpers, tiny):
    target = tiny(seed=1)
    before = helpers.snapshot(target)
    source = {"module." + k: v for k, v in tiny(seed=2).state_dict().items()}
    with pytest.raises(GraftError, match=r"unexpected \(14\): module\.conv1\.weight"):
        graft(target, source, strategy="exact")
    helpers.assert_bitwise_equal(target, before)


def test_exact_through_graft_copies_everything(helpers, tiny):
    source = tiny(seed=2)
    target = tiny(seed=1)
    report = graft(target, source.state_dict(), strategy="exact")
    helpers.assert_bitwise_equal(target, helpers.snapshot(source))
    assert report.counts["copy"] == 14
    assert report.coverage == 1.0


# --- shape ---------------------------------------------------------------------------------


def test_shape_pairs_equal_names_of_equal_shape_only():
    target = tiny_table(num_classes=5)
    source = tiny_table(num_classes=3)
    source["aux.weight"] = ((2, 2), F32)
    match = match_shape(source, target, MatchContext())
    expected = {k: (k, 1.0) for k in target if not k.startswith("fc.")}
    assert match.pairs == expected


def test_shape_reports_the_skipped_head_instead_of_dropping_it(helpers, tiny):
    source = tiny(num_classes=3, seed=2)
    source_state = dict(source.state_dict())
    source_state["aux.weight"] = torch.ones(2, 2)
    target = tiny(num_classes=5, seed=1)
    before = helpers.snapshot(target)
    report = graft(target, source_state, strategy="shape")
    by_target = {e.target: e for e in report.entries}
    assert list(by_target) == list(target.state_dict())  # every target key, in order
    for key in ("fc.weight", "fc.bias"):
        entry = by_target[key]
        assert entry.action is Action.SKIP_SHAPE
        assert entry.source == key
        assert entry.source_shape == tuple(source_state[key].shape)
        assert "cannot fill" in entry.detail
        assert torch.equal(target.state_dict()[key], before[key])
    assert [e.target for e in report.mismatched] == ["fc.weight", "fc.bias"]
    assert report.missing == ["fc.weight", "fc.bias"]
    assert report.unexpected == ["aux.weight"]  # the skipped head is not listed twice
    for key, value in target.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, source_state[key]), key
    # the skipped head is in the rendering too
    assert "skipped (shape)" in report.render()


def test_shape_never_reshapes():
    """``shape`` is the tutorial's filter: a numel-equal tensor of another shape is skipped."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    source = {k: v.clone() for k, v in model.state_dict().items()}
    source["0.weight"] = source["0.weight"].reshape(4, 3)
    plan = plan_graft(model, source, strategy="shape")
    entry = next(e for e in plan.entries if e.target == "0.weight")
    assert entry.action is Action.SKIP_SHAPE


# --- order ---------------------------------------------------------------------------------

ORDER_SOURCE = tiny_table(num_classes=1000, names=("_stem", "_bn0", "_conv", "_bn1", "_fc"))


def test_order_pairs_in_stored_order_and_counters_follow_their_module():
    target = tiny_table(num_classes=1000)
    match = match_order(ORDER_SOURCE, target, MatchContext())
    expected = {
        "conv1.weight": "_stem.weight",
        **{f"bn1.{r}": f"_bn0.{r}" for r in ROLES_BN},
        "conv2.weight": "_conv.weight",
        **{f"bn2.{r}": f"_bn1.{r}" for r in ROLES_BN},
        "fc.weight": "_fc.weight",
        "fc.bias": "_fc.bias",
    }
    assert {t: s for t, (s, _) in match.pairs.items()} == expected
    assert all(c == 1.0 for _, c in match.pairs.values())


def test_order_counter_is_not_paired_by_position():
    """A module without a counter in the source must not borrow the next module's."""
    target = tiny_table(num_classes=1000)
    source = {k: v for k, v in ORDER_SOURCE.items() if k != "_bn0.num_batches_tracked"}
    match = match_order(source, target, MatchContext())
    assert "bn1.num_batches_tracked" not in match.pairs
    assert match.pairs["bn2.num_batches_tracked"][0] == "_bn1.num_batches_tracked"


def test_order_tolerates_a_head_mismatch_at_the_end():
    target = tiny_table(num_classes=10)
    context = MatchContext(adapt=AdaptContext(head_keys=frozenset({"fc.weight", "fc.bias"})))
    match = match_order(ORDER_SOURCE, target, context)
    assert match.pairs["fc.weight"] == ("_fc.weight", 1.0)
    assert match.pairs["fc.bias"] == ("_fc.bias", 1.0)


def test_order_stops_at_the_first_irreconcilable_pair_naming_both_keys():
    target = tiny_table(num_classes=10)
    # a source whose second conv comes before its first BN: pair #1 is a conv against a BN
    source = dict(ORDER_SOURCE)
    conv = source.pop("_conv.weight")
    source = {"_stem.weight": source.pop("_stem.weight"), "_conv.weight": conv, **source}
    with pytest.raises(GraftError) as info:
        match_order(source, target, MatchContext())
    message = str(info.value)
    assert "pair #1" in message
    assert "'bn1.weight'" in message
    assert "'_conv.weight'" in message
    assert "[4, 4, 3, 3]" in message
    assert "[4]" in message


def test_order_refuses_a_head_mismatch_outside_the_head():
    target = tiny_table(num_classes=10)  # no head keys known: the fc mismatch is an error
    with pytest.raises(GraftError, match=r"target 'fc\.weight' \[10, 4\] and source '_fc\.weight'"):
        match_order(ORDER_SOURCE, target, MatchContext())


def test_order_notes_unpaired_trailing_keys():
    target = tiny_table(num_classes=1000)
    source = dict(ORDER_SOURCE)
    source["_extra.weight"] = ((2,), F32)
    match = match_order(source, target, MatchContext())
    assert len(match.pairs) == len(target)
    assert any("left unpaired" in note for note in match.notes)


def test_order_through_plan_graft_on_a_real_module(helpers, tiny):
    source_model = tiny(num_classes=1000, seed=2)
    renamed = rename_state(
        source_model.state_dict(), TINY_NAMES, ("_stem", "_bn0", "_conv", "_bn1", "_fc")
    )
    target = tiny(num_classes=10, seed=1)
    before = helpers.snapshot(target)
    plan = plan_graft(target, renamed, strategy="order")
    helpers.assert_bitwise_equal(target, before)  # planning touches nothing
    actions = {e.target: e.action for e in plan.entries}
    assert actions["fc.weight"] is Action.SKIP_SHAPE
    assert actions["fc.bias"] is Action.SKIP_SHAPE
    assert all(a is Action.RENAME for k, a in actions.items() if not k.startswith("fc."))
    report = graft(target, renamed, strategy="order")
    state = target.state_dict()
    assert torch.equal(state["conv2.weight"], renamed["_conv.weight"])
    assert torch.equal(state["bn1.running_var"], renamed["_bn0.running_var"])
    assert torch.equal(state["bn2.num_batches_tracked"], renamed["_bn1.num_batches_tracked"])
    assert torch.equal(state["fc.weight"], before["fc.weight"])
    assert report.missing == ["fc.weight", "fc.bias"]


def test_order_accepts_a_numel_equal_reshape():
    """A Linear stored as a 1x1 conv still pairs in order, as a reshape."""
    target = {"proj.weight": ((8, 4), F32), "proj.bias": ((8,), F32)}
    source = {"conv.weight": ((8, 4, 1, 1), F32), "conv.bias": ((8,), F32)}
    match = match_order(source, target, MatchContext())
    assert match.pairs == {"proj.weight": ("conv.weight", 1.0), "proj.bias": ("conv.bias", 1.0)}


# --- auto: prefixes and exact names --------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "note_example"),
    [
        ("module.", "'module.conv1.weight' → 'conv1.weight'"),  # DDP / DataParallel
        ("_orig_mod.", "'_orig_mod.conv1.weight' → 'conv1.weight'"),  # torch.compile
        ("module._orig_mod.", "'module._orig_mod.conv1.weight' → 'conv1.weight'"),
        ("model.", "'model.conv1.weight' → 'conv1.weight'"),  # LightningModule attribute
    ],
)
def test_auto_strips_wrapper_prefixes(prefix, note_example):
    target = tiny_table()
    source = {prefix + k: v for k, v in target.items()}
    match = match_auto(source, target, MatchContext())
    assert match.pairs == {k: (prefix + k, 1.0) for k in target}
    assert any(note_example in note for note in match.notes)


def test_auto_adds_the_prefix_of_a_target_that_wraps_the_source():
    inner = tiny_table(num_classes=1000)
    del inner["fc.weight"], inner["fc.bias"]
    target = {"backbone." + k: v for k, v in inner.items()}
    target.update({"head.weight": ((10, 4), F32), "head.bias": ((10,), F32)})
    match = match_auto(inner, target, MatchContext())
    assert match.pairs == {"backbone." + k: (k, 1.0) for k in inner}


def test_auto_prefers_exact_names_with_full_confidence():
    target = tiny_table()
    match = match_auto(dict(reversed(list(target.items()))), target, MatchContext())
    assert match.pairs == {k: (k, 1.0) for k in target}
    assert match.notes == []


def test_auto_prefix_stripping_through_graft(helpers, tiny):
    source = tiny(seed=2)
    expected = helpers.snapshot(source)
    wrapped = {"module._orig_mod." + k: v for k, v in source.state_dict().items()}
    target = tiny(seed=1)
    report = graft(target, wrapped)
    helpers.assert_bitwise_equal(target, expected)
    assert report.mapping == {k: "module._orig_mod." + k for k in expected}
    assert report.counts["rename"] == 14


# --- auto: structure -----------------------------------------------------------------------

#: TinyNet under another naming, stored in another order (head first, then the blocks), but
#: with the two same-shaped norms kept in their relative order.
STRUCT_NAMES = ("stem.conv", "stem.norm", "body.conv", "body.norm", "head")
STRUCT_MAPPING = {
    "conv1.weight": "stem.conv.weight",
    **{f"bn1.{r}": f"stem.norm.{r}" for r in ROLES_BN},
    "conv2.weight": "body.conv.weight",
    **{f"bn2.{r}": f"body.norm.{r}" for r in ROLES_BN},
    "fc.weight": "head.weight",
    "fc.bias": "head.bias",
}


def struct_source_table(num_classes: int = 3) -> dict:
    table = tiny_table(num_classes, names=STRUCT_NAMES)
    head = {k: v for k, v in table.items() if k.startswith("head.")}
    return {**head, **{k: v for k, v in table.items() if not k.startswith("head.")}}


def test_auto_matches_structure_when_names_and_order_differ():
    match = match_auto(struct_source_table(), tiny_table(), MatchContext())
    assert {t: s for t, (s, _) in match.pairs.items()} == STRUCT_MAPPING
    assert match.unresolved == {}
    confidences = {t: c for t, (_, c) in match.pairs.items()}
    # the two norms are told apart only by the source's registration order: weak evidence
    assert confidences["bn1.weight"] == pytest.approx(0.5)
    assert any("registration order alone" in note for note in match.notes)
    assert confidences["conv1.weight"] == 1.0  # a unique fingerprint


def test_auto_reports_ambiguity_instead_of_guessing():
    """In a name-sorted source (order lost) nothing tells stem.norm from body.norm."""
    source = dict(sorted(struct_source_table().items()))
    match = match_auto(source, tiny_table(), MatchContext(order_trusted=False))
    for role in ("weight", "bias", "running_mean", "running_var"):
        # only trial assignments, for the architecture or BatchNorm statistics to settle
        assert match.evidence[f"bn1.{role}"] == "candidate"
        assert match.evidence[f"bn2.{role}"] == "candidate"
    assert [sorted(t for _, t in group) for group in match.ties] == [["bn1", "bn2"]]
    assert match.pairs["conv1.weight"] == ("stem.conv.weight", 1.0)
    assert match.pairs["conv2.weight"] == ("body.conv.weight", 1.0)


def test_auto_ambiguity_through_plan_graft_is_missing_with_detail(tiny):
    source_model = tiny(seed=2)
    renamed = rename_state(source_model.state_dict(), TINY_NAMES, STRUCT_NAMES)
    name_sorted = dict(sorted(renamed.items()))
    plan = plan_graft(tiny(seed=1), name_sorted)
    by_target = {e.target: e for e in plan.entries}
    for role in ("weight", "bias", "running_mean", "running_var"):
        for module in ("bn1", "bn2"):
            entry = by_target[f"{module}.{role}"]
            assert entry.action is Action.MISSING
            assert entry.source is None
            assert entry.detail.startswith("ambiguous")
            assert "stem.norm" in entry.detail or "body.norm" in entry.detail
    assert any("ambiguous" in note for note in plan.notes)
    rendered = plan.render(limit=None)
    assert "missing:" in rendered
    assert "ambiguous" in rendered


def test_auto_source_model_resolves_the_ambiguity_of_a_sorted_checkpoint(helpers, tiny):
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Module()
            self.stem.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.stem.norm = nn.BatchNorm2d(4)
            self.body = nn.Module()
            self.body.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.body.norm = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            x = torch.relu(self.stem.norm(self.stem.conv(x)))
            x = torch.relu(self.body.norm(self.body.conv(x)))
            return self.head(x.mean((2, 3)))

    source_model = tiny(seed=2)
    renamed = rename_state(source_model.state_dict(), TINY_NAMES, STRUCT_NAMES)
    name_sorted = dict(sorted(renamed.items()))
    target = tiny(seed=1)
    report = graft(target, name_sorted, source_model=Renamed())
    assert report.mapping == STRUCT_MAPPING
    helpers.assert_bitwise_equal(target, helpers.snapshot(source_model))
    evidence = {e.target: e.evidence for e in report.entries}
    assert evidence["bn1.weight"] == evidence["bn2.running_var"] == "architecture"
    assert report.uncertain == []


def test_auto_structure_through_graft_loads_the_right_tensors(helpers, tiny):
    source_model = tiny(seed=2)
    renamed = rename_state(source_model.state_dict(), TINY_NAMES, STRUCT_NAMES)
    head_first = {k: renamed[k] for k in ("head.weight", "head.bias")}
    head_first.update({k: v for k, v in renamed.items() if not k.startswith("head.")})
    target = tiny(seed=1)
    before = helpers.snapshot(target)
    # the two norms are told apart by the source's registration order alone: not proof
    with pytest.raises(InexactGraftError, match=r"registration-order \(0\.5\): 8") as refused:
        graft(target, head_first)
    assert "bn1.{weight, bias, running_mean, running_var}: ← stem.norm" in str(refused.value)
    assert "allow_uncertain=True" in str(refused.value)
    helpers.assert_bitwise_equal(target, before)  # nothing was loaded
    with pytest.warns(GraftWarning, match="8 target keys loaded on registration-order"):
        report = graft(target, head_first, allow_uncertain=True)
    assert report.mapping == STRUCT_MAPPING
    assert any("allow_uncertain" in note for note in report.notes)
    helpers.assert_bitwise_equal(target, helpers.snapshot(source_model))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(target.eval()(x), source_model.eval()(x))


# --- auto: the coverage floor --------------------------------------------------------------


class Twin(nn.Module):
    """Two big same-shaped branches and a small stem and head."""

    def __init__(self, names=("entry", "left", "right", "fc")):
        super().__init__()
        self.names = names
        for name, module in zip(
            names,
            (nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 2)),
            strict=True,
        ):
            self.add_module(name, module)

    def forward(self, x):
        entry, left, right, fc = (getattr(self, n) for n in self.names)
        x = entry(x)
        x = left(x) + right(x)
        return fc(x.mean((2, 3)))


def sorted_twin_source(seed: int):
    source = Twin(("stem", "alpha", "beta", "classifier"))
    torch.manual_seed(seed)
    for p in source.parameters():
        nn.init.normal_(p)
    return source, dict(sorted(source.state_dict().items()))


def test_coverage_floor_refuses_and_leaves_the_model_unchanged(helpers):
    _, name_sorted = sorted_twin_source(3)
    target = Twin()
    before = helpers.snapshot(target)
    plan = plan_graft(target, name_sorted)
    # computed by hand: stem 8*3*3*3 + 8, head 2*8 + 2 of 2*(8*8*3*3 + 8) + 224 + 18
    loaded = 8 * 27 + 8 + 16 + 2
    total = loaded + 2 * (8 * 8 * 9 + 8)
    assert plan.coverage == pytest.approx(loaded / total)
    assert plan.coverage < 0.5
    # 242 / 1410 = 17.16 %, shown rounded down
    with pytest.raises(GraftError, match=r"refusing to graft .* 17\.1% .*minimum 50%"):
        graft(target, name_sorted)
    helpers.assert_bitwise_equal(target, before)


def test_coverage_floor_zero_allows_a_partial_graft(helpers):
    _, name_sorted = sorted_twin_source(3)
    target = Twin()
    before = helpers.snapshot(target)
    report = graft(target, name_sorted, min_coverage=0, allow_partial=True)
    state = target.state_dict()
    assert torch.equal(state["entry.weight"], name_sorted["stem.weight"])
    assert torch.equal(state["fc.bias"], name_sorted["classifier.bias"])
    for key in ("left.weight", "left.bias", "right.weight", "right.bias"):
        assert torch.equal(state[key], before[key])
    assert sorted(report.missing) == ["left.bias", "left.weight", "right.bias", "right.weight"]


def test_trusted_order_breaks_the_tie_between_same_shaped_branches():
    source, _ = sorted_twin_source(3)  # registration order: stem, alpha, beta, classifier
    plan = plan_graft(Twin(), dict(source.state_dict()))
    assert plan.mapping == {
        "entry.weight": "stem.weight",
        "entry.bias": "stem.bias",
        "left.weight": "alpha.weight",
        "left.bias": "alpha.bias",
        "right.weight": "beta.weight",
        "right.bias": "beta.bias",
        "fc.weight": "classifier.weight",
        "fc.bias": "classifier.bias",
    }
    confidence = {e.target: e.confidence for e in plan.entries}
    assert confidence["left.weight"] < 1.0  # decided by order alone, and it says so


# --- strip_prefixes on its own -------------------------------------------------------------


def test_strip_prefixes_identity_has_no_note():
    transform, note = strip_prefixes(["a.weight", "b.weight"], ["a.weight", "b.weight"])
    assert note == ""
    assert transform("a.weight") == "a.weight"


def test_strip_prefixes_lightning_and_ddp_together():
    keys = ["model.module.conv.weight", "model.module.conv.bias", "model.module.fc.weight"]
    transform, note = strip_prefixes(keys, ["conv.weight", "conv.bias", "fc.weight"])
    assert [transform(k) for k in keys] == ["conv.weight", "conv.bias", "fc.weight"]
    assert re.search(r"renamed 3 source keys", note)
