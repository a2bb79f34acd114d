"""Shared helpers for the graft tests: tiny real models and bitwise snapshots.

Expected values in these tests are written by hand or computed with plain torch, never by
the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace

import pytest
import torch
from torch import nn

F32 = "torch.float32"
I64 = "torch.int64"


class TinyNet(nn.Module):
    """conv-bn-relu, conv-bn-relu, pool, fc: a classifier small enough for every test."""

    def __init__(self, num_classes: int = 3, in_chans: int = 3, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Fill every floating tensor (parameters and BN statistics) with seeded random values;
    running variances stay positive and counters get a distinctive value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                if key.endswith("running_var"):
                    value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
                else:
                    value.copy_(torch.randn(value.shape, generator=generator))
            elif key.endswith("num_batches_tracked"):
                value.fill_(seed + 7)
    return model


def snapshot(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().clone() for k, v in state.items()}


def assert_bitwise_equal(
    actual: nn.Module | Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    state = actual.state_dict() if isinstance(actual, nn.Module) else actual
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), f"{key} changed"


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The helpers above, for test modules (session scope: usable with hypothesis)."""
    return SimpleNamespace(
        F32=F32,
        I64=I64,
        TinyNet=TinyNet,
        randomize=randomize,
        snapshot=snapshot,
        assert_bitwise_equal=assert_bitwise_equal,
    )


@pytest.fixture
def tiny() -> Callable[..., TinyNet]:
    """Factory: ``tiny(num_classes=3, in_chans=3, seed=None)`` -> a TinyNet (random if seeded)."""

    def make(num_classes: int = 3, in_chans: int = 3, seed: int | None = None) -> TinyNet:
        model = TinyNet(num_classes, in_chans)
        return randomize(model, seed) if seed is not None else model

    return make
