"""Exported programs are code: a TorchScript or ``.pt2`` file is loaded only when the caller
opts in by name (``trust=True``, ``predict --trust-export``), and refused *before* its loader
sees it — a sidecar whose sha256 matches proves the file is the one it describes, not who
made it. ONNX, a graph of standard operators run by onnxruntime, needs no opt-in.

No training here: the exports are a traced TinyCNN, bytes that no loader may touch, and an
ONNX graph written with ``onnx.helper``, each with a sidecar written by hand.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from handmade_models import TinyCNN
from support import export_sidecar, write_digit_folder
from torchgraft.checkpoint.write import sha256_file
from torchgraft.cli.main import main
from torchgraft.engine.export import load as exported
from torchgraft.engine.export.load import UntrustedExportError, load_exported, sidecar_path
from torchgraft.engine.inference import image_files, load_for_prediction, predict_files
from torchgraft.errors import CheckpointError

#: The loader each code format would call.
LOADER = {"torchscript": "torch.jit.load", "pt2": "torch.export.load"}


def write_sidecar(path: Path, fmt: str) -> Path:
    """A valid sidecar for ``path`` as ``fmt`` (3 classes, 16 px): its sha256 matches."""
    sidecar_path(path).write_text(json.dumps(export_sidecar(path, fmt)))
    return path


@pytest.fixture
def loader_calls(monkeypatch) -> list[str]:
    """torch.jit.load and torch.export.load replaced by functions that record the call and
    raise: a test sees whether a loader was reached, and nothing is ever loaded."""
    calls: list[str] = []

    def recorder(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return load

    monkeypatch.setattr(torch.jit, "load", recorder("torch.jit.load"))
    monkeypatch.setattr(torch.export, "load", recorder("torch.export.load"))
    return calls


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("torchscript", "model.ts.pt"),
        ("pt2", "model.pt2"),
        ("pt2", "named-like.onnx"),  # the sidecar picks the loader, so it decides, not the name
    ],
)
def test_code_exports_are_refused_before_their_loader_runs(
    tmp_path, loader_calls, capsys, monkeypatch, fmt, name
):
    path = tmp_path / name
    path.write_bytes(b"a crafted program")
    write_sidecar(path, fmt)  # a crafted sidecar: its sha256 matches the file
    hashed: list[Path] = []
    monkeypatch.setattr(exported, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))

    with pytest.raises(UntrustedExportError) as refused:
        load_exported(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: not loaded")
    assert "is code that can run anything when it is loaded" in message
    assert f"the sha256 in {name}.json only proves the file matches its sidecar" in message
    assert "load it with trust=True" in message  # the Python caller's words
    assert 'export the run to ONNX (export_run(run, "onnx"))' in message
    assert isinstance(refused.value, CheckpointError)
    assert refused.value.exit_code == 2
    with pytest.raises(UntrustedExportError):
        load_for_prediction(path)

    image = write_digit_folder(tmp_path / "digits", classes=(0,), per_class=1) / "0"
    assert main(["predict", str(path), str(image)]) == 2
    error = capsys.readouterr().err
    assert "load it with --trust-export" in error  # the command line's words
    assert "torchgraft export RUN_DIR --format onnx" in error
    assert loader_calls == []  # refused before torch.jit.load / torch.export.load
    assert hashed == []  # ...and before the file is even read

    # Opting in reaches the loader, and only after the sha256 was checked.
    with pytest.raises(CheckpointError, match=f"cannot load it as {fmt} \\(AssertionError"):
        load_exported(path, trust=True)
    assert loader_calls == [LOADER[fmt]]
    assert hashed == [path]
    path.write_bytes(b"a crafted program, changed")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_for_prediction(path, trust=True)
    assert loader_calls == [LOADER[fmt]]


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
    reason='the [onnx] extra is not installed (pip install "torchgraft[onnx]")',
)
def test_onnx_exports_need_no_opt_in(tmp_path, loader_calls, capsys):
    import onnx
    from onnx import TensorProto, helper

    # logits = the mean of each channel: (batch, 3, 16, 16) -> (batch, 3)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["logits"], axes=[2, 3], keepdims=0)],
        "channel_means",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    write_sidecar(path, "onnx")
    data = write_digit_folder(tmp_path / "digits", per_class=2)

    model = load_exported(path)
    assert model.format == "onnx"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), x.mean(dim=(2, 3)))
    predictions = predict_files(load_for_prediction(path), image_files([data]), topk=1)
    assert len(predictions) == 6
    assert all(p.error is None for p in predictions)
    assert main(["predict", str(path), str(data / "1"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    assert loader_calls == []


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated in 2.14
def test_predict_cli_needs_trust_export_for_torchscript(
    tmp_path, console_script, subprocess_env, capsys
):
    """The installed command refuses a real TorchScript export with exit 2 and the reason;
    with --trust-export it predicts (in this process: a second subprocess would only cost
    torch's import time again)."""
    model = TinyCNN(num_classes=3).eval()
    path = tmp_path / "shipped" / "model.ts.pt"
    path.parent.mkdir()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 16, 16)), str(path))
    write_sidecar(path, "torchscript")
    images = write_digit_folder(tmp_path / "digits", classes=(1,), per_class=3) / "1"
    argv = ["predict", str(path), str(images), "--json"]

    refused = subprocess.run(
        [*console_script, *argv], capture_output=True, text=True, env=subprocess_env, timeout=300
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"torchgraft predict: error: {path}: not loaded")
    assert "TorchScript" in refused.stderr
    assert "can run anything" in refused.stderr
    assert "load it with --trust-export" in refused.stderr

    assert main([*argv, "--trust-export"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert [Path(p["path"]).parent for p in predictions] == [images] * 3
    assert all(len(p["top"]) == 3 for p in predictions)
