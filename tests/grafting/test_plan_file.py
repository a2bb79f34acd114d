"""The plan file (:mod:`torchgraft.grafting.plan_file`): written, read back, edited, applied,
and refused when it is not a plan — with real torchvision models (no weights) and real files
in tmp_path.

Expected values are the source tensors themselves or the target's own values before the
graft, never something the code under test computed.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torchvision
import yaml

from torchgraft.checkpoint.documents import DocumentLimits
from torchgraft.errors import GraftError
from torchgraft.grafting import graft, plan_graft
from torchgraft.grafting.graft_plan import Action
from torchgraft.grafting.plan_file import (
    HEADER,
    plan_from_file,
    read_plan_file,
    write_plan_file,
)


def squeezenet() -> torch.nn.Module:
    return torchvision.models.squeezenet1_1(weights=None)


@pytest.fixture
def source_state() -> dict[str, torch.Tensor]:
    """A squeezenet1_1 state_dict as a DDP run saves it (``module.`` prefix), seeded."""
    generator = torch.Generator().manual_seed(3)
    state = squeezenet().state_dict()
    return {
        "module." + k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in state.items()
    }


@pytest.fixture
def source_file(tmp_path, source_state):
    path = tmp_path / "colleague.pt"
    torch.save(source_state, path)
    return path


@pytest.fixture
def plan_path(tmp_path, source_file):
    """A plan for squeezenet1_1 from the prefixed checkpoint, written as --plan-out does."""
    return write_plan_file(plan_graft(squeezenet(), source_file), tmp_path / "plans" / "plan.yaml")


def edit(path, change) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


# --- round trip -------------------------------------------------------------------------------


def test_a_written_plan_reads_back_entry_for_entry(tmp_path, source_file):
    plan = plan_graft(squeezenet(), source_file)
    written = write_plan_file(plan, tmp_path / "new" / "folder" / "plan.yaml")
    assert written == (tmp_path / "new" / "folder" / "plan.yaml").resolve()  # folder created
    text = written.read_text()
    assert text.startswith(HEADER)
    assert text.startswith("# torchgraft graft plan")
    again = read_plan_file(written)
    assert again.entries == plan.entries
    assert again.mapping == plan.mapping
    assert len(again.entries) == len(squeezenet().state_dict())
    assert {e.action for e in again.entries} == {Action.RENAME}
    assert again.mapping["features.0.weight"] == "module.features.0.weight"
    assert (again.strategy, again.source, again.source_format) == (
        plan.strategy,
        str(source_file),
        plan.source_format,
    )
    assert again.unexpected == plan.unexpected == []
    assert again.notes == plan.notes


def test_the_json_that_graft_prints_reads_back_as_a_plan(tmp_path, source_file):
    """``torchgraft graft --dry-run --json > plan.json`` is a plan file too."""
    plan = plan_graft(squeezenet(), source_file)
    document = {**plan.to_dict(), "dry_run": True, "output": None}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    assert read_plan_file(path).entries == plan.entries


# --- an edited plan, applied ------------------------------------------------------------------


def test_an_edited_plan_is_applied_with_its_actions_recomputed(
    plan_path, source_file, source_state
):
    def change(document):
        for entry in document["entries"]:
            if entry["target"] == "classifier.1.weight":
                entry["source"] = None  # edit 1: no source
            if entry["target"] == "classifier.1.bias":
                entry["action"] = "missing"  # edit 2: the other way to load nothing
            if entry["target"] == "features.0.bias":
                # edit 3: a stale action, shape and confidence: recomputed, not trusted
                entry.update(action="reshape", target_shape=[1], confidence=0.1, detail="x")

    edit(plan_path, change)
    model = squeezenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_from_file(model, source_file, plan_path)
    by_target = {e.target: e for e in plan.entries}
    assert by_target["classifier.1.weight"].action is Action.MISSING
    assert by_target["classifier.1.bias"].action is Action.MISSING
    assert by_target["features.0.bias"].action is Action.RENAME
    assert by_target["features.0.bias"].target_shape == (64,)
    assert by_target["features.0.bias"].confidence == 1.0
    assert plan.strategy == "plan"

    report = graft(model, source_file, plan=plan, allow_partial=True)
    assert report.missing == ["classifier.1.weight", "classifier.1.bias"]
    after = model.state_dict()
    for key in ("classifier.1.weight", "classifier.1.bias"):
        assert torch.equal(after[key], before[key])  # kept its own value
    for key, value in after.items():
        if not key.startswith("classifier.1."):
            assert torch.equal(value, source_state["module." + key]), key


def test_a_plan_naming_a_key_the_source_lacks_is_refused_naming_the_file(plan_path, source_file):
    def change(document):
        document["entries"][0]["source"] = "module.ghost.weight"

    edit(plan_path, change)
    model = squeezenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GraftError) as refused:
        plan_from_file(model, source_file, plan_path)
    message = str(refused.value)
    assert message.startswith(f"{plan_path}: the plan does not fit")
    assert "module.ghost.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- a malformed plan file --------------------------------------------------------------------


def _set(index, key, value):
    def change(document):
        document["entries"][index][key] = value

    return change


def _drop(index, key):
    def change(document):
        del document["entries"][index][key]

    return change


def _top(key, value):
    def change(document):
        document[key] = value

    return change


def _duplicate(document):
    document["entries"].append(dict(document["entries"][2]))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_set(1, "source", 5), "entries[1].source: expected a key of the source (text), or null"),
        (_set(2, "action", "teleport"), "entries[2].action: expected one of copy, rename"),
        (_set(3, "confidence", float("nan")), "entries[3].confidence: expected a number from 0"),
        (_set(0, "target_shape", [64, -3]), "entries[0].target_shape: expected a list of sizes"),
        (_set(0, "adapt", "in_chans"), "entries[0].adapt: expected a mapping"),
        (_set(4, "sorce", "module.features.0.weight"), "entries[4]: unknown key 'sorce'"),
        (_drop(1, "target"), "entries[1]: no 'target'"),
        (_drop(1, "action"), "entries[1]: no 'action'"),
        (_top("notes", 5), ": notes: expected a list of texts, found 5"),
        (_top("entries", {"a": 1}), ": entries: expected a list of entries"),
        (_top("entires", []), ": unknown key 'entires'"),
        (_duplicate, "target of entries[2]; plan each target key once"),
    ],
    ids=[
        "source-not-text",
        "unknown-action",
        "nan-confidence",
        "negative-size",
        "adapt-not-mapping",
        "misspelt-key",
        "no-target",
        "no-action",
        "notes-not-list",
        "entries-not-list",
        "misspelt-top-key",
        "duplicate-target",
    ],
)
def test_a_malformed_plan_is_refused_naming_the_file_and_the_key(plan_path, change, words):
    edit(plan_path, change)
    with pytest.raises(GraftError) as refused:
        read_plan_file(plan_path)
    message = str(refused.value)
    assert message.startswith(f"{plan_path}: ")
    assert words in message


def test_a_refused_entry_is_named_by_its_target_too(plan_path):
    edit(plan_path, _set(1, "source", ["a", "b"]))
    with pytest.raises(GraftError) as refused:
        read_plan_file(plan_path)
    target = read_plan_target(plan_path, 1)
    assert f"(the entry of target '{target}')" in str(refused.value)


def read_plan_target(path, index) -> str:
    return yaml.safe_load(path.read_text())["entries"][index]["target"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "not a graft plan: expected a mapping with 'entries'"),
        ("- a\n- b\n", "not a graft plan"),
        ("entries: [\n", "not valid YAML"),
        ("entries:\n  - !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
    ids=["empty", "a-list", "broken-yaml", "python-tag"],
)
def test_what_is_not_a_plan_is_refused(tmp_path, text, words):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(GraftError) as refused:
        read_plan_file(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert words in str(refused.value)


# --- the bounded reader -----------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "plan.yaml"
    # the bomb under a key no plan has: refused while reading, before any field is checked
    path.write_text("entries: []\nbomb:\n  " + ALIAS_BOMB.replace("\n", "\n  "))
    assert path.stat().st_size < 2000  # 9**9 values once expanded
    start = time.perf_counter()
    with pytest.raises(GraftError) as refused:
        read_plan_file(path)
    assert time.perf_counter() - start < 10
    assert str(refused.value).startswith(f"{path}: refused: its aliases expand to more than")


def test_an_oversized_plan_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "plan.yaml"
    limit = DocumentLimits().max_bytes
    with path.open("w") as handle:
        handle.write("entries: []\n")
        handle.write("#" * (limit - 12) + "\n")  # one byte over, all of it a comment
    assert path.stat().st_size == limit + 1
    with pytest.raises(GraftError) as refused:
        read_plan_file(path)
    assert str(refused.value) == (f"{path}: longer than the {limit:,} bytes such a file may have")


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("entries: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(GraftError) as refused:
        read_plan_file(path, limits=DocumentLimits(max_depth=16))
    assert "nested more than 16 levels deep" in str(refused.value)
