"""Epoch budgets that mean what they say: a run too short for its unfreezing schedule says
so in its header; ``train --resume RUN --train.epochs N`` past the plan trains the added
epochs as a stage of their own under a fresh LR cycle (never at LR 0), once or twice, after
the interrupted stage's own cycle; fewer epochs than done are refused, fewer than planned
cut the cycle and say so; a finished run says so and changes no file. The LRs are read from
the run's saved per-step trace and metrics.csv."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
import yaml

import torchgraft as tg
from support import run_cli, tiny_config
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import load_state
from torchgraft.errors import ConfigError

QUIET = RunConsole(quiet=True)
STEPS = 4  # per epoch: 30 training images (36 digits less the held-out 6) in batches of 8


class Captured(RunConsole):
    """A console whose lines are kept (``text``); ``stop_after`` epochs, it interrupts the run
    as Ctrl-C would."""

    def __init__(self, stop_after: int | None = None):
        self.stream = io.StringIO()
        super().__init__(self.stream)
        self.left = stop_after

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def end_epoch(self, summary: str) -> None:
        super().end_epoch(summary)
        if self.left is not None:
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt


def onecycle(digit_folder, out: Path, epochs: int, **sections) -> dict:
    """The tiny CNN, every layer training, under a one-cycle LR schedule."""
    return tiny_config(
        digit_folder, out, schedule={"name": "onecycle"}, train={"epochs": epochs}, **sections
    )


def two_phase(digit_folder, out: Path, epochs: int) -> dict:
    """The tiny CNN under the default recipe's schedule: 1 epoch of the head, then all."""
    config = tiny_config(
        digit_folder,
        out,
        freeze={"schedule": {"kind": "two_phase", "freeze_epochs": 1}},
        train={"epochs": epochs},
    )
    config["freeze"].pop("policy")
    return config


def head_lrs(run: Path) -> list[float]:
    """The head's LR after every optimizer step of the run, from its resume state."""
    return [
        rates.get("head", next(iter(rates.values()))) for _, rates in load_state(run)["lr_trace"]
    ]


def csv_lrs(run: Path) -> dict[int, float]:
    """metrics.csv's LR at the end of each epoch (0-based)."""
    with (run / "metrics.csv").open() as rows:
        return {
            int(r["epoch"]): float(r["lr"]) for r in csv.DictReader(rows) if r["split"] == "val"
        }


def assert_one_cycle(rates: list[float], peak: float) -> None:
    """Up to ``peak`` (the first step starts from peak/25), then down to ~0 at the last step,
    never at 0 before: ``rates`` are the LRs after each step of a one-cycle."""
    top = rates.index(max(rates))
    assert 0 < top < len(rates) // 2
    assert max(rates) == pytest.approx(peak, rel=0.05)
    steps = list(itertools.pairwise(rates))
    assert all(a <= b for a, b in steps[:top])
    assert all(a >= b for a, b in steps[top:])
    assert all(rate > 0 for rate in rates[:-1])
    assert rates[-1] == pytest.approx(0, abs=peak * 1e-6)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- the header ---------------------------------------------------------------------------
def test_a_run_too_short_for_its_schedule_says_the_body_never_trains(
    digit_folder, tmp_path, console_script, subprocess_env
):
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(two_phase(digit_folder, tmp_path / "runs", epochs=1)))
    result = run_cli(console_script, "train", "--config", path, env=subprocess_env)
    assert result.returncode == 0, result.stderr
    header = result.stdout.split("epoch 1:")[0]
    assert (
        "train.epochs 1 ends the run before freeze.schedule (two_phase) trains 3 of its 4 layer "
        "groups: stem, block1.0, block2.0 never train, only head; the schedule would train "
        "them from epoch 2: to train them, give --train.epochs 2 or more"
    ) in header.replace("\n", " ")
    policies = json.loads((tmp_path / "runs" / "run" / "policy.json").read_text())
    assert [p["epoch"] for p in policies] == [0]  # indeed: the head alone, all run long


def test_a_two_epoch_run_trains_the_body_in_its_second_epoch(digit_folder, tmp_path):
    console = Captured()
    run = tg.fit(two_phase(digit_folder, tmp_path / "runs", epochs=2), console=console)
    assert "never train" not in console.text
    stages = [r["stage"] for r in run.history if r["split"] == "train"]
    assert stages == ["head only", "all layers"]
    policies = json.loads((run.dir / "policy.json").read_text())
    assert [p["epoch"] for p in policies] == [0, 1]
    assert policies[1]["freeze"]["trainable"] > policies[0]["freeze"]["trainable"]


