"""Names in the training data that are not regular files: a FIFO, a device, a socket, a folder
— named by a CSV row, sitting in a class folder, or standing for the CSV itself. Each is a bad
file named by path (the run stops by default, ``on_bad_image: skip`` leaves it out), never a
hang; files over the size limits are refused the same way (issue 17, item 9).

Everything is real: FIFOs from ``os.mkfifo``, a Unix socket bound in tmp_path, a link to
``/dev/zero``, and a real ``torchgraft train`` in a subprocess with a timeout, so a hang fails
the test instead of the suite.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from support import run_cli, tiny_config, write_digit_folder
from torchgraft.data.images import UnreadableImageError, load_image
from torchgraft.data.limits import DataLimits
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.errors import DataError
from torchgraft.model.spec import Preprocessing

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and sockets are POSIX")

PRE = Preprocessing(input_size=(3, 16, 16), crop_pct=1.0)


def _config_file(path, config: dict):
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def _csv_naming(folder, extra: str):
    """A CSV of every PNG of ``folder`` (labels from the class folder) plus the row ``extra``."""
    files = [p for p in folder.rglob("*.png") if p.is_file()]
    rows = [f"{p.relative_to(folder).as_posix()},{p.parent.name}" for p in files]
    table = folder / "labels.csv"
    table.write_text("path,label\n" + "\n".join([*sorted(rows), f"{extra},1"]) + "\n")
    return table


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_fifo_in_a_class_folder_is_a_bad_file_named_by_path(tmp_path, in_memory):
    data = write_digit_folder(tmp_path / "images", per_class=4)
    fifo = data / "1" / "pipe.png"
    os.mkfifo(fifo)
    source = discover(str(data))
    with pytest.raises(DataError) as stopped:
        prepare_data(source, PRE, in_memory=in_memory, workers=2)
    assert f"{fifo}: not a regular file (a FIFO)" in str(stopped.value)
    skipped = prepare_data(source, PRE, in_memory=in_memory, on_bad_image="skip")
    assert [item.path for item in skipped.bad] == [fifo]
    assert sum(len(s) for s in skipped.source.splits.values()) == 12


@pytest.mark.slow
def test_a_csv_row_naming_a_fifo_stops_the_run_and_is_skipped_on_request(
    console_script, subprocess_env, tmp_path
):
    data = write_digit_folder(tmp_path / "images", per_class=6)
    os.mkfifo(data / "pipe.png")  # nobody ever writes to it: opening it to read would block
    table = _csv_naming(data, "pipe.png")
    config = _config_file(tmp_path / "run.yaml", tiny_config(table, tmp_path / "runs"))
    stopped = run_cli(console_script, "train", "--config", config, env=subprocess_env, timeout=120)
    assert stopped.returncode == 2, stopped.stderr
    assert f"{data / 'pipe.png'}: not a regular file (a FIFO)" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    skipped = run_cli(
        console_script,
        "train", "--config", config, "--data.on_bad_image", "skip", "--output.name", "skipped",
        env=subprocess_env, timeout=120,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    listed = (tmp_path / "runs" / "skipped" / "bad_images.txt").read_text()
    assert "pipe.png\tnot a regular file (a FIFO)" in listed


def test_a_csv_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as refused:
        discover(str(fifo))
    assert str(refused.value) == f"{fifo}: cannot read the CSV: not a regular file (a FIFO)"


def test_a_device_socket_and_folder_are_bad_files_and_the_device_is_never_opened(tmp_path):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.png"))
    (tmp_path / "folder.png").mkdir()
    try:
        expected = {
            "zero.png": "not a regular file (a device)",
            "socket.png": "not a regular file (a socket)",
            "folder.png": "is a directory, not an image file",
        }
        for name, reason in expected.items():
            with pytest.raises(UnreadableImageError) as bad:
                load_image(tmp_path / name)
            assert bad.value.reason == reason
            assert str(bad.value).startswith(f"{tmp_path / name}: {reason}; ")
    finally:
        server.close()


def test_a_device_in_a_class_folder_is_listed_not_skipped_in_silence(tmp_path):
    data = write_digit_folder(tmp_path / "images", per_class=3)
    (data / "2" / "zero.png").symlink_to("/dev/zero")
    (data / "2" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    source = discover(str(data))
    with pytest.raises(DataError) as stopped:
        prepare_data(source, PRE, in_memory=False)
    message = str(stopped.value)
    assert "2 unreadable image files" in message
    assert f"{data / '2' / 'zero.png'}: not a regular file (a device)" in message
    assert f"{data / '2' / 'gone.png'}: file not found" in message


def test_an_image_file_over_the_size_limit_is_a_bad_file(tmp_path, monkeypatch):
    data = write_digit_folder(tmp_path / "images", per_class=3)
    big = data / "0" / "padded.png"
    big.write_bytes((data / "0").joinpath(sorted(os.listdir(data / "0"))[0]).read_bytes())
    with big.open("ab") as handle:
        handle.write(b"\0" * 5000)  # trailing bytes: a valid PNG of 5 KB more
    monkeypatch.setenv("TORCHGRAFT_MAX_IMAGE_FILE_BYTES", "4096")
    with pytest.raises(UnreadableImageError) as refused:
        load_image(big)
    assert "over the limit of 4,096 bytes for one image file" in refused.value.reason
    assert "TORCHGRAFT_MAX_IMAGE_FILE_BYTES" in str(refused.value)
    load_image(big, limits=DataLimits(max_image_file_bytes=1 << 20))  # raised: it loads


def test_a_csv_over_the_size_limit_is_refused_naming_the_variable(tmp_path, monkeypatch):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "a.png,cat\n" * 1000)
    monkeypatch.setenv("TORCHGRAFT_MAX_LIST_BYTES", "1000")
    with pytest.raises(DataError) as refused:
        discover(str(table))
    assert str(refused.value).startswith(f"{table}: a CSV of 10,011 bytes, over the limit of")
    assert "TORCHGRAFT_MAX_LIST_BYTES" in str(refused.value)


def test_a_bad_limit_in_the_environment_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_MAX_DECODE_BYTES", "lots")
    with pytest.raises(DataError, match="TORCHGRAFT_MAX_DECODE_BYTES='lots' is not a"):
        load_image(tmp_path / "any.png")
