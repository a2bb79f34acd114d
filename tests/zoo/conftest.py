"""Fixtures for the zoo tests."""

from __future__ import annotations

import pytest
import torch

#: The random initialisers of ``torch.nn.init`` that torchvision/timm layers call while
#: being built (``nn.Linear.reset_parameters`` goes through ``init.kaiming_uniform_`` too).
_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


def _zero_(tensor, *args, **kwargs):
    with torch.no_grad():
        return tensor.zero_()


@pytest.fixture
def skip_random_init(monkeypatch):
    """Fill new weights with zeros instead of drawing random numbers.

    Anatomy, head surgery and output shapes do not depend on the values, while drawing them
    dominates building large models on CPU (the torchvision registry file takes ~4.5 min
    with random initialisation, ~2 min without; regnet_y_128gf alone draws 644M numbers).
    Everything else (module classes, shapes, forward code) is the real library's.
    """
    for name in _RANDOM_INITS:
        monkeypatch.setattr(torch.nn.init, name, _zero_)
    torch.set_flush_denormal(True)  # zeros in, no denormal slowdowns out
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def one_torch_thread():
    """Run torch ops on one thread.

    The inputs here are tiny, so intra-op parallelism gains nothing, while on a two-core
    machine shared with other processes every OpenMP barrier can stall on a descheduled
    thread (measured: efficientnet_v2_l at 32x32 took 10.8 s on two threads under load,
    0.2 s on one).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
