"""GraftPlan / GraftReport: one entry per target key, the contract properties, coverage,
JSON round trip, grouped rendering, and "the report tells exactly what was not loaded"."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from torchgraft.errors import GraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.graft_plan import Action, GraftPlan, GraftReport, KeyPlan, group_keys


def messy_source(helpers, seed: int = 1) -> dict[str, torch.Tensor]:
    """A DDP-wrapped TinyNet with a 5-class head and without one BN statistic."""
    model = helpers.randomize(helpers.TinyNet(num_classes=5), seed)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    del state["module.bn2.running_mean"]
    return state


EXPECTED_MAPPING = {
    k: "module." + k
    for k in (
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "conv2.weight",
        "bn2.weight",
        "bn2.bias",
        "bn2.running_var",
        "bn2.num_batches_tracked",
    )
}


@pytest.mark.parametrize("strategy", ["auto", "shape", "exact", "order"])
def test_every_target_key_appears_exactly_once_in_target_order(helpers, strategy):
    target = helpers.TinyNet(num_classes=3)
    source = helpers.randomize(helpers.TinyNet(num_classes=3), 2).state_dict()
    plan = plan_graft(target, source, strategy=strategy)
    assert [e.target for e in plan.entries] == list(target.state_dict())


def test_contract_properties_on_a_messy_source(helpers):
    target = helpers.TinyNet(num_classes=3)
    plan = plan_graft(target, messy_source(helpers))
    assert [e.target for e in plan.entries] == list(target.state_dict())
    assert plan.mapping == EXPECTED_MAPPING
    assert plan.missing == ["bn2.running_mean", "fc.weight", "fc.bias"]
    assert [(e.target, e.source) for e in plan.mismatched] == [
        ("fc.weight", "module.fc.weight"),
        ("fc.bias", "module.fc.bias"),
    ]
    assert plan.unexpected == []  # the skipped head is not listed twice
    assert plan.counts == {
        "copy": 0,
        "rename": 11,
        "reshape": 0,
        "adapt": 0,
        "skip-shape": 2,
        "missing": 1,
        "unexpected": 0,
    }


def test_unused_source_keys_are_unexpected(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=3), 2).state_dict()
    source = {"module." + k: v for k, v in source.items()}
    source["module.aux.weight"] = torch.ones(3)
    source["ema_decay"] = torch.tensor(0.999)
    plan = plan_graft(helpers.TinyNet(num_classes=3), source)
    assert plan.coverage == 1.0
    assert plan.unexpected == ["module.aux.weight", "ema_decay"]
    assert plan.counts["unexpected"] == 2


def test_a_lone_stray_source_tensor_is_not_paired_with_an_unrelated_missing_key(helpers):
    source = messy_source(helpers)
    source["module.aux.weight"] = torch.ones(3)
    plan = plan_graft(helpers.TinyNet(num_classes=3), source)
    entry = next(e for e in plan.entries if e.target == "bn2.running_mean")
    assert (entry.action, entry.source) == (Action.MISSING, None)
    assert plan.unexpected == ["module.aux.weight"]


def test_coverage_is_the_fraction_of_target_parameter_elements_loaded(helpers):
    target = helpers.TinyNet(num_classes=3)
    plan = plan_graft(target, messy_source(helpers))
    # by hand, parameters only: conv1 4*3*3*3, bn1 weight+bias 8, conv2 4*4*3*3, bn2 8, fc 3*4+3
    total = 108 + 8 + 144 + 8 + 15
    not_loaded = 15  # the head; bn2.running_mean is a buffer: listed as missing, not counted
    assert plan.coverage == pytest.approx((total - not_loaded) / total)
    assert total == sum(p.numel() for p in target.parameters())
    assert "bn2.running_mean" in plan.missing


def test_plan_graft_touches_neither_model(helpers):
    target = helpers.randomize(helpers.TinyNet(num_classes=3), 3)
    source = helpers.randomize(helpers.TinyNet(num_classes=3), 4)
    target.train()
    source.eval()
    t_before, s_before = helpers.snapshot(target), helpers.snapshot(source)
    plan = plan_graft(target, source)
    assert plan.coverage == 1.0
    helpers.assert_bitwise_equal(target, t_before)
    helpers.assert_bitwise_equal(source, s_before)
    assert target.training
    assert not source.training


def test_missing_is_exactly_what_was_not_loaded(helpers):
    target = helpers.randomize(helpers.TinyNet(num_classes=3), 5)
    before = helpers.snapshot(target)
    source = messy_source(helpers, seed=6)
    report = graft(target, source, allow_partial="bn2.*")  # messy_source lacks one statistic
    after = target.state_dict()
    unchanged = [k for k in after if torch.equal(after[k], before[k])]
    assert unchanged == report.missing
    for key, source_key in report.mapping.items():
        assert torch.equal(after[key], source[source_key])
    assert set(report.missing) | set(report.mapping) == set(after)
    assert not set(report.missing) & set(report.mapping)


def test_a_report_is_a_plan_plus_verification(helpers):
    target = helpers.TinyNet(num_classes=3)
    report = graft(target, messy_source(helpers), allow_partial=True)
    assert isinstance(report, GraftReport)
    document = json.loads(report.to_json())
    assert document["verification"] is None
    assert document["coverage"] == pytest.approx(report.coverage, abs=1e-6)
    assert document["counts"]["skip-shape"] == 2
    assert len(document["entries"]) == 14
    assert document["unexpected"] == []
    assert document["source_format"] == "state_dict"


# --- JSON round trip -----------------------------------------------------------------------


def conv_linear_net() -> nn.Module:
    """No BatchNorm, so no scalar (0-d) tensors."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_json_round_trip(helpers):
    source = {"module." + k: v for k, v in conv_linear_net().state_dict().items()}
    source["module.3.weight"] = torch.zeros(5, 4)  # a head that will be skipped
    source["stray"] = torch.zeros(1)
    plan = plan_graft(conv_linear_net(), source)
    document = json.loads(plan.to_json())
    again = GraftPlan.from_dict(document)
    assert again.to_dict() == plan.to_dict()
    assert again.entries == plan.entries
    assert again.mapping == plan.mapping
    assert again.unexpected == ["stray"]
    assert math.isclose(again.coverage, plan.coverage)


