"""A run directory is data from anyone: its model.json, resume state and pointer, and the
configs a user passes, are read through the one reader with its bounds.

- special files (a FIFO as model.safetensors or state/last.json, model.json linked to
  /dev/zero, ``--config /dev/zero``) are typed errors at once, never a hang or gigabytes;
- model.json of the wrong types or absurd values (classes: 5, build: [], crop_pct 1e-9, a
  40,000² input, a head of 10⁹, a std of 0, nesting 100,000 deep) is refused field by field
  before a model is built or an image resized — never an internal error;
- a resume state holding the first red team's pickles (a million-deep tuple, punycode calls,
  a 4.6 GB bytearray) is refused by the reader's scan for ``report`` and ``train --resume``;
- a YAML alias bomb or deep nesting in a config, a ``--plan`` or ``--rules`` is a typed error.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from reader_forge import ROUND_ONE, sandboxed_call, torch_zip

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.checkpoint.write import sha256_file
from torchgraft.cli.main import main
from torchgraft.engine.console import RunConsole
from torchgraft.errors import CheckpointError

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-documents")
    images = write_digit_folder(root / "digits")
    run = tg.fit(
        tiny_config(images, root / "runs", train={"epochs": 1}), console=RunConsole(quiet=True)
    )
    return run.dir, images


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def finishes(function, seconds: float = 60.0):
    """``function()``'s result, failing the test if it takes longer (a hang on a FIFO)."""
    outcome: dict = {}

    def call():
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s (blocked on a special file?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def one_error(capsys, status: int, expected: str) -> str:
    said = capsys.readouterr().err
    assert status == 2, said
    assert expected in said, said
    assert "internal error" not in said
    assert "Traceback" not in said
    return said


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("model.safetensors", ["predict", "{run}", "{images}/1", "--trust-run"]),
        ("model.safetensors", ["eval", "{run}", "--data", "{images}", "--trust-run"]),
        ("state/last.json", ["train", "--resume", "{run}", "--trust-run"]),
    ],
)
def test_a_fifo_in_place_of_a_run_file_is_refused_at_once(run, trained, capsys, name, argv):
    (run / name).unlink()
    os.mkfifo(run / name)
    argv = [a.format(run=run, images=trained[1]) for a in argv]
    one_error(capsys, finishes(lambda: main(argv)), "not a regular file")


def test_a_report_with_a_fifo_for_a_state_pointer_says_so(run):
    (run / "state" / "last.json").unlink()
    os.mkfifo(run / "state" / "last.json")
    assert finishes(lambda: main(["report", str(run), "--no-plots", "--trust-run"])) == 0
    assert "FIFO" in (run / "report.html").read_text()


def test_model_json_linked_to_dev_zero_is_refused(run, trained, capsys):
    (run / "model.json").unlink()
    (run / "model.json").symlink_to("/dev/zero")
    status = finishes(lambda: main(["predict", str(run), str(trained[1] / "1"), "--trust-run"]))
    one_error(capsys, status, "character device")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_config_that_never_ends_is_refused(tmp_path, capsys, special):
    if special == "fifo":
        special = tmp_path / "run.yaml"
        os.mkfifo(special)
    for extra in (["--print-config"], []):
        status = finishes(lambda: main(["train", "--config", str(special), *extra]))  # noqa: B023
        one_error(capsys, status, "not a regular file")


#: model.json edits and what the refusal names.
ABSURD = {
    "classes-a-number": ({"classes": 5}, "classes must be a list"),
    "build-a-list": ({"build": []}, "'build' must be a mapping"),
    "tiny-crop": ({"preprocessing.crop_pct": 1e-9, "spec.preprocessing.crop_pct": 1e-9}, "crop"),
    "huge-input": ({"preprocessing.input_size": [3, 40000, 40000]}, "input_size"),
    "huge-hidden": ({"build.head.hidden": 10**9}, "build.head.hidden"),
    "zero-std": ({"preprocessing.std": [0, 0, 0], "spec.preprocessing.std": [0, 0, 0]}, "std"),
    "text-classes-count": ({"spec.num_classes": "3"}, "spec.num_classes"),
    "metrics-a-string": ({"metrics": "x"}, "metrics"),
    "head-shape-differs": ({"build.head.hidden": 64}, "does not have the tensors"),
}


def edited(document: dict, changes: dict) -> dict:
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = document
        for part in parents:
            node = node[part]
        node[last] = value
    return document


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_a_model_json_of_wrong_types_or_absurd_values_is_refused_field_by_field(
    run, trained, capsys, case
):
    changes, expected = ABSURD[case]
    document = edited(json.loads((run / "model.json").read_text()), changes)
    (run / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=expected):
        tg.load(run, trust_run=True)
    status = main(["predict", str(run), str(trained[1] / "1"), "--json", "--trust-run"])
    one_error(capsys, status, expected)


def test_a_deeply_nested_model_json_is_refused(run, trained, capsys):
    document = json.loads((run / "model.json").read_text())
    text = json.dumps(document).replace(
        '"metrics": ', '"metrics": ' + "[" * 100_000 + "]" * 100_000 + ', "x": ', 1
    )
    (run / "model.json").write_text(text)
    status = main(["predict", str(run), str(trained[1] / "1"), "--trust-run"])
    one_error(capsys, status, "nested more than")


def _state_replaced_by(run: Path, pickle: bytes) -> None:
    pointer = json.loads((run / "state" / "last.json").read_text())
    path = run / "state" / pointer["file"]
    torch_zip(path, pickle)
    pointer["sha256"] = sha256_file(path)  # as an attacker would
    (run / "state" / "last.json").write_text(json.dumps(pointer))


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ROUND_ONE))
def test_a_resume_state_holding_a_round_one_pickle_is_refused_by_the_scan(run, attack):
    _state_replaced_by(run, ROUND_ONE[attack]())

    def resume_then_report():
        said = []
        for argv in (
            ["train", "--resume", str(run), "--trust-run"],
            ["report", str(run), "--no-plots", "--trust-run"],
        ):
            status = main(argv)
            said.append(status)
        said.append((run / "report.html").read_text())
        return said

    result = sandboxed_call(resume_then_report, timeout=120)
    assert "value" in result, result  # not a crash, a kill or a timeout
    resumed, reported, page = result["value"]
    assert resumed == 2
    assert reported == 0
    assert "refused" in page
    assert result["peak_mb"] < 300


def test_a_yaml_alias_bomb_in_a_config_is_refused_quickly(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text("model:\n  kwargs:\n    " + ALIAS_BOMB.replace("\n", "\n    "))
    assert len(config.read_bytes()) < 2000
    for extra in (["--print-config"], []):
        status = finishes(lambda: main(["train", "--config", str(config), *extra]), 20)  # noqa: B023
        one_error(capsys, status, "alias bomb")


@pytest.mark.parametrize("flag", ["--config", "--plan", "--rules", "override"])
def test_deep_nesting_in_every_document_a_user_passes_is_a_typed_error(tmp_path, capsys, flag):
    deep = "[" * 50_000 + "]" * 50_000
    path = tmp_path / "deep.yaml"
    path.write_text(deep)
    if flag == "--config":
        argv = ["train", "--config", str(path), "--print-config"]
    elif flag == "override":
        argv = ["train", "--print-config", "--data.mean", deep]
    else:
        weights = tmp_path / "w.safetensors"
        from safetensors.torch import save_file

        save_file({"fc.weight": torch.zeros(2, 2)}, weights)
        argv = ["graft", str(weights), "--into", "torchvision:resnet18", flag, str(path)]
    one_error(capsys, finishes(lambda: main(argv)), "nested more than")
