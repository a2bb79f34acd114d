"""Output that is not a terminal (a pipe, a log file, CI) gets plain lines: no
carriage-return progress redraws on stdout or stderr, and metrics.csv is still written.
(The embedded default run checks stdout too:
tests/cli/test_train_cmd.py::test_the_embedded_default_runs_end_to_end_reduced_to_a_few_steps.)"""

from __future__ import annotations

import subprocess

import yaml

from support import tiny_config


def test_train_into_pipes_writes_no_carriage_returns_and_keeps_metrics(
    digit_folder, tmp_path, console_script, subprocess_env
):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(digit_folder, tmp_path / "runs")))
    done = subprocess.run(
        [*console_script, "train", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,  # pipes: not terminals
        env={**subprocess_env, "TERM": "xterm-256color", "COLUMNS": "120"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"epoch 2:" in done.stdout  # progress still reported, as whole lines
    assert b"\r" not in done.stdout
    assert b"\r" not in done.stderr
    assert b"\x1b[" not in done.stdout + done.stderr  # nor cursor or colour codes
    rows = (tmp_path / "runs" / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2


def test_train_into_a_pipe_closed_early_ends_quietly_with_141(
    digit_folder, tmp_path, console_script, subprocess_env
):
    """`torchgraft train | head -1`: the reader goes away after the first line; the run
    ends with 141 (as `git log | head -1`), no traceback, no "internal error", and not
    blamed on the run folder."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(digit_folder, tmp_path / "runs")))
    train = subprocess.Popen(
        [*console_script, "train", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env,
    )
    assert train.stdout.readline()  # one line, as head -1 reads
    train.stdout.close()
    status = train.wait(timeout=300)
    stderr = train.stderr.read().decode()
    assert status == 141, stderr
    assert "Traceback" not in stderr
    assert "error" not in stderr
