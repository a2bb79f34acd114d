"""Rename rules as data: templates and regexes, first match wins, reversal, and the ``rules``
strategy through ``plan_graft`` / ``graft`` (including the export back to the source naming).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from torchgraft.errors import GraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.graft_plan import Action
from torchgraft.grafting.match import MatchContext, match_rules
from torchgraft.grafting.rules import RenameRules, load_rules

F32 = "torch.float32"

#: A third naming convention for EfficientNet-Lite0's keys (the one test_api.py grafts too).
LITE0_RULES = [
    {"from": "_conv_stem.{role}", "to": "stem.conv.{role}"},
    {"from": "_bn0.{role}", "to": "stem.norm.{role}"},
    {"from": "_blocks.{i}._expand_conv.{role}", "to": "stage_blocks.{i}.conv_1.{role}"},
    {"from": "_blocks.{i}._bn0.{role}", "to": "stage_blocks.{i}.norm_1.{role}"},
    {"from": "_blocks.{i}._depthwise_conv.{role}", "to": "stage_blocks.{i}.conv_2.{role}"},
    {"from": "_blocks.{i}._bn1.{role}", "to": "stage_blocks.{i}.norm_2.{role}"},
    {"from": "_blocks.{i}._project_conv.{role}", "to": "stage_blocks.{i}.conv_3.{role}"},
    {"from": "_blocks.{i}._bn2.{role}", "to": "stage_blocks.{i}.norm_3.{role}"},
    {"from": "_conv_head.{role}", "to": "neck.conv.{role}"},
    {"from": "_bn1.{role}", "to": "neck.norm.{role}"},
    {"from": "_fc.{role}", "to": "logits.{role}"},
]


def test_templates_rename_components_by_hand_checked_examples():
    rules = RenameRules.from_data(LITE0_RULES)
    assert rules.apply("_blocks.12._bn1.running_var") == "stage_blocks.12.norm_2.running_var"
    assert rules.apply("_bn1.weight") == "neck.norm.weight"
    assert rules.apply("_conv_stem.weight") == "stem.conv.weight"
    assert rules.apply("_fc.bias") == "logits.bias"
    assert rules.apply("unrelated.key") == "unrelated.key"  # no rule: unchanged


def test_a_single_placeholder_matches_one_component_only():
    rules = RenameRules.from_data([{"from": "a.{x}", "to": "b.{x}"}])
    assert rules.apply("a.w") == "b.w"
    assert rules.apply("a.w.z") == "a.w.z"


def test_a_star_placeholder_matches_any_number_of_components():
    rules = RenameRules.from_data([{"from": "{path*}.gamma", "to": "{path*}.weight"}])
    assert rules.apply("stages.0.blocks.3.gamma") == "stages.0.blocks.3.weight"
    assert rules.apply("n.gamma") == "n.weight"
    assert rules.apply("gamma") == "gamma"  # needs at least one component before it


def test_regex_rules_with_backreferences():
    rules = RenameRules.from_data(
        [{"pattern": r"^features\.(\d+)\.conv\.", "replace": r"blocks.\1.conv_"}]
    )
    assert rules.apply("features.14.conv.weight") == "blocks.14.conv_weight"
    assert rules.apply("features.x.conv.weight") == "features.x.conv.weight"


def test_first_matching_rule_wins():
    data = [
        {"from": "head.fc.{role}", "to": "classifier.{role}"},
        {"from": "head.{rest*}", "to": "neck.{rest*}"},
    ]
    rules = RenameRules.from_data(data)
    assert rules.apply("head.fc.weight") == "classifier.weight"
    assert rules.apply("head.norm.weight") == "neck.norm.weight"
    swapped = RenameRules.from_data(list(reversed(data)))
    assert swapped.apply("head.fc.weight") == "neck.fc.weight"


def test_a_from_to_mapping_is_a_list_of_literal_rules():
    rules = RenameRules.from_data(
        {"_conv_stem.weight": "conv_stem.weight", "_fc.bias": "head.bias"}
    )
    assert len(rules) == 2
    assert rules.apply("_conv_stem.weight") == "conv_stem.weight"
    assert rules.apply("_fc.bias") == "head.bias"
    assert rules.apply("_fc.weight") == "_fc.weight"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("just a string", "must be a list"),
        ([["from", "to"]], "rule #0 is a list, not a mapping"),
        ([{"from": "a"}], "rule #0 needs 'from' and 'to'"),
        (
            [{"from": "a.{x}", "to": "b.{x}"}, {"pattern": "(", "replace": ""}],
            "rule #1: invalid regular expression",
        ),
        ([{"from": "{x}.{x}", "to": "{x}"}], r"rule #0: placeholder \{x\} appears twice"),
        ([{"from": "a.{x}", "to": "b.{y}"}], r"rule #0: 'b.\{y\}' uses \['y'\]"),
    ],
)
def test_invalid_rules_name_the_rule_at_fault(data, message):
    with pytest.raises(GraftError, match=message):
        RenameRules.from_data(data)


# --- files ---------------------------------------------------------------------------------


def test_load_rules_from_yaml_and_json(tmp_path):
    yaml_path = tmp_path / "rules.yaml"
    yaml_path.write_text(yaml.safe_dump({"rules": LITE0_RULES}))
    json_path = tmp_path / "rules.json"
    json_path.write_text(json.dumps(LITE0_RULES))
    for path in (yaml_path, json_path):
        rules = load_rules(path)
        assert len(rules) == len(LITE0_RULES)
        assert rules.apply("_blocks.3._bn2.bias") == "stage_blocks.3.norm_3.bias"


def test_load_rules_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(GraftError, match=r"nope\.yaml: cannot read rename rules"):
        load_rules(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- from: a\n")
    with pytest.raises(GraftError, match=r"bad\.yaml: rule #0 needs 'from' and 'to'"):
        load_rules(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [unclosed\n")
    with pytest.raises(GraftError, match=r"broken\.yaml: cannot read rename rules"):
        load_rules(broken)


# --- reversal ------------------------------------------------------------------------------


def lite0_keys() -> list[str]:
    from efficientnet_lite_pytorch import EfficientNet

    with torch.device("meta"):
        model = EfficientNet.from_name("efficientnet-lite0")
    return list(model.state_dict())


def test_reversed_rules_map_every_renamed_key_back():
    rules = RenameRules.from_data(LITE0_RULES)
    keys = lite0_keys()
    renamed = [rules.apply(k) for k in keys]
    assert all(not r.startswith("_") for r in renamed)  # every key was renamed
    assert len(set(renamed)) == len(keys)
    back = rules.reversed()
    assert [back.apply(r) for r in renamed] == keys


def test_a_regex_without_inverse_cannot_be_reversed():
    rules = RenameRules.from_data(
        [
            {"from": "a.{x}", "to": "b.{x}"},
            {"pattern": r"^module\.", "replace": ""},
        ]
    )
    with pytest.raises(
        GraftError, match=r"rename rule '\^module\\\.' is a regex without an 'inverse'"
    ):
        rules.reversed()


def test_a_regex_with_an_inverse_round_trips():
    rules = RenameRules.from_data(
        [
            {
                "pattern": r"^module\.",
                "replace": "",
                "inverse": {"pattern": "^", "replace": "module."},
            }
        ]
    )
    assert rules.apply("module.conv.weight") == "conv.weight"
    assert rules.reversed().apply("conv.weight") == "module.conv.weight"


def test_a_template_that_drops_a_placeholder_works_forward():
    rules = RenameRules.from_data([{"from": "aux_heads.{i}.{role}", "to": "aux.{role}"}])
    assert rules.apply("aux_heads.0.weight") == "aux.weight"
    with pytest.raises(GraftError):
        rules.reversed()


# --- the rules strategy --------------------------------------------------------------------


def test_match_rules_pairs_renamed_keys():
    source = {"_conv_stem.weight": ((8, 3, 3, 3), F32), "_fc.weight": ((10, 8), F32)}
    target = {"stem.conv.weight": ((8, 3, 3, 3), F32), "logits.weight": ((10, 8), F32)}
    rules = RenameRules.from_data(LITE0_RULES)
    match = match_rules(source, target, MatchContext(rules=rules))
    assert match.pairs == {
        "stem.conv.weight": ("_conv_stem.weight", 1.0),
        "logits.weight": ("_fc.weight", 1.0),
    }


def test_two_sources_renamed_to_one_target_is_an_error():
    source = {"a.weight": ((2,), F32), "b.weight": ((2,), F32)}
    rules = RenameRules.from_data([{"pattern": r"^[ab]\.weight$", "replace": "x.weight"}])
    with pytest.raises(GraftError, match=r"map both 'a\.weight' and 'b\.weight' to 'x\.weight'"):
        match_rules(source, {"x.weight": ((2,), F32)}, MatchContext(rules=rules))


def test_rules_strategy_needs_rules(helpers):
    with pytest.raises(GraftError, match="strategy 'rules' needs rename rules"):
        plan_graft(helpers.TinyNet(), helpers.TinyNet().state_dict(), strategy="rules")


TINY_RULES = [
    {"from": "stem.conv.{role}", "to": "conv1.{role}"},
    {"from": "stem.norm.{role}", "to": "bn1.{role}"},
    {"from": "body.conv.{role}", "to": "conv2.{role}"},
    {"from": "body.norm.{role}", "to": "bn2.{role}"},
    {"from": "head.{role}", "to": "fc.{role}"},
]


def renamed_tiny_state(helpers, seed: int, num_classes: int = 3) -> dict[str, torch.Tensor]:
    model = helpers.randomize(helpers.TinyNet(num_classes=num_classes), seed)
    back = RenameRules.from_data(TINY_RULES).reversed()
    return {back.apply(k): v for k, v in model.state_dict().items()}


def test_rules_strategy_from_a_yaml_file_loads_and_exports_back(helpers, tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(TINY_RULES))
    source = renamed_tiny_state(helpers, seed=9)
    assert "stem.norm.running_var" in source
    target = helpers.TinyNet()
    report = graft(target, source, strategy="rules", rules=rules_file)
    assert report.mapping["bn2.running_mean"] == "body.norm.running_mean"
    assert report.mapping["fc.bias"] == "head.bias"
    assert report.coverage == 1.0
    state = target.state_dict()
    assert torch.equal(state["conv2.weight"], source["body.conv.weight"])
    assert torch.equal(state["bn1.num_batches_tracked"], source["stem.norm.num_batches_tracked"])
    exported = report.to_source_naming(target.state_dict())
    assert list(exported) == list(source)
    for key, value in source.items():
        assert torch.equal(exported[key], value), key


def test_rules_strategy_reports_what_the_rules_leave_out(helpers):
    source = renamed_tiny_state(helpers, seed=9, num_classes=5)
    source["extra.weight"] = torch.zeros(2)
    target = helpers.TinyNet(num_classes=3)
    rules = [r for r in TINY_RULES if not r["from"].startswith("body.norm")]
    plan = plan_graft(target, source, strategy="rules", rules=rules)
    actions = {e.target: e.action for e in plan.entries}
    assert actions["fc.weight"] is Action.SKIP_SHAPE  # head of 5 classes into 3
    assert actions["bn2.weight"] is Action.MISSING  # no rule renames body.norm
    assert "body.norm.weight" in plan.unexpected
    assert "extra.weight" in plan.unexpected
    assert "head.weight" not in plan.unexpected  # reported as skipped, not twice
