"""Batches a run can afford: what a training step keeps per image is measured on the model
before the first batch, without moving BatchNorm statistics or drawing random numbers, and
a batch whose step cannot fit is refused naming ``data.batch_size``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchgraft as tg
from support import tiny_config
from torchgraft.data import batch_size as batch_module
from torchgraft.engine.batch_memory import saved_bytes_per_image
from torchgraft.engine.console import RunConsole
from torchgraft.engine.runtime import Runtime
from torchgraft.errors import ConfigError

CPU = Runtime(torch.device("cpu"), "fp32", 1, False)


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip


def test_the_measure_counts_what_autograd_keeps_and_grows_with_the_image():
    model = net()
    small = saved_bytes_per_image(model, (3, 16, 16), CPU)
    large = saved_bytes_per_image(model, (3, 32, 32), CPU)
    # at least the convolution's float32 input and its 8-channel output per image
    assert small >= (3 + 8) * 16 * 16 * 4
    assert 3.5 < large / small < 4.5  # four times the pixels, four times the activations


def test_the_measure_changes_nothing_a_run_would_see():
    model = net().train()
    torch.manual_seed(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved_bytes_per_image(model, (3, 16, 16), CPU)
    after_probe = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_probe, torch.rand(3))  # no random numbers drawn
    assert model.training  # the mode is given back
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics did not move


def test_a_batch_whose_step_cannot_fit_is_refused_before_training(
    digit_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(batch_module, "available_memory", lambda: 64 * 2**20)  # 64 MiB
    config = tiny_config(digit_folder, tmp_path, data={"batch_size": 32, "image_size": 128})
    with pytest.raises(ConfigError, match=r"data.batch_size: a batch of \d+ images of 3x128x128"):
        tg.fit(config, console=RunConsole(quiet=True))
    assert not (tmp_path / "run" / "state").exists()  # not one step was taken
