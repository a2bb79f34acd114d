"""What a REPL shows: the objects a user meets after ``tg.replace_head``, ``tg.freeze``, a
schedule's ``apply``, ``tg.param_groups`` & co. print one short line naming the essentials —
never a dump of a whole module or of hundreds of keys — on real torchvision and timm models.
``str()`` keeps its tables."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torchvision.models import ResNet50_Weights

import torchgraft as tg
from torchgraft.grafting.source import read_source

#: Longest acceptable repr: a couple of lines on a terminal.
SHORT = 300

IMAGENET = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def assert_short(value, *needles: str) -> str:
    text = repr(value)
    assert len(text) < SHORT, text
    assert "\n" not in text, text
    assert text.startswith("<"), text
    assert text.endswith(">"), text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("torchvision:resnet50", "fc", 2048), id="torchvision-resnet50"),
        pytest.param(("timm:vit_tiny_patch16_224", "head", 192), id="timm-vit_tiny"),
    ],
)
def session(request):
    """One fine-tuning session, as typed in a REPL, on a real model with random weights."""
    name, head, width = request.param
    model = tg.create_model(name)
    found = tg.find_head(model)
    change = tg.replace_head(model, num_classes=10)
    frozen = tg.freeze(model, "head")
    schedule = tg.TwoPhase(lr=1e-3, freeze_epochs=1)
    optimizer = torch.optim.SGD(schedule.start(model), lr=1e-3)
    stage = schedule.apply(model, optimizer, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audit = tg.audit_optimizer(optimizer, model)
    init = tg.init_new_layers(model, [f"{head}.weight", f"{head}.bias"])
    return locals()


def test_head_names_path_layer_and_widths(session):
    width = session["width"]
    assert_short(
        session["found"],
        f"<Head {session['head']}: Linear({width}→1000)",
        f"{width} features → 1000 classes",
    )


def test_head_replacement_names_old_and_new_layer(session):
    width, head = session["width"], session["head"]
    assert_short(session["change"], f"{head}: Linear({width}→1000) → Linear({width}→10)")
    assert str(session["change"]) == f"{head}: Linear({width}→1000) -> Linear({width}→10)"


def test_freeze_summary_is_a_line_and_its_str_the_table(session):
    summary = session["frozen"]
    text = assert_short(summary, "'head'", "bn 'frozen'", f"{summary.trainable:,} of")
    assert "norm layers fixed" in text
    assert str(summary).splitlines()[1].split() == [
        "group",
        "trainable",
        "frozen",
        "fixed",
        "norms",
    ]


def test_stage_change_says_epoch_what_trains_and_what_changed(session):
    change = session["stage"]
    groups = len(session["model"].torchgraft_spec.layer_groups)
    assert len(change.added) > 50  # hundreds of names in the field, none in the repr
    text = assert_short(change, "epoch 1", f"all {groups} groups", "changed", "tensors added")
    assert change.added[-1] not in text
    assert_short(change.stage, "<Stage epoch 1: trains all")


def test_audit_and_init_summaries(session):
    assert_short(session["audit"], "groups", "tensors", "elements")
    head = session["head"]
    assert_short(session["init"], "'kaiming'", f"2 tensors ({head}.weight, {head}.bias)")


def test_model_spec_with_a_thousand_class_names(session):
    spec = dataclasses.replace(
        session["model"].torchgraft_spec, num_classes=1000, classes=IMAGENET, weights="DEFAULT"
    )
    assert len(str(dataclasses.asdict(spec))) > 10_000  # what a default repr would print
    text = assert_short(spec, session["name"], "@DEFAULT", "1000 classes (tench, goldfish, …")
    assert "toilet tissue" not in text
    assert_short(spec.layer_groups[1], f"<LayerGroup {spec.layer_groups[1].name}:")


def test_checkpoint_and_source_weights(session):
    source = read_source(session["model"])
    count = len(source.checkpoint.tensors)
    assert_short(source.checkpoint, f"{count} tensors", "elements")
    assert_short(source, "<SourceWeights <Checkpoint", "registration order known")


def test_verification_repr():
    from torchgraft.grafting.verify import Verification

    ok = Verification(True, 0.0, 1e-7, 1e-6, 1e-4, (2, 3, 224, 224), "timm:resnet50")
    assert_short(ok, "OK against timm:resnet50", "1.0e-07 ≤ 1e-04")
    failed = dataclasses.replace(ok, ok=False, output_rel_diff=0.3, diverges_at=("bn1", "f.0.1"))
    assert_short(failed, "FAILED", "3.00e-01", "tolerance 1e-04", "'bn1' (source 'f.0.1')")


def test_run_shows_the_outcome_not_the_history(tmp_path):
    from torchgraft.engine.fit import Run

    history = [
        {"epoch": e, "split": s, "loss": 1.0 / (e + 1), "acc1": 0.5 + e / 100, "f1": 0.5}
        for e in range(100)
        for s in ("train", "val")
    ]
    run = Run(tmp_path / "run", {**history[-1], "epoch": 99}, history, seconds=83.4)
    assert len(str(run.history)) > 5_000
    assert_short(run, f"<Run {tmp_path / 'run'}: best epoch 99", "acc1 1.49", "100 epochs in 83 s")
