"""A run folder belongs to one run: two runs started together never share one.

``RunDirectory.create`` makes the folder with one ``mkdir`` of its final name: with
``output.name`` the second run is refused naming the folder; a stamped default name moves on
to ``-2``, ``-3``, … Raced here by threads, by processes, and by two real ``torchgraft
train`` processes held at the same point of their start; and a start that fails removes the
empty folder it made, so the same command can simply be run again.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import yaml

from support import run_cli, tiny_config
from torchgraft.engine import run_dir
from torchgraft.engine.run_dir import RunDirectory
from torchgraft.errors import ConfigError


def race(count: int, make) -> list:
    """``make()`` in ``count`` threads released together; each result or exception."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(index: int) -> None:
        barrier.wait()
        try:
            results[index] = make()
        except Exception as exc:  # the test sorts them out
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_threads_racing_for_one_run_name_leave_it_to_exactly_one(tmp_path):
    for round_ in range(20):
        folder = tmp_path / "runs" / f"name-{round_}"
        results = race(8, lambda f=folder: RunDirectory.create(f.parent, f.name, "m"))
        made = [r for r in results if isinstance(r, RunDirectory)]
        refused = [r for r in results if isinstance(r, ConfigError)]
        assert len(made) == 1, results
        assert len(refused) == 7, results
        assert made[0].path == folder
        for error in refused:
            assert f"output.name: {folder} already exists" in str(error)
            assert "choose another name" in str(error)


def test_threads_starting_in_the_same_second_get_stamped_names_of_their_own(tmp_path, monkeypatch):
    import datetime

    second = datetime.datetime(2026, 12, 1, 12, 0, 0)
    clock = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: second))
    monkeypatch.setattr(run_dir, "datetime", clock)  # every thread in the same second
    make_folder = os.mkdir

    def slow_mkdir(path, mode=0o777, **kwargs):  # a network filesystem: mkdir takes a while
        time.sleep(0.05)
        return make_folder(path, mode, **kwargs)

    monkeypatch.setattr(os, "mkdir", slow_mkdir)
    results = race(8, lambda: RunDirectory.create(tmp_path / "runs", None, "timm:resnet18"))
    base = "2026-12-01_120000-resnet18"
    names = sorted(r.path.name for r in results)
    assert names == sorted([base] + [f"{base}-{n}" for n in range(2, 9)])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == names


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from torchgraft.engine.run_dir import RunDirectory
    from torchgraft.errors import ConfigError
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.001)
    try:
        made = RunDirectory.create(go.parent / "runs", "shared", "m")
    except ConfigError as error:
        print("refused", error, flush=True)
    else:  # as a run does: build the model, then write its first file
        time.sleep(0.5)
        made.write_text(f"owner-{os.getpid()}", "")
        print("made", made.path, flush=True)
    """
)


def test_processes_racing_for_one_run_name_leave_it_to_exactly_one(tmp_path):
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(1.0)  # every child imported and waiting (they need ~0.2 s)
    go.touch()
    said = [child.communicate(timeout=60)[0] for child in children]
    assert sum(line.startswith("made ") for line in said) == 1, said
    assert sum(line.startswith("refused output.name:") for line in said) == 5, said
    assert len(list((tmp_path / "runs" / "shared").iterdir())) == 1  # one owner's file


def test_an_existing_empty_folder_or_file_is_never_adopted(tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    (tmp_path / "runs" / "a-file").write_text("mine")
    with pytest.raises(ConfigError, match=r"already exists, empty .* remove it if no run"):
        RunDirectory.create(tmp_path / "runs", "empty", "m")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        RunDirectory.create(tmp_path / "runs", "a-file", "m")
    assert (tmp_path / "runs" / "a-file").read_text() == "mine"


def test_a_start_that_failed_can_be_tried_again_by_the_same_thread_only(tmp_path, digit_folder):
    """The empty folder of a failed ``tg.fit`` stays until the process exits; the thread
    that made it (its run is over) may use it again, any other thread is refused."""
    import torchgraft as tg
    from torchgraft.engine.console import RunConsole
    from torchgraft.errors import DataError

    broken = digit_folder / "2" / "notes.png"
    broken.write_text("this is not a picture")  # found after the run folder is made
    config = tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1})
    with pytest.raises(DataError, match=r"notes\.png"):
        tg.fit(config, console=RunConsole(quiet=True))
    folder = tmp_path / "runs" / "run"
    assert list(folder.iterdir()) == []
    (elsewhere,) = race(1, lambda: RunDirectory.create(folder.parent, "run", "m"))
    assert isinstance(elsewhere, ConfigError)  # another thread: maybe another run's folder
    broken.unlink()
    assert tg.fit(config, console=RunConsole(quiet=True)).dir == folder


GATE = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    from handmade_models import TinyCNN

    def gated(gate):
        "TinyCNN, once both runs have got this far (their run folders made) or one has ended."
        gate = Path(gate)
        (gate / f"arrived-{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list(gate.glob("arrived-*"))) >= 2 or (gate / "release").exists():
                break
            time.sleep(0.02)
        return TinyCNN()
    """
)


