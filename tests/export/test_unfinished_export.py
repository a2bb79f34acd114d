"""``torchgraft export`` of a run that did not finish: it succeeds (the best model so far),
says the run is unfinished and how to finish it, and the sidecar records it.

The unfinished run is a real one: TinyCNN planned for 3 epochs, interrupted (Ctrl-C, as
``KeyboardInterrupt`` from the console) right after its second epoch was saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.export.progress import run_progress
from torchgraft.engine.export.write import export_run
from torchgraft.sidecars import sidecar_path


class StopAfter(RunConsole):
    """A quiet console that presses Ctrl-C once ``epochs`` epochs have ended."""

    def __init__(self, epochs: int):
        super().__init__(quiet=True)
        self.left = epochs

    def end_epoch(self, summary: str) -> None:
        super().end_epoch(summary)
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A run planned for 3 epochs, interrupted after epoch 2 was saved."""
    root = tmp_path_factory.mktemp("unfinished")
    data = write_digit_folder(root / "digits")
    config = tiny_config(data, root / "runs", train={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        tg.fit(config, console=StopAfter(2))
    run = root / "runs" / "run"
    assert (run / "model.safetensors").is_file()
    return run


@pytest.mark.slow  # a subprocess that imports torch, then converts and checks the model
def test_export_of_an_unfinished_run_says_so_and_records_it(
    killed, tmp_path, console_script, subprocess_env
):
    out = tmp_path / "exported" / "model.ts.pt"
    done = run_cli(
        console_script, "export", killed, "--format", "torchscript", "-o", out, "--trust-run",
        "--json", env=subprocess_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # exported all the same
    document = json.loads(done.stdout)  # stdout: the JSON document only
    assert document["progress"]["finished"] is False
    assert (document["progress"]["epochs_done"], document["progress"]["epochs_planned"]) == (2, 3)
    warning = [line for line in done.stderr.splitlines() if "unfinished" in line]
    assert len(warning) == 1, done.stderr
    assert warning[0].startswith(f"torchgraft export: warning: {killed} is unfinished: ")
    assert "epoch 2 of 3 is the last one saved" in warning[0]
    # the command that finishes it, with the opt-in its handmade builder needs
    assert f"finish the run with: torchgraft train --resume {killed} --trust-run" in warning[0]
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["finished"] is False
    assert (sidecar["epochs_done"], sidecar["epochs_planned"]) == (2, 3)
    assert sidecar["stopped_early"] is False


def test_the_python_api_records_it_and_words_the_way_to_finish_in_python(killed, tmp_path):
    result = export_run(killed, "torchscript", tmp_path / "m.ts.pt", trust_run=True)
    assert result.progress.finished is False
    line = result.progress.unfinished(killed)
    assert f'tg.fit(resume="{killed}", trust_run=True)' in line
    assert json.loads(sidecar_path(result.path).read_text())["finished"] is False


def test_a_finished_run_is_exported_without_a_word_about_it(killed, tmp_path):
    finished = shutil.copytree(killed, tmp_path / "run")
    config = yaml.safe_load((finished / "config.yaml").read_text())
    config["train"]["epochs"] = 2  # the two epochs saved were all it planned
    (finished / "config.yaml").write_text(yaml.safe_dump(config))
    result = export_run(finished, "torchscript", tmp_path / "m.ts.pt", trust_run=True)
    assert result.progress.finished is True
    assert result.progress.unfinished(finished) is None
    sidecar = json.loads(sidecar_path(result.path).read_text())
    assert (sidecar["finished"], sidecar["epochs_done"], sidecar["epochs_planned"]) == (True, 2, 2)


def test_a_run_ended_by_early_stopping_is_finished(killed, tmp_path):
    run = shutil.copytree(killed, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["early_stopping"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    # best at epoch 1 (0-based 0), nothing better at epoch 2: patience 1 is used up
    assert run_progress(run, {"epoch": 0}).finished is True
    assert run_progress(run, {"epoch": 0}).stopped_early is True
    # best at the last saved epoch: early stopping had not struck, the run is unfinished
    assert run_progress(run, {"epoch": 1}).finished is False


def test_a_model_file_outside_a_run_is_neither_finished_nor_unfinished(killed, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    assert run_progress(alone, {"epoch": 0}).finished is None
    assert run_progress(alone, {"epoch": 0}).unfinished(alone) is None