# --- extending a run ----------------------------------------------------------------------
def test_extended_epochs_train_under_a_fresh_one_cycle(
    digit_folder, tmp_path, console_script, subprocess_env
):
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=2), console=QUIET).dir
    before = head_lrs(run)
    result = run_cli(
        console_script, "train", "--resume", run, "--trust-run", "--train.epochs", "4",
        env=subprocess_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "train.epochs 4 (the run planned 2): epochs 3–4 are a new stage (the same layers, at "
        "the run's learning rates) with a new onecycle LR cycle"
    ) in result.stdout.replace("\n", " ")
    rates = head_lrs(run)
    assert len(rates) == 4 * STEPS
    assert rates[: 2 * STEPS] == before  # the first cycle as it was
    assert_one_cycle(before, peak=0.05)
    assert_one_cycle(rates[2 * STEPS :], peak=0.05)  # the added epochs: never at LR 0
    at_end = csv_lrs(run)
    assert at_end[2] > 0.01
    assert at_end[3] == pytest.approx(0, abs=1e-8)
    state = load_state(run)
    assert (state["epochs"], state["extended"]) == (4, [2])


def test_a_run_extended_twice_has_a_cycle_per_extension(digit_folder, tmp_path):
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=2), console=QUIET).dir
    for epochs in (4, 6):
        tg.fit(None, {"train.epochs": epochs}, resume=run, trust_run=True, console=QUIET)
    rates = head_lrs(run)
    cycles = [rates[start : start + 2 * STEPS] for start in range(0, 6 * STEPS, 2 * STEPS)]
    assert cycles[1] == pytest.approx(cycles[0])
    assert cycles[2] == pytest.approx(cycles[0])
    assert load_state(run)["extended"] == [2, 4]
    history = json.loads((run / "resumes.json").read_text())
    assert [(h["after_epoch"], h["changes"]) for h in history] == [
        (2, [{"key": "train.epochs", "was": 2, "now": 4}]),
        (4, [{"key": "train.epochs", "was": 4, "now": 6}]),
    ]


def test_an_interrupted_run_extended_finishes_its_cycle_first(digit_folder, tmp_path):
    whole = tg.fit(onecycle(digit_folder, tmp_path / "whole", epochs=4), console=QUIET)
    with pytest.raises(KeyboardInterrupt):
        tg.fit(onecycle(digit_folder, tmp_path / "cut", epochs=4), console=Captured(2))
    run = tmp_path / "cut" / "run"
    console = Captured()
    longer = tg.fit(None, {"train.epochs": 6}, resume=run, trust_run=True, console=console)
    assert "epochs 3–4 first finish the cycle of the current stage" in console.text
    rates = head_lrs(run)
    assert rates[: 4 * STEPS] == head_lrs(whole.dir)  # the old plan, exactly
    losses = [r["loss"] for r in longer.history if r["epoch"] < 4]
    assert losses == [r["loss"] for r in whole.history]
    assert_one_cycle(rates[4 * STEPS :], peak=0.05)


def test_an_extension_killed_before_its_first_epoch_is_kept(digit_folder, tmp_path):
    """A resume that extended the run wrote config.yaml (train.epochs 4) and was killed
    before its first epoch was saved: the state still holds the plan of 2, so the next plain
    resume extends the run there, as the first would have."""
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=2), console=QUIET).dir
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    tg.fit(None, resume=run, trust_run=True, console=QUIET)
    assert_one_cycle(head_lrs(run)[2 * STEPS :], peak=0.05)
    assert load_state(run)["extended"] == [2]


# --- fewer epochs, and nothing left ---------------------------------------------------------
def test_fewer_epochs_than_planned_cut_the_cycle_and_say_so(digit_folder, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=4), console=Captured(1))
    run = tmp_path / "runs" / "run"
    console = Captured()
    shorter = tg.fit(None, {"train.epochs": 3}, resume=run, trust_run=True, console=console)
    assert (
        "train.epochs 3 (the run planned 4): the run ends after epoch 3, before the onecycle LR "
        "cycle of its current stage ends: the cycle is cut there"
    ) in console.text.replace("\n", " ")
    assert [r["epoch"] for r in shorter.history if r["split"] == "val"] == [0, 1, 2]
    assert head_lrs(run)[-1] > 0.001  # cut before the cycle's end
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3


def test_fewer_epochs_than_done_are_refused_and_nothing_changes(digit_folder, tmp_path):
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=2), console=QUIET).dir
    before = snapshot(run)
    with pytest.raises(ConfigError) as refused:
        tg.fit(None, {"train.epochs": 1}, resume=run, trust_run=True, console=QUIET)
    message = str(refused.value)
    assert "cannot resume with train.epochs 1: the run has done 2 epochs already" in message
    assert "give train.epochs=2 or more, or start a new run of 1 epochs" in message
    assert snapshot(run) == before


def test_as_many_epochs_as_done_of_an_interrupted_run_trains_nothing(digit_folder, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=4), console=Captured(2))
    run = tmp_path / "runs" / "run"
    before = snapshot(run)
    console = Captured()
    tg.fit(None, {"train.epochs": 2}, resume=run, trust_run=True, console=console)
    assert console.text.strip() == (
        f"{run}: nothing to train: train.epochs 2 and 2 epochs are done (the run plans 4); "
        f'nothing was changed. To continue the run: tg.fit(resume="{run}", trust_run=True)'
    )
    assert snapshot(run) == before


