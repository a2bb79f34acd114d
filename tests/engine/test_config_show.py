"""What ``--print-config`` shows (torchgraft.engine.config.show): YAML that loads again, the
settings left to the run's start marked, and the planned stages — by layer group when the
model can be built on meta, in words when it cannot or must not be built."""

from __future__ import annotations

import io
import sys

import yaml

from torchgraft.engine.config.load import load_config
from torchgraft.engine.config.show import config_yaml, layer_group_names, show_config


def shown(overrides) -> str:
    out = io.StringIO()
    show_config(load_config(None, overrides, check_paths=False, check_names=False), out)
    return out.getvalue()


def flat(text: str) -> str:
    """The comment lines of ``text`` as one line (wrapping undone)."""
    lines = [line for line in text.splitlines() if line.startswith("#")]
    return " ".join(" ".join(line.lstrip("#").split()) for line in lines)


def test_the_yaml_loads_back_and_marks_what_the_run_chooses(tmp_path):
    words = ["--data.source", "nowhere/", "--data.image_size", "96"]
    config = load_config(None, words, check_paths=False, check_names=False)
    text = config_yaml(config)

    assert yaml.safe_load(text) == config.to_dict()
    assert "  crop_pct: null  # the model's own crop\n" in text  # a size given: not the data's
    assert "  batch_size: null  # chosen from the size of the training split when" in text
    assert "  num_classes: null  # the data's classes, counted when the run starts\n" in text
    assert "data.source 'nowhere/' does not exist (yet)" in text
    (tmp_path / "again.yaml").write_text(text)
    assert load_config(tmp_path / "again.yaml", check_paths=False) == config


def test_a_data_source_the_system_cannot_look_up_is_named_not_a_crash():
    long = "a" * 5000
    text = shown(["--data.source", long, "--freeze.schedule", "null"])
    assert f"data.source '{'a' * 77}...' does not exist (yet)" in flat(text)
    assert max(len(line) for line in text.splitlines() if line.startswith("#")) <= 96


def test_a_callable_model_is_not_built_to_print_its_stages(monkeypatch, tmp_path):
    # Its module would run code on import: it must stay unimported.
    (tmp_path / "sideeffect_model.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = shown(["--model.name", "sideeffect_model:build"])

    assert "sideeffect_model" not in sys.modules
    assert "#   epoch 1: the head alone × 1" in text
    assert "#   epochs 2–6: every layer group, the head × 0.35" in text
    assert "no group names: sideeffect_model:build is not built here" in flat(text)


def test_a_model_that_cannot_be_built_gives_the_stages_in_words():
    config = load_config(
        None,
        ["--model.name", "timm:resnt50", "--freeze.schedule.kind", "progressive"],
        check_paths=False,
        check_names=False,
    )
    groups, why = layer_group_names(config)
    assert groups is None
    assert why.startswith("timm:resnt50 could not be built: no timm model 'resnt50'")
    text = shown(["--model.name", "timm:resnt50", "--freeze.schedule.kind", "progressive"])
    assert "#   epoch 1: the head alone × 1" in text
    assert "from epoch 2: one more layer group every 1 epochs, from the head down" in flat(text)


def test_stages_by_layer_group_with_a_timm_tag_and_growing_rates():
    text = shown(
        [
            "--model.name", "timm:resnet18.a1_in1k",
            "--freeze.schedule.kind", "unfreeze_at",
            "--freeze.schedule.epoch", "2",
            "--freeze.schedule.growth", "3",
            "--train.epochs", "8",
            "--train.early_stopping", "2",
        ]
    )  # fmt: skip
    stages = text[text.index("# planned stages") :].splitlines()

    assert "for the 6 layer groups of timm:resnet18.a1_in1k;" in flat(text)
    assert stages[2:7] == [
        "#   epochs 1–2  head × 1",
        "#   epoch 3     all 6 groups: stem … layer4 (5 groups) × 0.1, head × 1",
        "#   epoch 4     all 6 groups: stem … layer4 (5 groups) × 0.3, head × 1",
        "#   epoch 5     all 6 groups: stem … layer4 (5 groups) × 0.9, head × 1",
        "#   epochs 6–8  all 6 groups × 1",
    ]
    assert stages[7] == "#   train.early_stopping 2 may end the run before its last stage"


def test_with_adapters_the_stages_say_that_a_group_trains_its_adapters():
    lora = ["--peft.method", "lora", "--peft.rank", "4"]
    assert "adapters" not in flat(shown([]))
    assert (
        "peft.method lora (rank 4, alpha 16, targets auto): a group that trains trains its "
        "adapters, its own weights stay frozen; the head trains whole"
    ) in flat(shown(lora))
    fixed = shown([*lora, "--freeze.schedule", "null", "--peft.targets", '["blocks.*"]'])
    assert "holds for all 6 epochs" in flat(fixed)
    assert "targets blocks.*): a group that trains trains its adapters" in flat(fixed)
