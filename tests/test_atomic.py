"""Atomic writes: old content or complete new content, never a partial file, no litter."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torchgraft.atomic import atomic_path, atomic_paths, atomic_write_bytes, atomic_write_text


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_bytes_and_text_replace_the_content(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_bytes(target, b"old")
    assert atomic_write_text(target, "néw\r\nline") == target
    assert target.read_bytes() == "néw\r\nline".encode()  # no newline translation
    assert _litter(tmp_path) == []


def test_new_file_gets_umask_permissions_and_replaced_file_keeps_its_mode(tmp_path):
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o640


def _write_then_fail(target, error: BaseException, *others) -> None:
    """Write part of the new content through atomic_paths, then fail with ``error``."""
    with atomic_paths(target, *others) as temps:
        assert all(t.parent == target.parent and t.exists() for t in temps)
        temps[0].write_bytes(b"half of the new cont")
        raise error


def test_exception_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="boom"):
        _write_then_fail(target, RuntimeError("boom"))
    assert target.read_bytes() == b"old content"
    assert _litter(tmp_path) == []


def test_interrupt_leaves_absent_destination_absent(tmp_path):
    target = tmp_path / "absent.bin"
    with pytest.raises(KeyboardInterrupt):
        _write_then_fail(target, KeyboardInterrupt())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_yields_one_temp_and_renames_it(tmp_path):
    target = tmp_path / "one.bin"
    with atomic_path(target) as temp:
        assert temp.name.startswith(".one.bin.")
        temp.write_bytes(b"complete")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_bytes() == b"complete"
    assert _litter(tmp_path) == []


def test_atomic_paths_commit_together_or_not_at_all(tmp_path):
    weights, sidecar = tmp_path / "w.bin", tmp_path / "w.json"
    with atomic_paths(weights, sidecar) as (w_tmp, s_tmp):
        w_tmp.write_bytes(b"v1")
        s_tmp.write_text("v1")
    assert (weights.read_bytes(), sidecar.read_text()) == (b"v1", "v1")
    # The first file is written, the second never is: neither destination changes.
    with pytest.raises(OSError, match="disk full"):
        _write_then_fail(weights, OSError("disk full"), sidecar)
    assert (weights.read_bytes(), sidecar.read_text()) == (b"v1", "v1")
    assert _litter(tmp_path) == []


# torchgraft.atomic imports only the standard library and torchgraft's own light modules
# (errors, text; the package's public names are lazy): the child starts in a fraction of a
# second, without torch. The child also checks that importing it does not import torch.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from torchgraft import atomic
    assert "torch" not in sys.modules
    chunk = b"N" * (1 << 20)
    with atomic.atomic_path(sys.argv[1]) as temp, open(temp, "wb") as handle:
        for index in range(int(sys.argv[2])):
            handle.write(chunk)
            handle.flush()
            if index == 2:
                print("writing", flush=True)  # the parent kills us from here on
            time.sleep(0.005)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("old", [b"old content\n", None], ids=["replace", "create"])
def test_sigkill_mid_write_leaves_old_content_or_nothing(tmp_path, old):
    target = tmp_path / "big.bin"
    if old is not None:
        target.write_bytes(old)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), "400"],
        stdout=subprocess.PIPE,
    )
    assert child.stdout.readline() == b"writing\n"
    # The temporary file really is growing: we are killing a write in progress.
    assert any(p.stat().st_size >= 3 << 20 for p in tmp_path.glob(".big.bin.*.tmp"))
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    if old is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    # A SIGKILL cannot clean up: the only trace is the hidden temporary file.
    assert all(p.name.startswith(".big.bin.") for p in tmp_path.iterdir() if p != target)


def test_uninterrupted_child_writes_the_complete_file(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(target), "4"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.endswith(b"done\n")
    assert target.read_bytes() == b"N" * (4 << 20)
    assert _litter(tmp_path) == []


# -- what a write never replaces -------------------------------------------------------------


def test_a_link_to_a_regular_file_is_replaced_and_its_target_left_as_it_was(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("theirs")
    link = tmp_path / "out.txt"
    link.symlink_to(elsewhere)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "absent")
    atomic_write_text(link, "ours")
    atomic_write_text(dangling, "ours too")
    assert not link.is_symlink()
    assert link.read_text() == "ours"
    assert elsewhere.read_text() == "theirs"  # never written through the link
    assert not dangling.is_symlink()
    assert not (tmp_path / "absent").exists()


def test_a_fifo_that_appears_during_the_write_is_refused_before_the_rename(tmp_path):
    from torchgraft.errors import OutputError

    target = tmp_path / "slow.bin"

    def write_while_a_fifo_appears():
        with atomic_path(target) as temp:
            temp.write_bytes(b"written while someone made a FIFO there")
            os.mkfifo(target)

    with pytest.raises(OutputError, match="FIFO"):
        write_while_a_fifo_appears()
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert _litter(tmp_path) == []


def test_where_a_write_lands_and_which_files_it_would_replace(tmp_path):
    from torchgraft.atomic import landing, same_file, within

    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "config.yaml").write_text("x")
    alias = tmp_path / "alias"
    alias.symlink_to(run)  # the same folder under another name
    link = tmp_path / "link.yaml"
    link.symlink_to(run / "config.yaml")
    hard = tmp_path / "hard.yaml"
    os.link(run / "config.yaml", hard)
    assert landing(alias / "config.yaml") == run.resolve() / "config.yaml"
    assert landing(link) == link  # the link itself is what a write replaces
    assert same_file(alias / "state" / ".." / "config.yaml", run / "config.yaml")
    assert same_file(run / "config.yaml", link)  # the file the input link leads to
    assert same_file(hard, run / "config.yaml")  # the same inode: refused, to be safe
    assert not same_file(link, run / "config.yaml")  # replacing a link leaves its target
    assert within(alias / "state" / "new.pt", run)
    assert within(alias / "new" / "deeper.pt", run)  # folders that do not exist yet
    assert not within(tmp_path / "runner" / "x", run)
