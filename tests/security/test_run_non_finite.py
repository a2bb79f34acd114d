"""Non-finite numbers in a run: an absurd learning rate stops the run within a few steps,
naming the step, and saves nothing poisoned; normalisation that would make the inputs
infinite is refused before training. (A NaN from the model's forward pass at a given step:
tests/engine/test_fit.py::test_a_nan_loss_names_the_step_and_the_last_good_epoch_stays.)"""

from __future__ import annotations

import re

import pytest

import torchgraft as tg
from support import tiny_config
from torchgraft.engine.console import RunConsole
from torchgraft.errors import ConfigError, TrainingError

QUIET = RunConsole(quiet=True)


def test_an_absurd_learning_rate_stops_within_a_few_steps_naming_the_step(digit_folder, tmp_path):
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        optim={"lr": 1e6, "momentum": 0.0},
        schedule={"name": "constant"},
        train={"epochs": 3, "label_smoothing": 0.0},
    )
    with pytest.raises(TrainingError) as stopped:
        tg.fit(config, console=QUIET)
    message = str(stopped.value)
    step = re.search(r"at epoch (\d+), step (\d+)", message)
    assert step, message
    assert int(step.group(1)) == 1
    assert int(step.group(2)) <= 4  # within a few steps (4 batches per epoch here)
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "model.safetensors").exists()  # nothing poisoned was saved
    assert not (run_dir / "state" / "last.json").exists()


@pytest.mark.parametrize("std", [[0.0, 0.0, 0.0], [float("nan")] * 3, [float("inf")] * 3])
def test_normalisation_that_makes_inputs_non_finite_is_refused(digit_folder, tmp_path, std):
    config = tiny_config(digit_folder, tmp_path / "runs", data={"std": std})
    with pytest.raises(ConfigError, match=r"data\.std"):
        tg.fit(config, console=QUIET)