def test_resuming_a_finished_run_says_so_and_changes_no_file(
    digit_folder, tmp_path, console_script, subprocess_env
):
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=1), console=QUIET).dir
    before = snapshot(run)
    result = run_cli(console_script, "train", "--resume", run, "--trust-run", env=subprocess_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{run}: already finished (1 of 1 epochs); to train longer: torchgraft train "
        f"--resume {run} --trust-run --train.epochs 2"
    )
    assert snapshot(run) == before
    console = Captured()  # the same, asked for in so many words, from Python
    again = tg.fit(None, {"train.epochs": 1}, resume=run, trust_run=True, console=console)
    assert console.text.strip() == (
        f"{run}: already finished (1 of 1 epochs); to train longer: "
        f"tg.fit(resume=\"{run}\", trust_run=True, overrides={{'train.epochs': 2}})"
    )
    assert [r["epoch"] for r in again.history] == [0, 0]
    assert again.best["epoch"] == 0
    assert snapshot(run) == before


def test_a_run_early_stopping_ended_is_finished_unless_told_to_go_on(digit_folder, tmp_path):
    config = onecycle(digit_folder, tmp_path / "runs", epochs=6, optim={"lr": 1e-9})
    config["train"].update(early_stopping=1, monitor="val/loss")
    run = tg.fit(config, console=QUIET)
    done = len({r["epoch"] for r in run.history})
    assert done < 6
    before = snapshot(run.dir)
    console = Captured()
    again = tg.fit(None, resume=run.dir, trust_run=True, console=console)
    assert f"already finished: early stopping ends it after epoch {done} of 6" in console.text
    assert "overrides={'train.early_stopping': None})" in console.text
    assert len({r["epoch"] for r in again.history}) == done
    assert snapshot(run.dir) == before
    overrides = {"train.early_stopping": None}
    more = tg.fit(None, overrides, resume=run.dir, trust_run=True, console=QUIET)
    assert len({r["epoch"] for r in more.history}) == 6


def stopped_while_finishing(run: Path) -> None:
    """Leave ``run`` as a kill after its last epoch's checkpoint and before its end leaves it:
    the state, model and metrics saved, the report the checkpoint's cheap one, no test
    metrics and no phases.json (written last)."""
    from torchgraft.engine.report.write import write_report

    write_report(run, final=False)
    for name in ("phases.json", "test_metrics.json"):
        (run / name).unlink(missing_ok=True)


def test_a_run_stopped_while_finishing_is_finished_by_its_resume(
    digit_folder, tmp_path, console_script, subprocess_env
):
    run = tg.fit(onecycle(digit_folder, tmp_path / "runs", epochs=1), console=QUIET).dir
    finished_report = (run / "report.html").read_text()
    stopped_while_finishing(run)
    assert "until then, torchgraft report" in (run / "report.html").read_text()
    model, state = (run / "model.safetensors").read_bytes(), load_state(run)

    result = run_cli(console_script, "train", "--resume", run, "--trust-run", env=subprocess_env)
    assert result.returncode == 0, result.stderr
    assert (
        f"{run}: every epoch is done (1 of 1); the run stopped while finishing: its test "
        "metrics, plots and report are made again" in result.stdout
    )
    assert "already finished" not in result.stdout
    assert (run / "phases.json").exists()
    report = (run / "report.html").read_text()
    assert "until then, torchgraft report" not in report
    assert report.count("<section") == finished_report.count("<section")
    assert (run / "model.safetensors").read_bytes() == model  # no epoch trained
    assert load_state(run)["history"] == state["history"]

    again = run_cli(console_script, "train", "--resume", run, "--trust-run", env=subprocess_env)
    assert f"{run}: already finished (1 of 1 epochs)" in again.stdout

    # A phases.json of an earlier finish (a run extended, then stopped while finishing
    # again), or a damaged one: the finishing is done again.
    for text in ('{"phases": {"training": 1.0}, "epochs": 0}', "{not json"):
        (run / "phases.json").write_text(text)
        console = Captured()
        tg.fit(None, resume=run, trust_run=True, console=console)
        assert "the run stopped while finishing" in console.text
        assert json.loads((run / "phases.json").read_text())["epochs"] == 1


def test_an_early_stopped_run_stopped_while_finishing_trains_no_more_epochs(digit_folder, tmp_path):
    config = onecycle(digit_folder, tmp_path / "runs", epochs=6, optim={"lr": 1e-9})
    config["train"].update(early_stopping=1, monitor="val/loss")
    run = tg.fit(config, console=QUIET)
    stopped_while_finishing(run.dir)
    console = Captured()
    again = tg.fit(None, resume=run.dir, trust_run=True, console=console)
    assert "the run stopped while finishing" in console.text
    assert again.history == run.history
    assert (run.dir / "phases.json").exists()
