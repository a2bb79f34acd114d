"""``torchgraft inspect CHECKPOINT`` names the architecture the checkpoint comes from."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

ARCHS = "torchvision:resnet18,torchvision:resnet34"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A fresh index cache with two architectures; one thread (two shared cores)."""
    return {
        **os.environ,
        "TORCHGRAFT_CACHE_DIR": str(tmp_path / "cache"),
        "TORCHGRAFT_IDENTIFY_ARCHS": ARCHS,
        "OMP_NUM_THREADS": "1",
    }


def _run(argv, env):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)


@pytest.fixture
def wrapped_resnet18(tmp_path):
    """A DataParallel-style state_dict of a real resnet18 (``module.`` prefixes)."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path


def test_inspect_names_the_architecture(console_script, env, wrapped_resnet18, tmp_path):
    env = {**env, "TORCHGRAFT_TABLES_DIR": ""}  # no shipped tables: the index is built
    first = _run([*console_script, "inspect", str(wrapped_resnet18)], env)
    assert first.returncode == 0, first.stderr
    line = next(x for x in first.stdout.splitlines() if x.startswith("architecture: "))
    assert line == (
        "architecture: torchvision:resnet18 — 122/122 keys and shapes "
        "(read 'module.conv1.weight' as 'conv1.weight')"
    )
    # The index is built once (said on stderr), then read.
    assert "indexing 2 torchvision architectures" in first.stderr
    again = _run([*console_script, "inspect", "--json", str(wrapped_resnet18)], env)
    assert again.returncode == 0, again.stderr
    assert "indexing" not in again.stderr
    found = json.loads(again.stdout)["architecture"]
    assert found["exact"] == "torchvision:resnet18"
    assert found["exact_all"] == ["torchvision:resnet18"]
    assert found["head"] == "same"
    assert found["candidates"][0]["keys_matched"] == 122


def test_no_identify_skips_it(console_script, env, wrapped_resnet18, tmp_path):
    result = _run(
        [*console_script, "inspect", "--no-identify", "--json", str(wrapped_resnet18)], env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["architecture"] is None
    assert result.stderr == ""
    assert not (tmp_path / "cache").exists()  # nothing indexed


def test_names_from_the_file_are_printed_as_text(console_script, env, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(
        {"[bold red]x[/bold red].weight": torch.zeros(2), "\x1b[2Jclear": torch.ones(3)}, path
    )
    result = _run([*console_script, "inspect", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert "[bold red]x[/bold red].weight" in result.stdout  # shown, not interpreted
    assert "\\x1b[2Jclear" in result.stdout  # escaped, not sent to the terminal
    assert "\x1b" not in result.stdout
    assert "architecture: not identified" in result.stdout


def test_a_cold_cache_identifies_in_the_whole_zoo_from_the_shipped_tables(
    console_script, env, tmp_path
):
    """The package's tables of the installed timm and torchvision: a first inspect with an
    empty cache searches every architecture without building one (nothing said about
    indexing) and names all builders of an equal table."""
    env = {
        k: v
        for k, v in env.items()
        if k not in ("TORCHGRAFT_IDENTIFY_ARCHS", "TORCHGRAFT_TABLES_DIR")
    }
    path = tmp_path / "convnext.safetensors"
    save_file(timm.create_model("convnext_atto", pretrained=False).state_dict(), path)
    result = _run([*console_script, "inspect", "--json", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert "indexing" not in result.stderr
    found = json.loads(result.stdout)["architecture"]
    assert "timm:convnext_atto" in found["exact_all"]
    assert found["unindexed"] == 0
