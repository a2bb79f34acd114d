"""``export RUN -o …`` never replaces a file of the run it exports.

The rule (torchgraft.engine.export.write._refuse_overwriting_the_run, run_dir.run_file): inside a run
directory an export writes only a new top-level name that no run writes, or replaces an
earlier export; never a name in RUN_FILES (written yet or not), a hidden name, anything in a
sub-folder (state/), or an existing file that is not an export. RUN_FILES itself is checked
against the files of a real run that writes all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.export.write import export_run
from torchgraft.engine.run_dir import RUN_FILES
from torchgraft.errors import OutputError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run that writes every file a run can: grafted weights, plots, a test split,
    a bad image skipped (bad_images.txt), the report, and eval's confusion picture."""
    root = tmp_path_factory.mktemp("run-files")
    for split in ("train", "val", "test"):
        write_digit_folder(root / "digits" / split, per_class=6)
    (root / "digits" / "train" / "1" / "broken.png").write_text("not a picture")
    import torch

    from handmade_models import TinyCNN

    torch.save(TinyCNN().state_dict(), root / "pretrained.pt")  # graft.json
    config = tiny_config(
        root / "digits",
        root / "runs",
        output={"plots": True},
        data={"on_bad_image": "skip"},
        weights={"source": str(root / "pretrained.pt")},
    )
    config["train"]["epochs"] = 1
    folder = Path(tg.fit(config, console=RunConsole(quiet=True)).dir)
    from torchgraft.cli.main import main

    data = str(root / "digits" / "val")
    assert main(["eval", str(folder), "--data", data, "--trust-run"]) == 0
    return folder


def export(run: Path, fmt: str, output: Path | None = None):
    """export_run of the test's own run (its TinyCNN builder is trusted: we wrote it)."""
    return export_run(run, fmt, output, trust_run=True)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of the run (at any depth) and the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_files_lists_what_a_real_run_writes(run):
    names = {p.name for p in run.iterdir()}
    assert names <= RUN_FILES, names - RUN_FILES
    # Written only under torchrun, and only by a resume.
    assert RUN_FILES - names == {"torchrun.json", "resumes.json"}


def test_export_refuses_every_file_of_the_run_and_leaves_it_intact(run, tmp_path):
    before = fingerprint(run)
    alias = tmp_path / "alias"
    alias.symlink_to(run)  # the same run under another name
    refused = [run / name for name in before]  # every file, state/ included
    refused += [
        run / "torchrun.json",  # a name the run has not written (here): still the run's
        run / "state" / "new.pt",  # anything in a sub-folder
        run / "later" / "model.pt",
        run / ".config.yaml.x.tmp",  # a hidden name (a write in progress)
        run / "model",  # its sidecar would be model.json
        run / "test_metrics",  # its sidecar would be test_metrics.json
        run / "CONFIG.yaml",  # a case-insensitive filesystem would replace config.yaml
        alias / "config.yaml",
        alias / "state" / ".." / "metrics.csv",
    ]
    for output in refused:
        with pytest.raises(OutputError, match="an export never replaces") as error:
            export(run, "torchscript", output)
        assert str(output) in str(error.value) or f"{output}.json" in str(error.value)
    assert fingerprint(run) == before
    assert not (run / "later").exists()


def test_export_writes_new_names_and_replaces_only_earlier_exports(run):
    notes = run / "notes.txt"
    notes.write_text("mine")
    try:
        first = export(run, "torchscript")  # the default, model.ts.pt in the run
        again = export(run, "torchscript")  # an earlier export: replaced
        assert again.path == first.path == run / "model.ts.pt"
        other = export(run, "torchscript", run / "shipped.ts")
        assert json.loads((run / "shipped.ts.json").read_text())["file"] == "shipped.ts"
        with pytest.raises(OutputError, match="not an earlier export"):
            export(run, "torchscript", notes)
        assert notes.read_text() == "mine"
    finally:
        for path in (notes, run / "model.ts.pt", run / "shipped.ts"):
            for file in (path, Path(f"{path}.json")):
                file.unlink(missing_ok=True)
    assert other.path == run / "shipped.ts"


def test_export_refuses_a_fifo_before_converting(run, tmp_path):
    fifo = tmp_path / "model.pt2"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO"):
        export(run, "pt2", fifo)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_export_cli_refuses_the_runs_config_and_state_with_exit_2(
    run, console_script, subprocess_env
):
    before = fingerprint(run)
    (state,) = (run / "state").glob("epoch-*.pt")
    for output, why in ((run / "config.yaml", "the run's own config.yaml"),
                        (state, "inside the run's state/ folder")):  # fmt: skip
        result = run_cli(
            console_script, "export", run, "--format", "torchscript", "-o", output,
            "--trust-run", env=subprocess_env,
        )  # fmt: skip
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"torchgraft export: error: {output} is {why}")
        assert "Traceback" not in result.stderr
    assert fingerprint(run) == before


def test_eval_output_never_replaces_a_file_of_the_run(run, capsys):
    """``eval RUN --output`` may write the run's own eval_confusion.png, nothing else of it."""
    from torchgraft.cli.main import main

    before = fingerprint(run)
    for target in (run / "config.yaml", run / "state" / "x.png", run / "model.json"):
        status = main(["eval", str(run), "--data", str(run), "--output", str(target)])
        said = capsys.readouterr().err
        assert status == 2, said
        assert "--output" in said
        assert "elsewhere" in said
    assert fingerprint(run) == before


def test_lr_find_folders_of_the_same_second_are_each_made_once(tmp_path):
    from torchgraft.engine.run_dir import make_stamped_folder

    made = {make_stamped_folder(tmp_path, "timm:resnet18", "lr-find") for _ in range(3)}
    assert len(made) == 3
    assert all(path.is_dir() and not any(path.iterdir()) for path in made)
