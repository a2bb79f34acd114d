"""Outputs that are not files: ``-o /dev/null`` must not replace the device with a file.

Every write renames a finished temporary file over its destination, which would put a
regular file in place of a device, a FIFO, a socket or a folder (as root, the machine's own
``/dev/null``). The atomic writer refuses them, and the commands refuse them before any work.
No real device is touched: the stand-ins are made in tmp_path (a device node only as root,
with /dev/null's numbers), and /dev/null itself is reached only through a link, and checked
to be the same device afterwards.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from support import run_cli
from torchgraft.atomic import atomic_write_bytes
from torchgraft.errors import OutputError

KINDS = {
    "fifo": "a FIFO (named pipe)",
    "folder": "a folder",
    "socket": "a socket",
    "char-device": "a character device",
    "link-to-fifo": "a FIFO (named pipe) (through a symbolic link)",
    "link-to-dev-null": "a character device (through a symbolic link)",
}


def make_special(kind: str, path: Path) -> Path:
    """A ``kind`` of non-regular file at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    elif kind == "char-device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        try:  # /dev/null's numbers, but a node of our own in tmp_path
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("this filesystem refuses device nodes")
    elif kind == "link-to-fifo":
        os.mkfifo(path.with_name("real-fifo"))
        path.symlink_to(path.with_name("real-fifo"))
    elif kind == "link-to-dev-null":
        path.symlink_to("/dev/null")
    return path


def what_is(path: Path) -> tuple[int, bool]:
    return stat.S_IFMT(path.stat().st_mode), path.is_symlink()


@pytest.fixture
def dev_null_stays():
    """/dev/null is the same character device after the test as before it."""
    before = os.stat("/dev/null")
    yield
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)


@pytest.mark.parametrize("kind", KINDS)
def test_the_atomic_writer_refuses_what_is_not_a_regular_file(tmp_path, kind, dev_null_stays):
    target = make_special(kind, tmp_path / "out.bin")
    before = what_is(target)
    with pytest.raises(OutputError) as refused:
        atomic_write_bytes(target, b"data")
    assert str(refused.value).startswith(f"{target} is {KINDS[kind]}, not a regular file")
    assert what_is(target) == before
    assert not list(tmp_path.glob(".*.tmp"))


COMMANDS = {
    "export -o": (["export", "RUN", "--format", "pt2", "-o", "{out}"], "-o/--output", "m.pt2"),
    "graft -o": (["graft", "src.pt", "--into", "m:Net", "-o", "{out}"], "-o/--output", "w.st"),
    "graft -o sidecar": (
        ["graft", "src.pt", "--into", "m:Net", "-o", "{dir}/w.safetensors"],
        "-o/--output (its sidecar)",
        "w.safetensors.json",
    ),
    "graft --plan-out": (
        ["graft", "src.pt", "--into", "m:Net", "--plan-out", "{out}"],
        "--plan-out",
        "p.yaml",
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["fifo", "socket", "char-device", "link-to-dev-null"])
def test_commands_refuse_such_outputs_before_any_work(
    console_script, subprocess_env, tmp_path, kind, command, dev_null_stays
):
    """Refused in the command line's checks (no torch import, no file read): exit 2, one
    line naming the flag, the path and what it is."""
    words, flag, name = COMMANDS[command]
    special = make_special(kind, tmp_path / name)
    before = what_is(special)
    args = [w.format(out=special, dir=tmp_path) for w in words]
    result = run_cli(console_script, *args, env=subprocess_env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"error: {flag} {special} is {KINDS[kind]}, not a regular file" in lines[0]
    assert what_is(special) == before


def test_a_folder_given_as_an_output_is_still_named_as_a_folder(
    console_script, subprocess_env, tmp_path
):
    (tmp_path / "plans").mkdir()
    result = run_cli(
        console_script, "graft", "src.pt", "--into", "m:Net", "--plan-out", "plans",
        env=subprocess_env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--plan-out plans is a folder; give a file name inside it, e.g. plans/plan.yaml" in (
        result.stderr
    )
    assert (tmp_path / "plans").is_dir()
