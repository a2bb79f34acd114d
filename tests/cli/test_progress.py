"""Progress you can plan with, as users see it from ``torchgraft train``: on a terminal (a real
pseudo-terminal) every pass over images — training, validation, the report's — has a bar with
the time left; in a pipe there are only lines, no carriage returns, and the last line splits
the command's wall time by phase, its parts adding up to the total (also in phases.json)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import yaml

from support import run_cli, tiny_config, write_digit_folder

#: What rich writes to move the cursor and colour text: taken out to read a frame as text.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: The bar's time-left column: ``eta H:MM:SS``, or ``eta -:--:--`` before a rate is known.
ETA = re.compile(r"eta (\d+:\d\d:\d\d|-:--:--)")
#: The time left, known.
KNOWN = re.compile(r"eta \d+:\d\d:\d\d")


def plain_env(env: dict) -> dict:
    """``env`` without the variables that make rich treat any stream as a terminal (or none)."""
    env = dict(env)
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(name, None)
    return env


def on_a_terminal(command: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal of 120 columns; its exit
    status and everything it wrote there (control sequences and carriage returns included)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env={**plain_env(env), "TERM": "xterm-256color"},
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(leader, 65536)  # read as it comes: a full pty would block it
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(leader)
    return status, b"".join(chunks).decode("utf-8", "replace")


def frames(output: str) -> list[str]:
    """Every line and redrawn bar the output shows, as plain text."""
    pieces = re.split(r"[\r\n]", output)
    return [text for piece in pieces if (text := CONTROL.sub("", piece).strip())]


def tiny_run(tmp_path: Path, **sections) -> Path:
    """A config file for a two-epoch TinyCNN run on 3 classes of digits (36 images)."""
    data = write_digit_folder(tmp_path / "images")
    config = tiny_config(data, tmp_path / "runs", **sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_terminal_shows_bars_with_the_time_left_for_validation_and_the_report(
    console_script, subprocess_env, tmp_path
):
    # Batches of 2: the validation split (6 images) and the report's pass take several steps.
    config = tiny_run(tmp_path, data={"eval_batch_size": 2})
    status, output = on_a_terminal(
        [*console_script, "train", "--config", str(config)], subprocess_env
    )
    assert status == 0, output
    shown = frames(output)
    assert "\r" in output  # bars are redrawn in place on a terminal

    def bar(label: str) -> list[str]:
        return [frame for frame in shown if frame.startswith(label) and "images/s" in frame]

    for label in ("epoch 1/2 validation", "epoch 2/2 validation", "report: validation images"):
        drawn = bar(label)
        assert drawn, f"no {label!r} bar in:\n" + "\n".join(shown)
        assert all(ETA.search(frame) for frame in drawn), drawn  # each frame: the time left
        done = [frame for frame in drawn if re.search(r"\b(\d+)/\1\b", frame)]
        assert done, drawn  # drawn once more when the pass ended
        assert KNOWN.search(done[-1]), done
    training = [f for f in shown if f.startswith("epoch 1/2 (") and "steps/s" in f]
    assert training  # the epoch's own bar
    assert all(ETA.search(frame) for frame in training)
    # The bars were transient: the summary lines and the final phase line are what stay.
    assert any(frame.startswith("epoch 2: train loss") for frame in shown)
    assert shown[-1].startswith("wall ")


def parts_of(line: str) -> tuple[float, dict[str, float]]:
    """``wall 5.3 s: start 5.0 s (…) · report 0.3 s`` → ``(5.3, {"start": 5.0, …})``."""
    match = re.fullmatch(r"wall (\d+\.\d) s: (.+)", line)
    assert match, line
    parts = {}
    for part in match[2].split(" · "):
        named = re.fullmatch(r"([a-z ]+?) (\d+\.\d) s(?: \([^)]*\))?", part)
        assert named, part
        parts[named[1]] = float(named[2])
    return float(match[1]), parts


def test_a_piped_run_ends_with_its_wall_time_by_phase_adding_up(
    console_script, subprocess_env, tmp_path
):
    config = tiny_run(tmp_path)
    started = time.monotonic()
    result = run_cli(console_script, "train", "--config", config, env=plain_env(subprocess_env))
    measured = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout  # no bars in a pipe
    assert "\x1b[" not in result.stdout
    wall, parts = parts_of(result.stdout.splitlines()[-1])
    assert abs(sum(parts.values()) - wall) <= 0.2  # the line adds up (to the tenth, in fact)
    assert "start" in parts
    assert wall <= measured  # counted from the process's start, not before it
    record = json.loads((tmp_path / "runs" / "run" / "phases.json").read_text())
    assert record["from"] == "process start"  # the command's imports are part of its time
    phases = record["phases"]
    expected = {"start", "training", "validation", "checkpoints", "report", "other"}
    assert expected <= set(phases)
    names = list(phases)
    assert names[0] == "start"  # what ran before the first epoch
    assert names[-1] == "other"
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) == pytest.approx(record["wall_seconds"], abs=0.01)
    assert round(record["wall_seconds"], 1) == wall
