"""``torchgraft models`` and ``torchgraft inspect``, run as real subprocesses of the console
script: output documents, checkpoint formats, safety against code in pickles, error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None):
    # One OpenMP thread: on two shared cores, intra-op threads mostly wait on each other.
    env = {"OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env},
        cwd=cwd,
    )


def _one_error_line(result) -> str:
    """The contract for bad input: status 2, nothing on stdout, one line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _tensors(document) -> dict[str, tuple[list[int], str]]:
    return {t["key"]: (t["shape"], t["dtype"]) for t in document["tensors"]}


# --------------------------------------------------------------------------- models


@pytest.mark.slow
def test_models_filter_lists_both_libraries_with_heads(console_script):
    result = _run([*console_script, "models", "--filter", "resnet18"])
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 3:
            rows[cells[0]] = cells[1]
    assert rows["torchvision:resnet18"] == "fc"
    assert rows["timm:resnet18"] == "fc"
    assert all("resnet18" in spec for spec in rows)


@pytest.mark.slow
def test_models_json_is_one_document(console_script):
    result = _run([*console_script, "models", "--filter", "RESNET18", "--json"])
    assert result.returncode == 0, result.stderr
    entries = {e["spec"]: e for e in json.loads(result.stdout)}
    assert entries["torchvision:resnet18"]["head_paths"] == ["fc"]
    assert "IMAGENET1K_V1" in entries["torchvision:resnet18"]["weights"]
    assert entries["timm:resnet18"]["head_paths"] == ["fc"]
    assert "a1_in1k" in entries["timm:resnet18"]["weights"]
    assert all("resnet18" in spec for spec in entries)


@pytest.mark.slow
def test_models_library_filter(console_script):
    result = _run(
        [*console_script, "models", "--library", "timm", "--filter", "resnet18", "--json"]
    )
    assert result.returncode == 0, result.stderr
    specs = [e["spec"] for e in json.loads(result.stdout)]
    assert "timm:resnet18" in specs
    assert all(spec.startswith("timm:") for spec in specs)


# --------------------------------------------------------------------------- inspect a model


@pytest.mark.slow
def test_inspect_model_spec_json(console_script):
    result = _run([*console_script, "inspect", "torchvision:vgg11", "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    with torch.device("meta"):  # shapes only: no memory, no random init
        reference = torchvision.models.vgg11()
    expected = sum(p.numel() for p in reference.parameters())
    assert expected == 132_863_336
    assert doc["kind"] == "model"
    assert doc["spec"]["head_paths"] == ["classifier.6"]
    assert doc["spec"]["num_classes"] == 1000
    assert doc["spec"]["feature_dim"] == 4096
    assert doc["spec"]["layer_groups"][-1]["name"] == "head"
    assert doc["num_parameters"] == expected
    assert sum(doc["group_parameters"].values()) == expected
    assert doc["group_parameters"]["head"] == 4096 * 1000 + 1000
    assert [e["key"] for e in doc["state_dict"]] == list(reference.state_dict())


@pytest.mark.slow
def test_inspect_model_spec_table(console_script):
    result = _run([*console_script, "inspect", "torchvision:squeezenet1_1"])
    assert result.returncode == 0, result.stderr
    assert "classifier.1" in result.stdout
    assert "layer groups" in result.stdout


@pytest.mark.slow
def test_inspect_unknown_model_spec_suggests(console_script):
    line = _one_error_line(_run([*console_script, "inspect", "torchvision:resnt50"]))
    assert "did you mean" in line
    assert "'torchvision:resnet50'" in line


# --------------------------------------------------------------------------- inspect files

STATE = {
    "layer.weight": torch.randn(3, 4),
    "layer.bias": torch.zeros(3, dtype=torch.float16),
    "steps": torch.tensor(5),
}
EXPECTED = {
    "layer.weight": ([3, 4], "float32"),
    "layer.bias": ([3], "float16"),
    "steps": ([], "int64"),
}


def test_inspect_torch_state_dict(console_script, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(STATE, path)
    result = _run([*console_script, "inspect", str(path), "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "checkpoint"
    assert doc["format"] == "torch"
    assert doc["container"] is None
    assert _tensors(doc) == EXPECTED
    assert [t["key"] for t in doc["tensors"]] == list(STATE)  # stored order
    assert doc["num_tensors"] == 3
    assert doc["num_elements"] == 12 + 3 + 1
    assert doc["bytes"] == 12 * 4 + 3 * 2 + 8


@pytest.mark.slow
def test_inspect_training_container(console_script, tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": STATE, "epoch": 3, "optimizer_name": "sgd"}, path)
    result = _run([*console_script, "inspect", str(path), "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["container"] == "state_dict"
    assert _tensors(doc) == EXPECTED
    assert set(doc["set_aside"]) == {"epoch", "optimizer_name"}
    assert "3" in doc["set_aside"]["epoch"]

    table = _run([*console_script, "inspect", str(path)])
    assert table.returncode == 0, table.stderr
    assert "layer.weight" in table.stdout
    assert "state_dict" in table.stdout
    assert "epoch" in table.stdout


def test_inspect_safetensors(console_script, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(
        {"b.weight": torch.ones(2, 5, dtype=torch.bfloat16), "a.bias": torch.zeros(7)},
        str(path),
        metadata={"format": "pt"},
    )
    result = _run([*console_script, "inspect", str(path), "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "safetensors"
    assert _tensors(doc) == {"b.weight": ([2, 5], "bfloat16"), "a.bias": ([7], "float32")}
    assert doc["metadata"]["format"] == "pt"


def test_inspect_hugging_face_folder(console_script, tmp_path):
    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Net"]}')
    save_file({"encoder.weight": torch.randn(4, 2)}, str(folder / "model.safetensors"))
    result = _run([*console_script, "inspect", str(folder), "--json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "hf-folder"
    assert _tensors(doc) == {"encoder.weight": ([4, 2], "float32")}


PAYLOAD = """
from pathlib import Path


def make_marker(path):
    Path(path).write_text("code from the checkpoint ran")


class Config:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (make_marker, (self.path,))
"""


def test_inspect_never_runs_code_from_a_pickle(console_script, tmp_path, monkeypatch):
    module = f"tg_payload_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = __import__(module)
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "cfg": payload.Config(str(marker))}, path)
    assert not marker.exists()

    # The payload module is importable by the subprocess: only refusing to unpickle saves us.
    result = _run(
        [*console_script, "inspect", str(path), "--json"], env={"PYTHONPATH": str(tmp_path)}
    )
    line = _one_error_line(result)
    assert not marker.exists()
    assert "evil.pt" in line
    assert f"{module}.make_marker" in line

    # Control: the file really is an exploit when loaded unsafely.
    torch.load(path, weights_only=False)
    assert marker.exists()
    sys.modules.pop(module, None)


def _truncated(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(64, 64)}, whole)
    data = whole.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_bad_files_give_one_line_and_status_2(console_script, tmp_path, kind):
    if kind == "empty":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = _truncated(tmp_path)
    else:
        path = tmp_path / "notes.bin"
        path.write_text("these are my notes, not a checkpoint\n" * 20)
    line = _one_error_line(_run([*console_script, "inspect", str(path), "--json"]))
    assert path.name in line


def test_debug_shows_the_traceback(console_script, tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    result = _run([*console_script, "inspect", "--debug", str(path)])
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "CheckpointError" in result.stderr


def test_debug_before_the_subcommand_shows_the_traceback(console_script, tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    result = _run([*console_script, "--debug", "inspect", str(path)])
    assert "Traceback" in result.stderr
