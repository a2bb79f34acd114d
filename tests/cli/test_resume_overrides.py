"""``train --resume RUN`` with overrides: those that change what the run is (resolution, data,
model, optimizer…) are refused together, by the installed command, before anything is built
or written; the safe ones are recorded in the run's ``resumes.json``; a model changed behind
the overrides' back (a hand-edited config.yaml) is named by its config key."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import SAFE_ON_RESUME
from torchgraft.errors import ConfigError

QUIET = RunConsole(quiet=True)


@pytest.fixture
def finished_run(digit_folder, tmp_path) -> Path:
    """A finished 1-epoch run of the tiny CNN at 16 px on 3 classes of digits."""
    return tg.fit(
        tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}), console=QUIET
    ).dir


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def resume(console_script, env, run: Path, *overrides):
    return run_cli(console_script, "train", "--resume", run, "--trust-run", *overrides, env=env)


def test_a_changed_resolution_is_refused_naming_the_key_and_nothing_in_the_run_changes(
    finished_run, console_script, subprocess_env
):
    before = snapshot(finished_run)
    result = resume(
        console_script,
        subprocess_env,
        finished_run,
        "--train.epochs",
        "2",
        "--data.image_size",
        "24",
    )
    assert result.returncode == 2, result.stderr
    error = result.stderr
    assert "Traceback" not in error
    assert "cannot resume with an override that changes what the run is" in error
    assert "data.image_size was 16, now 24" in error
    assert "train.epochs" not in error.split("A resume continues")[0]  # a safe change is fine
    config = finished_run / "config.yaml"
    assert f"torchgraft train --config {config} --data.image_size 24 --output.name NEW" in error
    assert "epoch 2:" not in result.stdout
    assert snapshot(finished_run) == before


def test_another_data_folder_is_refused_naming_data_source_not_the_head(
    finished_run, console_script, subprocess_env, tmp_path
):
    other = write_digit_folder(tmp_path / "other", classes=(0, 1, 2, 3))
    before = snapshot(finished_run)
    result = resume(
        console_script, subprocess_env, finished_run, "--train.epochs", "2", "--data.source", other
    )
    assert result.returncode == 2, result.stderr
    assert "data.source was " in result.stderr
    assert f"now '{other}'" in result.stderr
    assert "num_classes" not in result.stderr  # refused before the model is rebuilt
    assert snapshot(finished_run) == before


def test_every_changing_override_is_named_in_one_error(finished_run):
    overrides = {"optim.lr": 0.1, "freeze.policy": "head", "train.seed": 3, "train.epochs": 3}
    with pytest.raises(ConfigError) as refused:
        tg.fit(None, overrides, resume=finished_run, trust_run=True, console=QUIET)
    message = str(refused.value)
    for line in ("optim.lr was 0.05, now 0.1", "freeze.policy was 'none', now 'head'"):
        assert f"\n  {line}" in message
    assert "\n  train.seed was 0, now 3" in message
    assert "train.epochs was" not in message
    fork = {"freeze.policy": "head", "optim.lr": 0.1, "train.seed": 3, "output.name": "NEW"}
    assert (
        f"start a new run from this one's configuration: tg.fit({str(finished_run / 'config.yaml')!r}, {fork!r})"
        in message
    )


def test_the_same_data_folder_spelled_another_way_is_the_same_run(finished_run, digit_folder):
    spelled = f"{digit_folder}/../{digit_folder.name}/"
    run = tg.fit(
        None,
        {"train.epochs": 2, "data.source": spelled},
        resume=finished_run,
        trust_run=True,
        console=QUIET,
    )
    assert [row["epoch"] for row in run.history if row["split"] == "val"] == [0, 1]


def test_safe_overrides_are_recorded_in_the_history_and_config_takes_them(
    finished_run, console_script, subprocess_env
):
    result = resume(
        console_script,
        subprocess_env,
        finished_run,
        "--train.epochs", "2",
        "--data.eval_batch_size", "4",
        "--output.plots", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "epoch 2:" in result.stdout
    [entry] = json.loads((finished_run / "resumes.json").read_text())
    assert entry["after_epoch"] == 1
    assert entry["changes"] == [
        {"key": "data.eval_batch_size", "was": None, "now": 4},
        {"key": "train.epochs", "was": 1, "now": 2},
        {"key": "output.plots", "was": False, "now": True},
    ]
    assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2  # the plan the next resume continues
    assert config["data"]["eval_batch_size"] == 4
    assert (finished_run / "curves.png").is_file()  # output.plots took effect


def test_the_allow_list_holds_no_key_that_changes_what_trains():
    changing = {"data.image_size", "data.source", "data.batch_size", "train.seed"}
    changing |= {"train.precision", "train.max_steps", "train.grad_accum", "head.dropout"}
    assert not changing & set(SAFE_ON_RESUME)
    known = tg.load_config().to_dict()
    for key in SAFE_ON_RESUME:  # each a real key, and documented with its reason
        section, name = key.split(".")
        assert name in known[section], key
        assert f"`{key}`" in (Path(__file__).parents[2] / "docs" / "training.md").read_text()


def test_a_model_changed_in_config_yaml_is_named_by_its_key(finished_run):
    path = finished_run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["head"]["dropout"] = 0.5  # by hand: no override to refuse
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as refused:
        tg.fit(None, {"train.epochs": 2}, resume=finished_run, trust_run=True, console=QUIET)
    assert "cannot resume exactly: head.dropout was None, now 0.5" in str(refused.value)
    assert "model model" not in str(refused.value)


def test_print_config_with_resume_refuses_what_the_resume_would(
    finished_run, console_script, subprocess_env, tmp_path
):
    before = snapshot(finished_run)
    shown = "--print-config", "--train.epochs", "3"
    fine = resume(console_script, subprocess_env, finished_run, *shown)
    assert fine.returncode == 0, fine.stderr
    assert "epochs: 3" in fine.stdout
    refused = resume(console_script, subprocess_env, finished_run, *shown, "--optim.lr", "0.5")
    assert refused.returncode == 2
    assert "cannot resume with an override that changes what the run is" in refused.stderr
    assert "optim.lr was " in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not refused.stdout
    nothing = resume(console_script, subprocess_env, tmp_path, "--print-config")
    assert nothing.returncode == 2
    assert "not a run directory (no config.yaml)" in nothing.stderr
    assert snapshot(finished_run) == before
