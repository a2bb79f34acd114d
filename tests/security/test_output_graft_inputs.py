"""``torchgraft graft -o`` / ``--plan-out`` never replace what the same command reads.

The checkpoint being grafted (a file, or anything in a checkpoint folder), ``--rules`` and
``--plan`` are inputs; ``-o``, its sidecar ``OUT.safetensors.json`` and ``--plan-out`` are
outputs, and no output may land on an input or on another output, however the path is
spelled (``..``, a link to the folder). Refused in the command line's checks, before torch is
imported or a file read: exit 2, one line, the input untouched.
"""

from __future__ import annotations

import pytest

from support import run_cli

SOURCE = b"the colleague's checkpoint: refused before it is read"


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(SOURCE)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "model-00001.safetensors").write_bytes(SOURCE)
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    (tmp_path / "alias").symlink_to(tmp_path)  # the same folder under another name
    return tmp_path


CASES = {
    "-o onto SOURCE": (
        ["w.safetensors", "-o", "w.safetensors"],
        "-o/--output w.safetensors is SOURCE itself",
    ),
    "-o onto SOURCE via a linked folder": (
        ["w.safetensors", "-o", "alias/shards/../w.safetensors"],
        "-o/--output alias/shards/../w.safetensors is SOURCE itself",
    ),
    "--plan-out onto SOURCE": (
        ["w.safetensors", "--plan-out", "w.safetensors"],
        "--plan-out w.safetensors is SOURCE",
    ),
    "-o into a SOURCE folder": (
        ["shards", "-o", "shards/model-00002.safetensors"],
        "-o/--output shards/model-00002.safetensors is inside SOURCE shards",
    ),
    "--plan-out onto --rules": (
        ["w.safetensors", "--rules", "rules.yaml", "--plan-out", "rules.yaml"],
        "--plan-out rules.yaml is --rules itself",
    ),
    "-o sidecar onto --plan-out": (
        ["w.safetensors", "-o", "out.safetensors", "--plan-out", "out.safetensors.json"],
        "-o/--output (its sidecar) out.safetensors.json and --plan-out out.safetensors.json "
        "are the same file",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_onto_inputs_are_refused_before_anything_is_read(
    console_script, subprocess_env, workdir, case
):
    args, expected = CASES[case]
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    result = run_cli(
        console_script, "graft", *args, "--into", "m:Net", env=subprocess_env, cwd=workdir,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"torchgraft graft: error: {expected}")
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in workdir.iterdir()) == [
        "alias",
        "rules.yaml",
        "shards",
        "w.safetensors",
    ]


@pytest.mark.slow
def test_a_link_given_as_output_is_replaced_and_the_file_it_points_to_kept(
    console_script, subprocess_env, tmp_path
):
    """Outputs land at the path given: a link there is replaced by the new file, never
    written through (torchgraft.atomic), so a link cannot steer a write elsewhere."""
    import torch

    from handmade_models import TinyCNN

    torch.save(TinyCNN().state_dict(), tmp_path / "tiny.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("plan.yaml", "out.safetensors", "out.safetensors.json"):
        (elsewhere / name).write_text("someone else's file")
        (tmp_path / name).symlink_to(elsewhere / name)
    result = run_cli(
        console_script, "graft", "tiny.pt", "--into", "handmade_models:TinyCNN",
        "--plan-out", "plan.yaml", "-o", "out.safetensors",
        env=subprocess_env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("plan.yaml", "out.safetensors", "out.safetensors.json"):
        assert not (tmp_path / name).is_symlink()
        assert (elsewhere / name).read_text() == "someone else's file"
    assert "torchgraft graft plan" in (tmp_path / "plan.yaml").read_text()
