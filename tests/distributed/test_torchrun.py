"""`train` under torchrun with real processes (gloo on this CPU): what two processes train
is what one process trains with the same global batch and seed; one run directory; each
process sees its own part of every batch, a new order each epoch; a process killed with
SIGKILL is restarted by torchrun and the run ends where an uninterrupted one ends; the
linear probe's feature cache is computed in shares and frozen BatchNorm stays frozen.

The model (tests/handmade_models.py TinyCNN with ``record=``) writes what each process fed it
and the digest of the weights it held, so these tests observe the processes from the
model's side, not through torchgraft's own bookkeeping.

Tolerance: two processes average two half-batch gradients where one process takes the mean
of the whole batch; the sums differ in rounding only. Weights agree within 1e-5 (absolute)
after 4 epochs; in practice the difference is ~1e-7.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import load_state

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
EPOCHS = 4


def config_for(images: Path, out: Path, record: Path, **sections) -> dict:
    """TinyCNN without BatchNorm and dropout: nothing differs between one process and two
    but the order of float additions."""
    model = {"kwargs": {"dropout": 0.0, "norm": False, "record": str(record)}}
    model["kwargs"].update(sections.pop("kwargs", {}))
    train = {"epochs": EPOCHS, **sections.pop("train", {})}
    config = tiny_config(images, out, model=model, train=train, data={"batch_size": 8}, **sections)
    config["output"]["name"] = None  # a stamped folder, as a user's run gets
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def records(prefix: Path, rank: int) -> list[dict]:
    path = Path(f"{prefix}-{rank}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def training_epochs(lines: list[dict]) -> list[list[list[float]]]:
    """The training batches (image ids) of each epoch: runs of training calls."""
    epochs, current = [], []
    for line in lines:
        if line["training"]:
            current.append(line["images"])
        elif current:
            epochs.append(current)
            current = []
    return epochs


def final_validation(lines: list[dict]) -> dict:
    """The first call after the last training step: the last epoch's validation, run with
    the final weights (later calls, e.g. the report's, may load the best epoch's)."""
    last_training = max(i for i, line in enumerate(lines) if line["training"])
    return lines[last_training + 1]


def run_torchrun(arguments, env, cwd, **kwargs):
    return subprocess.run(
        arguments, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("ddp") / "digits")


@pytest.fixture(scope="module")
def environment() -> dict:
    env = dict(os.environ)
    tests = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def one_process(digits, tmp_path_factory):
    """The reference: the same configuration in this process."""
    folder = tmp_path_factory.mktemp("one")
    config = config_for(digits, folder / "runs", folder / "seen")
    run = tg.fit(config, console=RunConsole(quiet=True))
    return run, folder / "seen"


@pytest.fixture(scope="module")
def two_processes(digits, environment, tmp_path_factory):
    """`torchgraft train --nproc 2`: torch's launcher, two processes, gloo."""
    folder = tmp_path_factory.mktemp("two")
    path = write_config(folder / "run.yaml", config_for(digits, folder / "runs", folder / "seen"))
    script = str(Path(sys.executable).parent / "torchgraft")
    done = run_torchrun(
        [script, "train", "--nproc", "2", "--config", str(path)], environment, folder
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done, folder


def test_one_run_directory_and_one_voice(two_processes):
    done, folder = two_processes
    runs = list((folder / "runs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "torchrun.json").read_text())
    assert record["world"] == 2
    assert done.stdout.count("epoch 1:") == 1  # rank 0 alone prints
    assert "2 processes (gloo), global batch 8" in done.stdout
    assert load_state(runs[0])["epoch"] == EPOCHS - 1


def test_each_process_trains_its_part_of_the_one_process_batches(two_processes, one_process):
    _, folder = two_processes
    ranks = [training_epochs(records(folder / "seen", rank)) for rank in (0, 1)]
    alone = training_epochs(records(one_process[1], 0))
    assert len(ranks[0]) == len(ranks[1]) == len(alone) == EPOCHS
    orders = []
    for epoch in range(EPOCHS):
        first, second = ranks[0][epoch], ranks[1][epoch]
        assert len(first) == len(second) == len(alone[epoch])  # the same optimizer steps
        for part0, part1, whole in zip(first, second, alone[epoch], strict=True):
            assert len(part0) == len(part1)  # equal parts: DDP's average is the batch mean
            assert Counter(part0 + part1) == Counter(whole)  # together: the global batch
        seen0 = Counter(i for batch in first for i in batch)
        seen1 = Counter(i for batch in second for i in batch)
        everything = Counter(i for batch in alone[epoch] for i in batch)
        assert seen0 + seen1 == everything  # every training image once, none twice
        orders.append([i for batch in first for i in batch])
    assert len({tuple(order) for order in orders}) == EPOCHS  # a new order every epoch


def test_both_processes_end_with_identical_weights(two_processes):
    _, folder = two_processes
    last = [final_validation(records(folder / "seen", rank)) for rank in (0, 1)]
    assert last[0]["weights"] == last[1]["weights"]


def test_two_processes_match_one_within_the_tolerance(two_processes, one_process):
    _, folder = two_processes
    run_dir = next((folder / "runs").iterdir())
    two = load_state(run_dir)["model"]
    one = load_state(one_process[0].dir)["model"]
    assert two.keys() == one.keys()
    for key in one:
        assert torch.allclose(two[key], one[key], rtol=0, atol=TOLERANCE), key
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    alone = one_process[0].history
    for row, reference in zip(rows, alone, strict=True):
        assert row["split"] == reference["split"]
        if row["split"] == "val":  # each validation image counted once, on every process
            assert row["count"] == reference["count"] == 6
        assert row["loss"] == pytest.approx(reference["loss"], abs=1e-5)
        assert row["acc1"] == pytest.approx(reference["acc1"], abs=1e-9)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> str | None:
    try:
        variables = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for variable in variables:
        if variable.startswith(b"RANK="):
            return variable[5:].decode()
    return None


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def kill_rank_1_after_the_first_checkpoint(arguments, environment, folder):
    """Start torchrun with ``arguments``, SIGKILL rank 1 once the first epoch is saved, and
    return torchrun's status and output."""
    launcher = subprocess.Popen(
        arguments,
        env=environment,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((folder / "runs").glob("*/state/last.json")):
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victims = [pid for pid in _children(launcher.pid) if _rank_of(pid) == "1"]
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        out, err = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    said = "\n".join(line for line in err.splitlines() if not line.startswith((" ", "[rank")))
    return launcher.returncode, out, said


def assert_ends_as_uninterrupted(folder, two_processes):
    runs = list((folder / "runs").iterdir())
    assert len(runs) == 1  # the resumed run continued in the same folder
    reference = load_state(next((two_processes[1] / "runs").iterdir()))["model"]
    final = load_state(runs[0])
    assert final["epoch"] == EPOCHS - 1
    for key, tensor in reference.items():
        assert torch.equal(final["model"][key], tensor), key


def test_a_process_killed_mid_run_is_restarted_and_the_run_ends_as_if_it_was_not(
    two_processes, digits, environment, tmp_path
):
    """torchrun --max-restarts 1 -m torchgraft train: SIGKILL to rank 1 after the first
    checkpoint; torchrun restarts both processes, which resume from the last complete epoch
    in the same run directory and end with the uninterrupted run's weights, bitwise."""
    config = config_for(digits, tmp_path / "runs", tmp_path / "seen", kwargs={"delay": 0.15})
    path = write_config(tmp_path / "run.yaml", config)
    command = [*TORCHRUN, "--max-restarts", "1", "-m", "torchgraft", "train", "--config", str(path)]
    status, out, said = kill_rank_1_after_the_first_checkpoint(command, environment, tmp_path)
    assert status == 0, out[-2000:] + said[-4000:]
    assert out.index("(resumed)") < out.index(f"epoch {EPOCHS}:")  # killed before the end
    assert_ends_as_uninterrupted(tmp_path, two_processes)


def test_resume_under_torchrun_after_a_kill(two_processes, digits, environment, tmp_path):
    """Without restarts the run fails when rank 1 is killed; `torchrun … train --resume
    RUN_DIR` continues it (rank 0 reads the run and hands it to rank 1) to the uninterrupted
    run's weights, bitwise."""
    config = config_for(digits, tmp_path / "runs", tmp_path / "seen", kwargs={"delay": 0.15})
    path = write_config(tmp_path / "run.yaml", config)
    command = [*TORCHRUN, "-m", "torchgraft", "train", "--config", str(path)]
    status, out, said = kill_rank_1_after_the_first_checkpoint(command, environment, tmp_path)
    assert status != 0
    assert "(resumed)" not in out
    assert "internal error" not in said  # the survivor says it lost its peer
    run_dir = next((tmp_path / "runs").iterdir())
    done = run_torchrun(
        [*TORCHRUN, "-m", "torchgraft", "train", "--resume", str(run_dir), "--trust-run"],
        environment,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "(resumed)" in done.stdout
    assert_ends_as_uninterrupted(tmp_path, two_processes)


def test_linear_probe_cache_in_shares_and_frozen_batchnorm(digits, environment, tmp_path):
    """The console script under torchrun; a linear probe on cached features (BatchNorm in the
    frozen body): the gathered cache trains the head as one process does, and the frozen
    statistics do not move."""
    sections = {
        "kwargs": {"norm": True},
        "freeze": {"policy": "head", "bn": "frozen"},
        "train": {"epochs": 3, "feature_cache": True},
    }
    one = config_for(digits, tmp_path / "one", tmp_path / "seen-one", **dict(sections))
    reference = tg.fit(one, console=RunConsole(quiet=True))
    two = config_for(digits, tmp_path / "two", tmp_path / "seen-two", **dict(sections))
    path = write_config(tmp_path / "probe.yaml", two)
    script = str(Path(sys.executable).parent / "torchgraft")
    done = run_torchrun(
        [*TORCHRUN, script, "train", "--config", str(path)],
        environment,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    count = sum(1 for _ in digits.rglob("*.png"))
    assert f"feature cache: {count:,} images" in done.stdout  # every image, once
    assert "(cached features)" in done.stdout
    result = load_state(next((tmp_path / "two").iterdir()))["model"]
    expected = load_state(reference.dir)["model"]
    for key, tensor in expected.items():
        if key.endswith("running_mean"):  # frozen statistics: as built, untouched
            assert torch.equal(result[key], torch.zeros_like(tensor)), key
            assert torch.equal(tensor, result[key]), key
        elif key.endswith("running_var"):
            assert torch.equal(result[key], torch.ones_like(tensor)), key
        elif key.endswith("num_batches_tracked"):
            assert int(result[key]) == 0, key
        else:
            assert torch.allclose(result[key], tensor, rtol=0, atol=TOLERANCE), key


def test_adapters_train_under_torchrun_as_in_one_process(digits, environment, tmp_path):
    """LoRA adapters on TinyCNN's convolutions, two processes against one: the adapters and
    the head train alike, the frozen weights stay, and rank 0 writes the adapters file."""
    sections = {
        "peft": {"method": "lora", "rank": 2, "targets": ["block1.0", "block2.0"]},
        "train": {"epochs": 2},
    }
    one = config_for(digits, tmp_path / "one", tmp_path / "seen-one", **dict(sections))
    reference = tg.fit(one, console=RunConsole(quiet=True))
    two = config_for(digits, tmp_path / "two", tmp_path / "seen-two", **dict(sections))
    path = write_config(tmp_path / "lora.yaml", two)
    script = str(Path(sys.executable).parent / "torchgraft")
    done = run_torchrun([*TORCHRUN, script, "train", "--config", str(path)], environment, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run_dir = next((tmp_path / "two").iterdir())
    assert (run_dir / "adapters.safetensors").exists()
    result = load_state(run_dir)["model"]
    expected = load_state(reference.dir)["model"]
    assert any(".lora_A." in key for key in result)
    for key, tensor in expected.items():
        assert torch.allclose(result[key], tensor, rtol=0, atol=TOLERANCE), key


def test_nproc_reports_the_processes_error_and_status(digits, environment, tmp_path):
    """A mistake every process finds (a global batch 2 processes cannot share) is exit 2 with
    the one-line error of each process, through `train --nproc 2`."""
    config = config_for(digits, tmp_path / "runs", tmp_path / "seen")
    path = write_config(tmp_path / "run.yaml", config)
    script = str(Path(sys.executable).parent / "torchgraft")
    arguments = [script, "train", "--nproc", "2", "--config", str(path), "--data.batch_size", "7"]
    done = run_torchrun(arguments, environment, tmp_path)
    assert done.returncode == 2  # the first process's own status, not torchrun's SIGTERM
    # torchrun stops the other process as soon as one fails: one of them says why
    assert re.search(
        r"torchgraft train( \(rank 1\))?: error: data.batch_size: 7 is the global", done.stderr
    )
    assert "internal error" not in done.stderr
    assert not list((tmp_path / "runs").glob("*"))  # nothing created


def test_a_run_stopped_while_finishing_is_finished_under_torchrun(
    two_processes, environment, tmp_path
):
    """Rank 0 reads phases.json and decides for both processes: they finish the run (test,
    plots, report) and train nothing, with no process left waiting."""
    run_dir = tmp_path / "run"
    shutil.copytree(next((two_processes[1] / "runs").iterdir()), run_dir)
    (run_dir / "phases.json").unlink()
    before = load_state(run_dir)
    done = run_torchrun(
        [*TORCHRUN, "-m", "torchgraft", "train", "--resume", str(run_dir), "--trust-run"],
        environment,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("the run stopped while finishing") == 1  # rank 0 alone speaks
    assert "epoch 1:" not in done.stdout
    assert json.loads((run_dir / "phases.json").read_text())["epochs"] == EPOCHS
    assert load_state(run_dir)["history"] == before["history"]
