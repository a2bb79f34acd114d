"""Saving into a full disk, a read-only folder or past a file-size limit: a typed error
(exit status 2 on the CLI) that names the folder, and the checkpoint saved before intact.

The full disk and the read-only folder are a small tmpfs mounted for the test (root only;
skipped elsewhere); the file-size limit (``RLIMIT_FSIZE``, "File too large") runs anywhere.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

import torchgraft as tg
from support import tiny_config
from torchgraft.cli.main import main
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import load_state

QUIET = RunConsole(quiet=True)


def trained_once(digit_folder, out: Path) -> Path:
    return tg.fit(tiny_config(digit_folder, out, train={"epochs": 1}), console=QUIET).dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    files = ["model.safetensors", "model.json", "state/last.json"]
    return {name: (run_dir / name).read_bytes() for name in files}


def assert_intact(run_dir: Path, before: dict[str, bytes]) -> None:
    assert snapshot(run_dir) == before
    assert load_state(run_dir)["epoch"] == 0
    model = tg.load(run_dir, trust_run=True)
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    assert not list(run_dir.rglob(".*.tmp"))  # a failed write removes its temporary file


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_stops_the_run_with_exit_2_and_keeps_the_last_checkpoint(
    digit_folder, tmp_path, capsys
):
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        run_dir = trained_once(digit_folder, disk)
        before = snapshot(run_dir)
        # Fill the disk to the last byte (unbuffered: the last write fails, not the close).
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
        capsys.readouterr()
        status = main(["train", "--resume", str(run_dir), "--trust-run", "--train.epochs", "3"])
        err = capsys.readouterr().err
        assert status == 2, err
        assert f"cannot write into {run_dir}: No space left on device" in err
        assert "Traceback" not in err
        assert "internal error" not in err
        (disk / "filler").unlink()
        assert_intact(run_dir, before)


def test_a_read_only_folder_stops_the_run_with_exit_2_and_keeps_the_last_checkpoint(
    digit_folder, tmp_path, capsys
):
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        run_dir = trained_once(digit_folder, disk)
        before = snapshot(run_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        capsys.readouterr()
        status = main(["train", "--resume", str(run_dir), "--trust-run", "--train.epochs", "3"])
        err = capsys.readouterr().err
        assert status == 2, err
        assert f"cannot write into {run_dir}: Read-only file system" in err
        assert "Traceback" not in err
        # And a new run in the read-only folder: refused before training, the folder named.
        config = tiny_config(digit_folder, disk / "new")
        with pytest.raises(tg.errors.OutputError, match=f"cannot write into {disk / 'new'}"):
            tg.fit(config, console=QUIET)
        assert_intact(run_dir, before)


def _limit_file_size(limit: int):
    def limit_child():
        # Ignored, SIGXFSZ no longer kills the process: the write fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_child


def test_a_file_size_limit_mid_run_is_exit_2_naming_the_folder(
    digit_folder, tmp_path, console_script, subprocess_env
):
    run_dir = trained_once(digit_folder, tmp_path / "runs")
    before = snapshot(run_dir)
    state_file = (
        run_dir / "state" / yaml.safe_load((run_dir / "state/last.json").read_text())["file"]
    )
    # Small files (config.yaml, metrics) still fit; the resume state of the next epoch does not.
    limit = state_file.stat().st_size // 2
    assert (run_dir / "config.yaml").stat().st_size < limit
    done = subprocess.run(
        [*console_script, "train", "--resume", str(run_dir), "--trust-run", "--train.epochs", "3"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        preexec_fn=_limit_file_size(limit),
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot write into {run_dir}: File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert_intact(run_dir, before)
