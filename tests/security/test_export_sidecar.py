"""An export's files are read within bounds: a sidecar nested a million deep, a FIFO, a device
or a huge file — as the sidecar or as the exported file itself — is a typed refusal naming the
file, never an internal error, a hang or a MemoryError.

Sidecars go through ``torchgraft.checkpoint.documents.read_json`` (regular files only, opened without
blocking, at most 16 MiB, at most 64 levels deep); the exported file is opened the same way
before it is hashed.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from support import export_sidecar, run_cli, write_digit_folder
from torchgraft.engine.export.load import load_exported, sidecar_path
from torchgraft.errors import CheckpointError

DEEP = "[" * 200_000 + "]" * 200_000  # json.loads: RecursionError, not a ValueError


def model_file(folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(b"any bytes: the sidecar is refused before they matter")
    return path


def load_within(path: Path, seconds: float = 20.0, **kwargs) -> BaseException | None:
    """What ``load_exported(path)`` raised, or None; fails if it is still waiting after
    ``seconds`` (a FIFO opened for reading waits for a writer: then one is opened, so that
    the thread ends)."""
    outcome: list[BaseException | None] = []

    def attempt():
        try:
            load_exported(path, **kwargs)
            outcome.append(None)
        except BaseException as exc:  # the test inspects whatever it was
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in (path, sidecar_path(path)):
            if fifo.is_fifo():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"load_exported({path.name}) was still waiting after {seconds} s")
    return outcome[0]


def test_a_deeply_nested_sidecar_is_refused(tmp_path):
    path = model_file(tmp_path)
    sidecar_path(path).write_text(DEEP)
    refused = load_within(path)
    assert isinstance(refused, CheckpointError), repr(refused)
    assert str(refused).startswith(f"{sidecar_path(path)}: refused: nested more than 64 levels")


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "folder"])
def test_a_sidecar_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path, kind):
    path = model_file(tmp_path)
    side = sidecar_path(path)
    if kind == "fifo":
        os.mkfifo(side)
    elif kind == "device":
        side.symlink_to("/dev/zero")
    elif kind == "huge":  # sparse: 64 MiB that take no disk space
        with side.open("wb") as handle:
            handle.truncate(64 << 20)
    else:
        side.mkdir()
    refused = load_within(path)
    assert isinstance(refused, CheckpointError), repr(refused)
    message = str(refused)
    assert message.startswith(f"{side}: ")
    assert {
        "fifo": "not a regular file (a FIFO)",
        "device": "not a regular file (a character device)",
        "huge": "longer than the 16,777,216 bytes",
        "folder": "(a folder)",
    }[kind] in message
    assert "export the run again" in message


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_file_that_is_a_fifo_or_a_device_is_refused_not_read(tmp_path, fmt):
    """The sidecar is fine; the exported file is a FIFO (hashing it would wait for a writer
    forever) or /dev/zero (it would never end)."""
    fifo, device = tmp_path / "fifo.onnx", tmp_path / "zero.onnx"
    os.mkfifo(fifo)
    device.symlink_to("/dev/zero")
    for path, what in ((fifo, "a FIFO"), (device, "a character device")):
        sidecar_path(path).write_text(json.dumps(_sidecar_fields(path, fmt)))
        refused = load_within(path, trust=True)
        assert isinstance(refused, CheckpointError), repr(refused)
        assert str(refused).startswith(f"{path}: ")
        assert f"not a regular file ({what})" in str(refused)


def _sidecar_fields(path: Path, fmt: str) -> dict:
    """A valid sidecar for a file that cannot be hashed (its sha256 is made up)."""
    stand_in = path.with_name("stand-in")
    stand_in.write_bytes(b"")
    return export_sidecar(stand_in, fmt, file=path.name)


@pytest.mark.slow
def test_the_command_says_which_sidecar_and_why(tmp_path, console_script, subprocess_env):
    """Before: ``internal error: RecursionError: maximum recursion depth exceeded``."""
    path = model_file(tmp_path)
    sidecar_path(path).write_text(DEEP)
    image = write_digit_folder(tmp_path / "digits", classes=(1,), per_class=1) / "1"
    done = run_cli(console_script, "predict", path, image, env=subprocess_env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"torchgraft predict: error: {sidecar_path(path)}: refused: nested more than 64 levels "
        "deep (no torchgraft document nests more than a few levels; a crafted or damaged file); "
        "export the run again to write its sidecar\n"
    )
