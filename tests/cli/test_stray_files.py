"""A user's folder of photographs, with what such folders hold besides photographs: stray
files are skipped with one line naming them and the run trains; a damaged image follows
data.on_bad_image; the header counts the images used; a start that fails leaves no run folder
behind, and never touches one that holds a run. The real console script, in subprocesses."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from support import run_cli, tiny_config, write_digit_folder

#: Thumbs.db starts like every OLE2 compound file (Pillow's FPX plugin would accept it).
OLE2 = bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504)


def _config(tmp_path: Path, images: Path, **sections) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(images, tmp_path / "runs", **sections)))
    return path


def _header_counts(out: str) -> tuple[int, int]:
    """``(train, val)`` from the header's ``data …: N train / M val images`` line."""
    found = re.search(r"data .*: ([\d,]+) train / ([\d,]+) val images", out)
    assert found, out
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def _val_counted(run: Path) -> int:
    """The validation images of the first epoch, as metrics.csv counted them."""
    with (run / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if (r["epoch"], r["split"]) == ("0", "val")]
    return int(rows[0]["count"])


def test_stray_files_are_skipped_with_one_line_naming_them_and_the_run_trains(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "photos")  # 3 classes of 12 PNGs
    (images / "2" / "README.txt").write_text("scanned at 300 dpi")
    (images / "2" / "Thumbs.db").write_bytes(OLE2)
    (images / "desktop.ini").write_text("[.ShellClassInfo]\n")  # beside the class folders
    (images / "1" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored unsaid
    result = run_cli(
        console_script, "train", "--config", _config(tmp_path, images), env=subprocess_env
    )
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if "Thumbs.db" in line]
    assert said == ["skipped 3 files that are not images: desktop.ini, 2/README.txt, 2/Thumbs.db"]
    assert ".DS_Store" not in result.stdout
    assert "unreadable" not in result.stdout  # not bad images: nothing in bad_images.txt
    run = tmp_path / "runs" / "run"
    assert (run / "model.safetensors").is_file()
    assert not (run / "bad_images.txt").exists()
    assert _header_counts(result.stdout) == (30, 6)  # the 36 images, no stray among them
    assert _val_counted(run) == 6


def test_a_photo_saved_without_an_image_suffix_is_used(console_script, subprocess_env, tmp_path):
    images = write_digit_folder(tmp_path / "photos")
    (images / "0" / "0000.png").rename(images / "0" / "scan-0000")  # a PNG, by its bytes
    result = run_cli(
        console_script, "train", "--config", _config(tmp_path, images), env=subprocess_env
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    assert _header_counts(result.stdout) == (30, 6)  # all 36 images, the unnamed one too


def test_a_corrupt_png_stops_the_run_and_with_skip_is_left_out_and_counted(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "photos")
    broken = images / "2" / "0999.png"
    broken.write_text("not a picture, though named like one")
    (images / "2" / "README.txt").write_text("notes")
    config = _config(tmp_path, images)

    stopped = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert stopped.returncode == 2
    assert "1 unreadable image file:" in stopped.stderr
    assert "0999.png: not an image" in stopped.stderr
    assert "README.txt" not in stopped.stderr  # a stray is no reason to stop
    assert "--data.on_bad_image skip" in stopped.stderr
    assert "Traceback" not in stopped.stderr

    skipped = run_cli(
        console_script, "train", "--config", config, "--data.on-bad-image", "skip",
        env=subprocess_env,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    out = skipped.stdout
    assert "skipped 1 unreadable image file(s); listed in bad_images.txt" in out
    assert "skipped 1 file that is not an image: 2/README.txt" in out
    run = tmp_path / "runs" / "run"
    assert "0999.png" in (run / "bad_images.txt").read_text()
    # 37 image files were found and 36 used: the header says what trained, not what was found.
    train, val = _header_counts(out)
    assert train + val == 36
    assert val == _val_counted(run)


def test_a_scan_that_fails_leaves_no_run_folder_nor_the_output_dir_it_made(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "photos", per_class=4)
    (images / "1" / "0999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    fresh = tmp_path / "fresh" / "runs"
    failed = run_cli(
        console_script, "train", "--config", _config(tmp_path, images), "--output.dir", fresh,
        env=subprocess_env,
    )  # fmt: skip
    assert failed.returncode == 2
    assert "0999.jpg" in failed.stderr
    assert not (tmp_path / "fresh").exists()  # neither runs/run nor the runs/ made for it


def test_a_config_error_found_after_the_run_folder_was_made_leaves_none(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "photos", per_class=4)
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    (other / "metrics.csv").write_text("epoch,split\n")  # another run's folder
    too_few = run_cli(
        console_script, "train", "--config", _config(tmp_path, images),
        "--head.num_classes", "2",  # known wrong only once the data's classes are counted
        env=subprocess_env,
    )  # fmt: skip
    assert too_few.returncode == 2
    assert "head.num_classes 2: the data has 3 classes" in too_few.stderr
    assert "Traceback" not in too_few.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]
    assert (other / "metrics.csv").read_text() == "epoch,split\n"


@pytest.mark.slow
def test_lr_find_and_a_resume_that_fail_to_start_leave_nothing_and_keep_the_run(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "photos", per_class=4)
    config = _config(tmp_path, images, train={"epochs": 1})
    done = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "run"
    finished = sorted(p.name for p in run.iterdir())
    (images / "1" / "0999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    sweep = run_cli(console_script, "lr-find", "--config", config, env=subprocess_env)
    assert sweep.returncode == 2
    assert "0999.jpg" in sweep.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]  # no lr-find folder

    resumed = run_cli(
        console_script, "train", "--resume", run, "--trust-run", "--train.epochs", "2",
        env=subprocess_env,
    )  # fmt: skip
    assert resumed.returncode == 2
    assert "0999.jpg" in resumed.stderr
    assert sorted(p.name for p in run.iterdir()) == finished  # a run's folder is never removed
