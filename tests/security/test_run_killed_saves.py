"""SIGKILL during a save: the previous model and resume state still load, a temporary file
is never taken for a saved one, and the next start removes the temporaries.

A real child process saves a large model and resume state in a loop (each save writes a
temporary file, flushes it and renames it; see ``torchgraft/atomic.py``) and is killed at
arbitrary moments, several times; after each kill the invariant is checked. The byte-level
guarantee of one atomic write is tests/test_atomic.py::test_sigkill_mid_write_leaves_old_content_or_nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

import torchgraft as tg
from support import tiny_config
from torchgraft.engine.artifacts import read_model_document
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import clean_temporaries, load_state

#: 8 M floats: 32 MB per file, so that a kill lands inside a write often.
SAVER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from torchgraft.engine.artifacts import save_model
    from torchgraft.engine.resume import save_state
    from torchgraft.model.spec import LayerGroup, ModelSpec
    folder, start = Path(sys.argv[1]), int(sys.argv[2])
    spec = ModelSpec("torchvision:resnet18", 2, ("fc",), 512, "conv1", 3,
                     (LayerGroup("head", ("fc",)),), classes=("a", "b"))
    record = {  # a valid record (each read checks it), numbered by "epoch"
        "spec": spec.to_dict(), "classes": ["a", "b"], "ema": False,
        "preprocessing": spec.to_dict()["preprocessing"], "metrics": {},
        "build": {"model": "torchvision:resnet18", "kwargs": {}, "in_chans": None,
                  "num_classes": 2, "head": {"dropout": None, "hidden": None}},
    }
    state = {"optimizer": {}, "scheduler": {}, "step": 0, "lr_trace": [], "history": [],
             "policies": [], "stage_steps": [], "best": {}, "stale": 0, "rng": {},
             "fingerprint": {"build": {}, "classes": [], "keys": {}}}
    for i in range(start, start + 10_000):
        weights = {"w": torch.full((8 << 20,), float(i))}
        save_model(folder, weights, {**record, "epoch": i})
        save_state(folder, i, {**state, "model": weights})
        print(i, flush=True)
    """
)


def check_saved(folder, at_least: int) -> int:
    """The saved model and state load, are each one complete save, and none is older than
    the last save the child reported. Returns the model's save number."""
    with warnings.catch_warnings():  # a sidecar one save behind warns; the weights' record wins
        warnings.simplefilter("ignore")
        document, weights = read_model_document(folder, trust_run=True)
    assert weights.name == "model.safetensors"
    tensor = load_file(weights)["w"]
    assert torch.all(tensor == document["epoch"]), "a model file mixing two saves"
    assert document["epoch"] >= at_least
    state = load_state(folder)
    assert torch.all(state["model"]["w"] == state["epoch"])
    assert state["epoch"] >= at_least
    return document["epoch"]


@pytest.mark.slow
def test_sigkill_at_random_moments_of_large_saves_leaves_a_loadable_checkpoint(
    tmp_path, subprocess_env
):
    folder = tmp_path / "run"
    folder.mkdir()
    rng = random.Random(0)
    done, saw_temporaries = -1, 0
    # At least 5 kills, and on until 2 of them landed inside a write (about 40 % of the time
    # a save loop has a temporary file open; how the kills fall depends on the machine's
    # load, so the count of kills does, not the proof).
    for kill in range(40):
        if kill >= 5 and saw_temporaries >= 2:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(folder), str(done + 1)],
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env,
        )
        try:
            reported = int(child.stdout.readline())  # one whole save happened
            time.sleep(rng.uniform(0.0, 0.6))  # then kill somewhere in the next ones
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
        temporaries = list(folder.glob(".*.tmp")) + list((folder / "state").glob(".*.tmp"))
        saw_temporaries += bool(temporaries)
        # the model may be one save ahead of the state (killed between the two): the next
        # child numbers its saves after the newest file
        done = check_saved(folder, at_least=reported)
        assert len(list((folder / "state").glob("epoch-*.pt"))) <= 2
    assert saw_temporaries >= 2, "no kill landed inside a write: the test proved nothing"
    clean_temporaries(folder)
    assert not list(folder.rglob(".*.tmp"))
    check_saved(folder, at_least=reported)


def test_resume_removes_the_temporaries_a_killed_run_left(digit_folder, tmp_path):
    quiet = RunConsole(quiet=True)
    run = tg.fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}), console=quiet)
    left = [
        run.dir / ".model.safetensors.x1.tmp",
        run.dir / ".model.json.x2.tmp",
        run.dir / "state" / ".epoch-0001.pt.x3.tmp",
    ]
    for path in left:
        path.write_bytes(b"half a save")
    # Never taken for the saved files, whatever their names suggest:
    assert read_model_document(run.dir, trust_run=True)[1] == run.dir / "model.safetensors"
    assert load_state(run.dir)["epoch"] == 0
    tg.fit(None, ["--train.epochs", "2"], resume=run.dir, console=quiet, trust_run=True)
    assert not any(path.exists() for path in left)
    assert load_state(run.dir)["epoch"] == 1