def test_json_round_trip_keeps_scalar_shapes(helpers):
    model = helpers.TinyNet()
    plan = plan_graft(model, model.state_dict())
    again = GraftPlan.from_dict(json.loads(plan.to_json()))
    entry = next(e for e in again.entries if e.target == "bn1.num_batches_tracked")
    assert entry.source_shape == ()
    assert again.to_dict() == plan.to_dict()


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"strategy": "auto"},
        {"entries": [{"target": "a"}]},
        {"entries": [{"target": "a", "action": "teleport"}]},
    ],
    ids=["list", "no-entries", "no-action", "bad-action"],
)
def test_from_dict_refuses_what_is_not_a_plan(document):
    with pytest.raises(GraftError):
        GraftPlan.from_dict(document)


def test_key_plan_serialises_shapes_as_lists():
    entry = KeyPlan(
        "a.weight", "b.weight", Action.RESHAPE, 0.75, (8, 4), (8, 4, 1, 1), "x", {"kind": "reshape"}
    )
    data = entry.to_dict()
    assert data == {
        "target": "a.weight",
        "source": "b.weight",
        "action": "reshape",
        "confidence": 0.75,
        "target_shape": [8, 4],
        "source_shape": [8, 4, 1, 1],
        "detail": "x",
        "adapt": {"kind": "reshape"},
        "evidence": "",
    }
    assert json.loads(json.dumps(data)) == data
    assert KeyPlan.from_dict(data) == entry


# --- rendering -----------------------------------------------------------------------------


def test_group_keys_braces_siblings_and_roles():
    keys = [
        "layer1.0.bn1.weight",
        "layer1.0.bn1.bias",
        "layer1.0.bn2.weight",
        "layer1.0.bn2.bias",
        "layer1.0.conv1.weight",
        "fc.weight",
        "fc.bias",
        "scale",
    ]
    assert group_keys(keys) == [
        "layer1.0.{bn1, bn2}.{bias, weight}",
        "layer1.0.conv1.weight",
        "fc.{bias, weight}",
        "scale",
    ]


def test_render_shows_counts_sections_and_grouped_keys(helpers):
    plan = plan_graft(helpers.TinyNet(num_classes=3), messy_source(helpers))
    text = plan.render()
    lines = text.splitlines()
    assert lines[0] == "graft auto: in-memory state_dict [state_dict]"
    # 268 of 283 parameter elements (see the coverage test), rounded down
    assert lines[1] == (
        "coverage 94.6% of target parameter elements · rename 11 · skip-shape 2 · missing 1"
    )
    assert "  * ← module.*  (11 keys, rest of the name equal)" in lines
    assert "skipped (shape):" in lines
    assert "  fc.weight [3, 4] ← module.fc.weight [5, 4]: shape [5, 4] cannot fill [3, 4]" in lines
    assert lines[lines.index("missing:") + 1] == "  bn2.running_mean"
    assert "unexpected:" not in lines
    assert str(plan) == text


def test_render_groups_missing_keys_and_limits_long_sections(helpers):
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.blocks = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(20))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean((2, 3)))

    model = Wide()
    source = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    plan = plan_graft(model, source)
    assert plan.missing == [k for k in model.state_dict() if k.startswith("blocks.")]
    full = plan.render(limit=None).splitlines()
    start = full.index("missing:")
    assert full[start + 1] == (
        "  blocks.{"
        + ", ".join(str(i) for i in range(20))
        + "}.{bias, num_batches_tracked, running_mean, running_var, weight}"
    )
    short = plan.render(limit=0)
    assert "… 1 more (render(limit=None) lists all)" in short


def test_renames_without_a_common_prefix_are_listed_per_module(helpers):
    source_model = helpers.randomize(helpers.TinyNet(), 3)
    names = {"conv1": "stem", "bn1": "norm0", "conv2": "body", "bn2": "norm1", "fc": "head"}
    source = {}
    for key, value in source_model.state_dict().items():
        module, _, role = key.rpartition(".")
        source[f"{names[module]}.{role}"] = value
    plan = plan_graft(helpers.TinyNet(), source)
    text = plan.render(limit=None)
    lines = text.splitlines()
    assert "  conv1.weight ← stem" in lines
    assert "  fc.{weight, bias} ← head" in lines
    # decided by order: the rendering says how sure it is
    assert (
        "  bn2.{weight, bias, running_mean, running_var, num_batches_tracked} ← norm1  (order)"
    ) in lines