@pytest.mark.slow
def test_two_train_processes_with_one_output_name_never_share_the_folder(
    console_script, subprocess_env, tmp_path, digit_folder
):
    """Both are held where the model is built, after their run folders are made and before
    anything is written, so without an exclusive folder both would train into it."""
    (tmp_path / "gate_models.py").write_text(GATE)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = dict(subprocess_env, PYTHONPATH=f"{tmp_path}:{subprocess_env['PYTHONPATH']}")
    model = {"name": "gate_models:gated", "kwargs": {"gate": str(gate)}}
    runs = {}
    for seed, epochs in ((11, 1), (22, 2)):
        config = tiny_config(digit_folder, tmp_path / "runs", model=model)
        config["train"].update(seed=seed, epochs=epochs)
        path = tmp_path / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump(config))
        runs[seed] = subprocess.Popen(
            [*console_script, "train", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    while all(p.poll() is None for p in runs.values()):
        time.sleep(0.05)
    (gate / "release").touch()  # one has ended: the other need not wait for it
    done = {seed: (p, *p.communicate(timeout=300)) for seed, p in runs.items()}
    winners = [seed for seed, (p, _, _) in done.items() if p.returncode == 0]
    assert len(winners) == 1, {s: (p.returncode, err[-500:]) for s, (p, _, err) in done.items()}
    (loser,) = set(done) - set(winners)
    process, out, err = done[loser]
    folder = tmp_path / "runs" / "run"
    assert process.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"output.name: {folder} already" in lines[0]
    assert "Traceback" not in err
    assert str(folder) not in out  # the loser never said it trains there
    # Every file in the folder is the winner's: its config, its epochs, its model and state.
    seed = winners[0]
    epochs = {11: 1, 22: 2}[seed]
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert (saved["train"]["seed"], saved["train"]["epochs"]) == (seed, epochs)
    state = json.loads((folder / "state" / "last.json").read_text())
    assert state["epoch"] == epochs - 1
    with (folder / "metrics.csv").open() as handle:
        assert {int(row["epoch"]) for row in csv.DictReader(handle)} == set(range(epochs))
    assert json.loads((folder / "model.json").read_text())["epoch"] < epochs
    assert sorted(p.name for p in tmp_path.joinpath("runs").iterdir()) == ["run"]


@pytest.mark.slow
def test_a_start_that_fails_removes_the_folder_it_made_so_the_command_can_be_rerun(
    console_script, subprocess_env, tmp_path, digit_folder
):
    broken = digit_folder / "2" / "notes.png"
    broken.write_text("this is not a picture")  # found after the run folder is made
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(digit_folder, tmp_path / "runs")))
    failed = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert failed.returncode == 2
    assert "notes.png" in failed.stderr
    # No empty runs/run left behind, nor the runs/ folder the failed start made for it.
    assert not (tmp_path / "runs").exists()
    broken.unlink()
    again = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "runs" / "run" / "model.safetensors").is_file()
