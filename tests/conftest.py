"""Shared test setup: markers, determinism, and an isolated weights cache per test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch


def pytest_configure(config):
    # Under pytest-xdist every worker is a process of its own: with torch's default (a thread
    # per core) in each, N workers oversubscribe the cores and OpenMP's spinning threads make
    # every test many times slower. One thread per worker, and for what it starts.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_report_header(config):
    """The CPU kind decides auto precision; tests that compare numbers pin fp32."""
    from torchgraft.engine import runtime

    native = sorted(runtime.FAST_BF16_FLAGS & runtime.cpu_flags()) or ["none"]
    chosen = runtime.auto_precision(torch.device("cpu"))
    return f"torchgraft: native bf16 flags: {', '.join(native)}; auto precision on CPU: {chosen}"


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


@pytest.fixture(scope="session", autouse=True)
def _identify_cache(tmp_path_factory):
    """A private cache and a two-architecture index for every test and its subprocesses.

    ``torchgraft inspect CHECKPOINT`` identifies the architecture from an index that takes
    minutes to build over all of timm; tests must neither wait for it nor write to ``~/.cache``.
    Tests of the identification itself choose their own architectures and folders.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("torchgraft-cache")))
        patch.setenv("TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:resnet18,timm:resnet18")
        yield


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


from support import TESTS, tiny_config, write_digit_folder  # noqa: E402,F401


@pytest.fixture
def digit_folder(tmp_path) -> Path:
    """Three classes of real PNG digits (12 each, 16x16) in class subfolders."""
    return write_digit_folder(tmp_path / "digits")


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for subprocesses: tests/ importable (handmade_models), one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env
