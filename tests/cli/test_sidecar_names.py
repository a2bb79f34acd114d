"""One naming rule for every sidecar torchgraft writes: the sidecar of FILE is FILE + ".json"
(``out.safetensors.json`` for ``graft -o out.safetensors``, ``model.onnx.json`` for an
export). An older graft's ``out.json`` is recognised and pointed out, never read as current
or deleted; a user's own ``out.json`` is left alone and unmentioned."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from support import run_cli
from torchgraft.checkpoint import write
from torchgraft.engine.export import sidecar
from torchgraft.errors import CheckpointError
from torchgraft.sidecars import legacy_sidecar_path, sidecar_path
from torchgraft.zoo.grafts import graft_into, resolve_source

INTO = "handmade_models:TinyCNN"


@pytest.fixture
def workdir(tmp_path):
    from handmade_models import TinyCNN

    torch.save(TinyCNN().state_dict(), tmp_path / "tiny.pt")
    return tmp_path


def test_the_rule_keeps_the_whole_name_and_is_the_one_every_writer_uses():
    assert sidecar_path("out/grafted.safetensors").as_posix() == "out/grafted.safetensors.json"
    assert sidecar_path("model.onnx").name == "model.onnx.json"
    assert sidecar_path("m.v1.pt2").name == "m.v1.pt2.json"  # no suffix dropped
    assert legacy_sidecar_path("out.safetensors").name == "out.json"
    # the graft writer and the export use this one function, not copies of it
    assert write.sidecar_path is sidecar_path
    assert sidecar.sidecar_path is sidecar_path


@pytest.mark.slow  # a subprocess that imports torch and timm, twice
def test_graft_o_writes_its_sidecar_as_the_file_name_plus_json(
    workdir, console_script, subprocess_env
):
    planned = run_cli(
        console_script, "graft", "tiny.pt", "--into", INTO, "-o", "out.safetensors",
        "--dry-run", env=subprocess_env, cwd=workdir,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert "would also write out.safetensors and out.safetensors.json" in planned.stdout
    done = run_cli(
        console_script, "graft", "tiny.pt", "--into", INTO, "-o", "out.safetensors",
        env=subprocess_env, cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [
        "out.safetensors",
        "out.safetensors.json",
        "tiny.pt",
    ]
    record = json.loads((workdir / "out.safetensors.json").read_text())
    assert record["file"] == "out.safetensors"
    assert (
        record["sha256"] == hashlib.sha256((workdir / "out.safetensors").read_bytes()).hexdigest()
    )
    assert f"wrote {workdir / 'out.safetensors'} and {workdir / 'out.safetensors.json'}" in (
        done.stdout
    )


def test_an_older_grafts_sidecar_is_pointed_out_and_left_alone(workdir):
    out = workdir / "out.safetensors"
    graft_into(str(workdir / "tiny.pt"), INTO, output=out)
    old = workdir / "out.json"  # what an earlier torchgraft wrote beside the same file
    old.write_text((workdir / "out.safetensors.json").read_text())
    outcome = graft_into(str(workdir / "tiny.pt"), INTO, output=out)
    said = [n for n in outcome.plan.notes if str(old) in n]
    assert len(said) == 1
    assert "an earlier torchgraft wrote for out.safetensors under the old name" in said[0]
    assert "delete it (the sidecar is out.safetensors.json now)" in said[0]
    assert old.exists()  # never deleted for the user


def test_a_users_own_out_json_is_not_taken_for_a_sidecar(workdir):
    mine = workdir / "out.json"
    mine.write_text('{"experiment": "mine", "file": "notes.txt"}')
    outcome = graft_into(str(workdir / "tiny.pt"), INTO, output=workdir / "out.safetensors")
    assert not [n for n in outcome.plan.notes if "out.json" in n]
    assert mine.read_text() == '{"experiment": "mine", "file": "notes.txt"}'


def test_a_wrong_output_suffix_is_refused_before_anything_runs(
    workdir, console_script, subprocess_env
):
    done = run_cli(
        console_script, "graft", "tiny.pt", "--into", INTO, "-o", "out.bin",
        env=subprocess_env, cwd=workdir, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "torchgraft graft: error: -o/--output out.bin: grafted weights are written as "
        "safetensors; give a file name ending in .safetensors (e.g. out.safetensors)"
    ]
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.pt"]


def test_a_missing_source_says_what_to_give(tmp_path):
    with pytest.raises(CheckpointError) as refused:
        resolve_source(str(tmp_path / "colleague.pt"))
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'colleague.pt'}: no such file or folder; give a ")
    assert "checkpoint file" in message
    assert "model spec with weights" in message
