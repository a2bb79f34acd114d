"""Tiny real models and a training step shared by the fine-tuning policy tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchgraft as tg


class TinyNet(nn.Module):
    """A plain module torchgraft has never seen: its spec is inferred by a probe."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.block(x).mean((2, 3)))


#: Model name -> builder; every one takes 2x3x32x32 inputs and has 3 or 4 classes.
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: tg.create_model("torchvision:resnet18", num_classes=3),
    "mobilenet_v3_small": lambda: tg.create_model("torchvision:mobilenet_v3_small", num_classes=3),
    "timm_test_efficientnet": lambda: tg.create_model("timm:test_efficientnet", num_classes=3),
    "timm_test_vit": lambda: tg.create_model("timm:test_vit", num_classes=3, img_size=32),
    "plain": TinyNet,
}


@pytest.fixture(params=list(BUILDERS))
def any_model(request) -> nn.Module:
    """Each zoo family once, plus a plain nn.Module."""
    return BUILDERS[request.param]()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.tensor([0, 2])


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, *, none=True) -> None:
    """One real step: forward in train mode, cross-entropy, backward, step, zero_grad."""
    x, y = batch
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=none)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _running_stat_keys(model: nn.Module) -> list[str]:
    roles = ("running_mean", "running_var", "num_batches_tracked")
    return [k for k in model.state_dict() if k.rpartition(".")[2] in roles]


# Helpers are served as fixtures: test modules in folders without __init__.py cannot import
# from conftest reliably.
@pytest.fixture
def build() -> dict[str, Callable[[], nn.Module]]:
    return BUILDERS


@pytest.fixture
def tiny_net() -> type[TinyNet]:
    return TinyNet


@pytest.fixture
def train_step():
    return _train_step


@pytest.fixture
def snapshot():
    return _snapshot


@pytest.fixture
def running_stat_keys():
    return _running_stat_keys
