"""The installed console script, run as users run it: train (the embedded default reduced to
a few steps, image folders, CSV, bad configs), resume after a real SIGKILL and after Ctrl-C
(SIGINT), eval, predict."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support import run_cli, tiny_config, write_digit_folder
from torchgraft.checkpoint.write import sha256_file
from torchgraft.engine.resume import load_state, state_epoch


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_embedded_default_runs_end_to_end_reduced_to_a_few_steps(
    console_script, subprocess_env, tmp_path
):
    result = run_cli(
        console_script,
        "train",
        "--train.epochs", "2",
        "--freeze.schedule.freeze_epochs", "1",
        "--train.max_steps", "2",
        "--data.image_size", "32",
        env=subprocess_env,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the graft report: the original Lite0 weights into timm's tf_efficientnet_lite0, proven
    assert "graft (auto)" in out
    assert "efficientnet-lite0" in out
    assert "coverage 99.6%" in out
    assert "OK: same function" in out
    assert "epoch 1:" in out
    assert "(cached features)" in out
    assert "epoch 2:" in out
    assert "\r" not in out  # not a terminal: no progress-bar carriage returns
    run_dir = next((tmp_path / "runs").iterdir())
    assert str(run_dir.name) in out
    names = {p.name for p in run_dir.iterdir()}
    expected = {"config.yaml", "graft.json", "metrics.csv", "metrics.jsonl", "model.json"}
    assert expected | {"model.safetensors", "curves.png", "lr.png", "confusion.png"} <= names
    graft = json.loads((run_dir / "graft.json").read_text())
    assert graft["verification"]["ok"] is True
    assert graft["counts"]["skip-shape"] == 2  # the 1000-class head, never hidden


def test_an_image_folder_with_a_corrupt_file_stops_and_skip_goes_on(
    console_script, subprocess_env, tmp_path
):
    data = write_digit_folder(tmp_path / "images")
    (data / "2" / "notes.jpg").write_text("this is not a picture")
    config = write_config(tmp_path / "run.yaml", tiny_config(data, tmp_path / "runs"))
    stopped = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert stopped.returncode == 2
    assert "notes.jpg" in stopped.stderr
    assert "run again with --data.on_bad_image skip" in stopped.stderr  # an override
    assert "Traceback" not in stopped.stderr
    assert not (tmp_path / "runs" / "run" / "model.safetensors").exists()

    skipped = run_cli(
        console_script,
        "train", "--config", config, "--data.on-bad-image", "skip", "--output.name", "skipped",
        env=subprocess_env,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    listed = (tmp_path / "runs" / "skipped" / "bad_images.txt").read_text()
    assert "notes.jpg" in listed


def test_a_csv_dataset_trains_with_its_class_names(console_script, subprocess_env, tmp_path):
    images = write_digit_folder(tmp_path / "images", classes=(3, 8), per_class=10)
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path in sorted(images.rglob("*.png")):
            writer.writerow(
                [
                    path.relative_to(tmp_path).as_posix(),
                    "three" if path.parent.name == "3" else "eight",
                ]
            )
    config = write_config(tmp_path / "run.yaml", tiny_config(table, tmp_path / "runs"))
    result = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "runs" / "run" / "model.json").read_text())
    assert document["classes"] == ["eight", "three"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--train.epochs", "0"], "train.epochs"),
        (["--optim.lrr", "0.1"], "did you mean 'optim.lr'"),
        (["--data.source", "/no/such/folder"], "/no/such/folder"),
        (["--resume", "/no/such/run"], "not a run directory"),
        (["--config", "/no/such.yaml"], "no such config file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_line(console_script, subprocess_env, arguments, expected):
    result = run_cli(console_script, "train", *arguments, env=subprocess_env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr


def test_a_taken_run_name_names_the_resume_flag_here_and_the_argument_in_python(
    console_script, subprocess_env, tmp_path, digit_folder
):
    from torchgraft.engine.fit import fit
    from torchgraft.errors import ConfigError

    config = tiny_config(digit_folder, tmp_path / "runs")
    taken = tmp_path / "runs" / "run"
    taken.mkdir(parents=True)
    (taken / "metrics.csv").write_text("")
    with pytest.raises(ConfigError) as python:
        fit(config)
    assert f'continue that run with resume="{taken}"' in str(python.value)
    config_file = write_config(tmp_path / "run.yaml", config)
    result = run_cli(console_script, "train", "--config", config_file, env=subprocess_env)
    assert result.returncode == 2
    assert f"continue that run with --resume {taken}" in result.stderr
    assert "Traceback" not in result.stderr


def _kill_after(console_script, config: Path, env, run_dir: Path, epochs_done: int) -> None:
    """Start a run, SIGKILL it once ``epochs_done`` epochs are saved (mid-epoch, then)."""
    process = subprocess.Popen(
        [*console_script, "train", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    pointer = run_dir / "state" / "last.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= epochs_done - 1:
                break
            if process.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _final_weights(run_dir: Path) -> dict:
    return load_state(run_dir)["model"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_equal_and_the_data_order_state_matters(
    console_script, subprocess_env, tmp_path
):
    data = write_digit_folder(tmp_path / "images", per_class=40, size=32)
    settings = {
        "train": {"epochs": 4, "threads": 1},
        "data": {"augment": "light", "image_size": 32},
        "schedule": {"name": "onecycle"},
    }
    whole_config = write_config(
        tmp_path / "whole.yaml", tiny_config(data, tmp_path / "whole", **settings)
    )
    killed_config = write_config(
        tmp_path / "killed.yaml", tiny_config(data, tmp_path / "killed", **settings)
    )
    whole = run_cli(console_script, "train", "--config", whole_config, env=subprocess_env)
    assert whole.returncode == 0, whole.stderr
    expected = _final_weights(tmp_path / "whole" / "run")

    run_dir = tmp_path / "killed" / "run"
    _kill_after(console_script, killed_config, subprocess_env, run_dir, epochs_done=2)
    saved = load_state(run_dir)["epoch"]
    assert saved < 3  # killed before the end
    control = tmp_path / "control"
    shutil.copytree(run_dir, control)

    resumed = run_cli(
        console_script, "train", "--resume", run_dir, "--trust-run", env=subprocess_env
    )
    assert resumed.returncode == 0, resumed.stderr
    got = _final_weights(run_dir)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key

    # Negative control: the same resume with the data-order generator's saved state replaced
    # by another one ends elsewhere — so the comparison above does see the data order.
    _replace_data_order_state(control)
    again = run_cli(console_script, "train", "--resume", control, "--trust-run", env=subprocess_env)
    assert again.returncode == 0, again.stderr
    other = _final_weights(control)
    assert any(not torch.equal(other[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_ctrl_c_leaves_a_run_that_the_printed_command_resumes(subprocess_env, tmp_path):
    """SIGINT (Ctrl-C) to a real ``python -m torchgraft train`` once its first epoch is saved:
    exit status 130, and the line it prints is a command that, run as printed, ends the run
    with the weights of an uninterrupted one."""
    data = write_digit_folder(tmp_path / "images")
    epochs = 40  # ~0.1 s each: the signal lands well before the end
    whole = write_config(
        tmp_path / "whole.yaml", tiny_config(data, tmp_path / "whole", train={"epochs": epochs})
    )
    cut = write_config(
        tmp_path / "cut.yaml", tiny_config(data, tmp_path / "cut", train={"epochs": epochs})
    )
    python = [sys.executable, "-m", "torchgraft"]
    assert run_cli(python, "train", "--config", whole, env=subprocess_env).returncode == 0
    run_dir = tmp_path / "cut" / "run"
    process = subprocess.Popen(
        [*python, "train", "--config", str(cut)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env,
    )
    try:
        deadline = time.monotonic() + 300
        while state_epoch(run_dir) is None and process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("no epoch was saved in 300 s")
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)  # during epoch 2 or a little later
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, (out, err)
    assert err.strip().endswith("torchgraft train: interrupted")
    assert "Traceback" not in err
    saved = load_state(run_dir)["epoch"]
    assert 0 <= saved < epochs - 1  # interrupted, and its last complete epoch is on disk
    said = out.strip().splitlines()[-1]
    told = re.fullmatch(r"interrupted; continue with: (.+) \(epoch (\d+) is the last saved\)", said)
    assert told, said
    assert int(told[2]) == saved + 1
    command = shlex.split(told[1])
    # handmade_models:TinyCNN is code of one's own: rebuilding it needs --trust-run
    assert command == ["torchgraft", "train", "--resume", str(run_dir), "--trust-run"]
    resumed = run_cli(python, *command[1:], env=subprocess_env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {saved + 2}:" in resumed.stdout
    assert f"epoch {epochs}:" in resumed.stdout
    expected, got = _final_weights(tmp_path / "whole" / "run"), _final_weights(run_dir)
    assert load_state(run_dir)["epoch"] == epochs - 1
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def _replace_data_order_state(run_dir: Path) -> None:
    pointer_path = run_dir / "state" / "last.json"
    pointer = json.loads(pointer_path.read_text())
    path = run_dir / "state" / pointer["file"]
    state = torch.load(path, weights_only=True)
    state["rng"]["data"] = torch.Generator().manual_seed(12345).get_state()
    torch.save(state, path)
    pointer["sha256"] = sha256_file(path)
    pointer_path.write_text(json.dumps(pointer))


def test_eval_and_predict_round_trip(console_script, subprocess_env, tmp_path):
    data = write_digit_folder(tmp_path / "images")
    config = write_config(
        tmp_path / "run.yaml", tiny_config(data, tmp_path / "runs", train={"epochs": 3})
    )
    trained = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert trained.returncode == 0, trained.stderr
    run_dir = tmp_path / "runs" / "run"

    evaluated = run_cli(
        console_script, "eval", run_dir, "--data", data, "--json", "--trust-run", env=subprocess_env
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["count"] == 36
    assert sum(map(sum, metrics["confusion"])) == 36
    assert set(metrics["per_class"]) == {"0", "1", "2"}
    assert Path(metrics["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    predicted = run_cli(
        console_script, "predict", run_dir, data / "1", broken, "--topk", "2", "--json", "--trust-run",
        env=subprocess_env,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    document = json.loads(predicted.stdout)
    rows = {Path(p["path"]).name: p for p in document["predictions"]}
    assert len(rows) == 12 + 1
    assert "error" in rows["broken.png"]
    good = [p for p in document["predictions"] if "top" in p]
    assert all(len(p["top"]) == 2 for p in good)
    assert all(p["top"][0]["probability"] >= p["top"][1]["probability"] for p in good)
    assert all(0 <= p["top"][0]["probability"] <= 1 for p in good)
    assert {p["top"][0]["class"] for p in good} <= {"0", "1", "2"}
