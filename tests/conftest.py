"""Shared test setup: markers, determinism, and an isolated weights cache per test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$TORCH_HOME``: torchvision's weight cache lives in ``hub/checkpoints``."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def console_script() -> list[str]:
    """The installed ``torchgraft`` console script (the real entry point users run)."""
    script = shutil.which("torchgraft") or str(Path(sys.executable).parent / "torchgraft")
    if not os.path.exists(script):
        pytest.fail("the torchgraft console script is not installed; pip install -e .[test]")
    return [script]
