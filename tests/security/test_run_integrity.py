"""Integrity of a run's files: a flipped byte in a saved model or resume state is found by
its sha256 wherever the file is read again — ``torchgraft eval``, ``predict``, ``--resume`` —
and refused with a typed error naming the file, never used. (``tg.load``:
tests/engine/test_fit.py::test_a_damaged_model_file_is_refused_by_load.)"""

from __future__ import annotations

import json
import re

import pytest

import torchgraft as tg
from support import tiny_config
from torchgraft.cli.main import main
from torchgraft.engine.console import RunConsole
from torchgraft.errors import CheckpointError

QUIET = RunConsole(quiet=True)


def flip_one_byte(path, from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run_dir(digit_folder, tmp_path):
    return tg.fit(
        tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}), console=QUIET
    ).dir


def test_a_flipped_byte_in_the_model_is_refused_by_eval_and_predict(run_dir, digit_folder, capsys):
    weights = run_dir / "model.safetensors"
    flip_one_byte(weights)  # inside the last tensor's data: the header still parses
    for command in (
        ["eval", run_dir, "--data", digit_folder, "--trust-run"],
        ["predict", run_dir, digit_folder, "--trust-run"],
    ):
        capsys.readouterr()
        assert main([str(a) for a in command]) == 2
        err = capsys.readouterr().err
        assert str(weights) in err
        assert re.search(r"not match the (sha256|hash)", err)
        assert "Traceback" not in err


def test_a_flipped_byte_in_the_model_is_refused_on_resume(run_dir):
    weights = run_dir / "model.safetensors"
    flip_one_byte(weights)
    before = weights.read_bytes()
    with pytest.raises(CheckpointError, match=r"not match the (sha256|hash)") as refused:
        tg.fit(None, ["--train.epochs", "2"], resume=run_dir, console=QUIET, trust_run=True)
    assert str(weights) in str(refused.value)
    assert weights.read_bytes() == before  # not overwritten, not "repaired" silently


def test_a_flipped_byte_in_the_resume_state_is_refused(run_dir, capsys):
    pointer = json.loads((run_dir / "state" / "last.json").read_text())
    state = run_dir / "state" / pointer["file"]
    flip_one_byte(state, from_end=200)
    with pytest.raises(CheckpointError, match="sha256") as refused:
        tg.fit(None, ["--train.epochs", "2"], resume=run_dir, console=QUIET, trust_run=True)
    assert str(state) in str(refused.value)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--trust-run", "--train.epochs", "2"]) == 2
    assert str(state) in capsys.readouterr().err
