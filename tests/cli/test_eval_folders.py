"""``torchgraft eval`` on data holding classes the model never saw: refused with one line
that names them, the classes the model knows, and what to do about it (leave them out, or
rename the ones that are model classes by another name) — for a folder and for a CSV. And the
files it leaves out of a folder (not images, images beside the class folders) are named, as
``train`` names them, never dropped silently."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.inference import evaluate_folder
from torchgraft.errors import DataError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A TinyCNN run on the digits 0, 1 and 2."""
    root = tmp_path_factory.mktemp("eval-unknown")
    images = write_digit_folder(root / "digits")
    config = tiny_config(images, root / "runs", train={"epochs": 1})
    return tg.fit(config, console=RunConsole(quiet=True)).dir


@pytest.mark.slow  # a subprocess that imports torch and timm
def test_a_class_folder_the_model_never_saw_is_named_with_what_to_do(
    run_dir, tmp_path, console_script, subprocess_env
):
    data = write_digit_folder(tmp_path / "other", classes=(0, 1, 7, 8), per_class=2)
    done = run_cli(
        console_script, "eval", run_dir, "--data", data, "--trust-run", env=subprocess_env
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == (
        f"torchgraft eval: error: {data}: 2 class(es) the model was not trained on: '7', '8'; "
        "the model knows '0', '1', '2'. To evaluate on the model's classes only, move those "
        f"class folders out of {data}; a folder that holds one of the model's classes under "
        "another name: rename it to that class's name"
    )
    assert not (run_dir / "eval_confusion.png").exists()


def test_a_csv_label_the_model_never_saw_says_to_drop_or_relabel_its_rows(run_dir, tmp_path):
    images = write_digit_folder(tmp_path / "digits", classes=(0,), per_class=2)
    listed = tmp_path / "labels.csv"
    rows = [
        f"{path},{label}" for path, label in zip(sorted(images.rglob("*.png")), "0z", strict=True)
    ]
    listed.write_text("path,label\n" + "\n".join(rows) + "\n")
    model = tg.load(run_dir, trust_run=True)
    with pytest.raises(DataError) as refused:
        evaluate_folder(model, listed)
    message = str(refused.value)
    assert "1 class(es) the model was not trained on: 'z'" in message
    assert f"remove their rows from {listed}" in message
    assert "a label that names one of the model's classes another way: change it" in message


def test_data_that_is_no_labelled_set_says_what_to_give(run_dir, tmp_path):
    model = tg.load(run_dir, trust_run=True)
    picture = next((write_digit_folder(tmp_path / "d", classes=(0,), per_class=1)).rglob("*.png"))
    for where, what in ((tmp_path / "gone", "no such file or folder"), (picture, "not a folder")):
        with pytest.raises(DataError) as refused:
            evaluate_folder(model, where)
        assert str(refused.value).startswith(f"{where}: {what}")
        assert "give a folder of class subfolders" in str(refused.value)


@pytest.fixture
def folder_with_strays(tmp_path):
    data = write_digit_folder(tmp_path / "eval", per_class=2)
    (data / "0" / "README.txt").write_text("digits written by hand\n")
    (data / "1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    shutil.copy(next((data / "2").glob("*.png")), data / "loose.png")
    return data


@pytest.mark.slow  # subprocesses that import torch and timm
def test_eval_names_the_files_it_leaves_out(
    run_dir, folder_with_strays, console_script, subprocess_env
):
    args = ("eval", run_dir, "--data", folder_with_strays, "--trust-run")
    done = run_cli(console_script, *args, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert "skipped 2 files that are not images: 0/README.txt, 1/Thumbs.db" in done.stderr
    assert "1 image outside the class folders: loose.png" in done.stderr
    assert re.search(r"^images +│ 6 ", done.stdout, re.M)  # the strays are not counted

    quiet = run_cli(console_script, *args, "--json", env=subprocess_env)
    assert quiet.returncode == 0, quiet.stderr
    document = json.loads(quiet.stdout)
    assert document["not_images"] == ["0/README.txt", "1/Thumbs.db"]
    assert document["outside_classes"] == ["loose.png"]
    assert document["count"] == 6
