"""ONNX files that do not fit what their sidecar claims, or fail inside onnxruntime, are typed
errors naming the file — never an "internal error" halfway through a prediction.

Every model here is a real ONNX graph written with ``onnx.helper`` (a few nodes on a
``(batch, 3, 16, 16)`` input, 3 classes), with a sidecar whose sha256 matches it: the sha256
proves the file is the one described, so what is checked is whether the file *is* what the
sidecar describes. Two outcomes, two exit statuses:

* the model declares an interface other than the sidecar's (classes, rank, dtype, outputs,
  input shape, names), or returns an output that does not fit once run: CheckpointError,
  exit 2 — the file is not what it claims, like a file whose sha256 differs;
* the model fits but onnxruntime fails while running it: ExportError, exit 1 — the work was
  attempted and the model failed at it (the rule ``errors.py`` gives exit 1).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from support import export_sidecar, write_digit_folder
from torchgraft.checkpoint.write import sha256_file
from torchgraft.cli.main import main
from torchgraft.engine.export.load import load_exported, sidecar_path
from torchgraft.engine.inference import load_for_prediction
from torchgraft.errors import CheckpointError, ExportError

onnx = pytest.importorskip("onnx", reason='the [onnx] extra is not installed ("torchgraft[onnx]")')
pytest.importorskip("onnxruntime", reason='the [onnx] extra is not installed ("torchgraft[onnx]")')
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F, I64 = TensorProto.FLOAT, TensorProto.INT64
ESC = "\x1b[2J"
BATCH = ["batch", 3, 16, 16]


def value(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def means(output: str = "logits", **attributes) -> onnx.NodeProto:
    """The mean of each channel: (batch, 3, 16, 16) -> (batch, 3)."""
    return helper.make_node(
        "ReduceMean", ["input"], [output], axes=[2, 3], keepdims=0, **attributes
    )


def constant(name: str, values, dtype=None) -> onnx.TensorProto:
    import numpy as np

    return numpy_helper.from_array(np.asarray(values, dtype=dtype or np.float32), name)


def write_model(path: Path, nodes, inputs, outputs, initializers=(), **save) -> Path:
    """An ONNX file of ``nodes`` and a sidecar describing it as a 3-class, 16 px export."""
    graph = helper.make_graph(nodes, "forged", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, **save)
    return write_sidecar(path)


def write_sidecar(path: Path, **changes) -> Path:
    fields = {
        "input": {"name": "input", "shape": BATCH, "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", 3]},
        **changes,
    }
    sidecar_path(path).write_text(json.dumps(export_sidecar(path, "onnx", **fields)))
    return path


@dataclass(frozen=True)
class Forged:
    """A forged model: its graph, and what the refusal must say."""

    name: str
    nodes: list
    inputs: list
    outputs: list
    initializers: tuple = ()
    says: str = ""


# Models whose *declared* interface contradicts the sidecar: refused when loaded.
MISFITS = [
    Forged(
        "five-classes",
        [means("m"), helper.make_node("MatMul", ["m", "w"], ["logits"])],
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 5])],
        (constant("w", [[1.0] * 5] * 3),),
        "its output has 5 columns; the sidecar says 3 (one per class)",
    ),
    Forged(
        "rank-3-output",
        [helper.make_node("ReduceMean", ["input"], ["logits"], axes=[3], keepdims=0)],
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 3, 16])],
        says="its output has 3 dimensions (batch, 3, 16); the sidecar says 2 (batch, 3)",
    ),
    Forged(
        "integer-output",
        [means("m"), helper.make_node("Cast", ["m"], ["logits"], to=I64)],
        [value("input", F, BATCH)],
        [value("logits", I64, ["batch", 3])],
        says="its output holds int64, not floating-point logits",
    ),
    Forged(
        "two-outputs",
        [means(), helper.make_node("Identity", ["logits"], ["extra"])],
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 3]), value("extra", F, ["batch", 3])],
        says="it has 2 outputs (logits, extra); the sidecar describes one (logits)",
    ),
    Forged(
        "rank-3-dynamic-input",
        [helper.make_node("ReduceMean", ["input"], ["logits"], axes=[2], keepdims=0)],
        [value("input", F, ["batch", "channels", "rows"])],
        [value("logits", F, ["batch", 3])],
        says="its input has 3 dimensions (batch, channels, rows); the sidecar says 4",
    ),
    Forged(
        "32-pixel-input",
        [means()],
        [value("input", F, ["batch", 3, 32, 32])],
        [value("logits", F, ["batch", 3])],
        says="its input has size 32 at axis 2; the sidecar says 16",
    ),
    Forged(
        "fixed-batch",
        [means()],
        [value("input", F, [1, 3, 16, 16])],
        [value("logits", F, [1, 3])],
        says="its input has a fixed batch of 1",
    ),
    Forged(
        "double-input",
        [means("m"), helper.make_node("Cast", ["m"], ["logits"], to=F)],
        [value("input", TensorProto.DOUBLE, BATCH)],
        [value("logits", F, ["batch", 3])],
        says="its input takes double; the sidecar says float32",
    ),
    Forged(
        "renamed-output",
        [means("probs")],
        [value("input", F, BATCH)],
        [value("probs", F, ["batch", 3])],
        says="its output is named probs; the sidecar says logits",
    ),
]

# Models that declare the sidecar's interface and fail when run.
FAILS_WHILE_RUNNING = [
    Forged(  # (batch, 3) cannot be reshaped to (-1, 7); the node's name holds an ESC
        "impossible-reshape",
        [means("m"), helper.make_node("Reshape", ["m", "to"], ["logits"], name=f"to{ESC}7")],
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 3])],
        (constant("to", [-1, 7], "int64"),),
        "Reshape",
    ),
    Forged(
        "gather-out-of-range",
        [means("m"), helper.make_node("Gather", ["m", "at"], ["logits"], axis=1)],
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 3])],
        (constant("at", [0, 1, 99], "int64"),),
        "Gather",
    ),
]

# Declares (batch, classes) with the classes left open and returns 6 columns: how many depends
# on the pixels (a Tile whose repeats are computed from their sum, always 2 here), so no
# shape inference can know it; only its output shows it. A file that is not what it claims.
OPEN_CLASSES = Forged(
    "six-columns-undeclared",
    [
        means("m"),
        helper.make_node("ReduceSum", ["input"], ["sum"], keepdims=0),
        helper.make_node("GreaterOrEqual", ["sum", "lowest"], ["always"]),
        helper.make_node("Cast", ["always"], ["one"], to=I64),
        helper.make_node("Add", ["one", "one"], ["two"]),
        helper.make_node("Unsqueeze", ["two", "axis0"], ["columns"]),
        helper.make_node("Concat", ["axis1", "columns"], ["repeats"], axis=0),
        helper.make_node("Tile", ["m", "repeats"], ["logits"]),
    ],
    [value("input", F, BATCH)],
    [value("logits", F, ["batch", "classes"])],
    (
        constant("lowest", -1e30),
        constant("axis0", [0], "int64"),
        constant("axis1", [1], "int64"),
    ),
    "its output is float32 of shape (2, 6) for a batch of 2; the sidecar says (2, 3)",
)


def forge(folder: Path, case: Forged) -> Path:
    path = folder / case.name / "model.onnx"
    return write_model(path, case.nodes, case.inputs, case.outputs, case.initializers)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), classes=(1,), per_class=2) / "1"


def _one_error_line(err: str, path: Path) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"torchgraft predict: error: {path}: "), err
    assert "internal error" not in err
    assert "\x1b" not in err
    return lines[0]


@pytest.mark.parametrize("case", MISFITS, ids=lambda c: c.name)
def test_an_onnx_model_that_does_not_fit_its_sidecar_is_refused_before_it_runs(
    tmp_path, case, image, capsys
):
    path = forge(tmp_path, case)
    with pytest.raises(CheckpointError) as refused:
        load_exported(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: does not fit its sidecar model.onnx.json: ")
    assert case.says in message
    assert message.endswith("export the run again, or give the sidecar written with this file")
    with pytest.raises(CheckpointError):
        load_for_prediction(path)

    assert main(["predict", str(path), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert case.says in _one_error_line(captured.err, path)


@pytest.mark.parametrize("case", FAILS_WHILE_RUNNING, ids=lambda c: c.name)
def test_an_onnx_model_failing_inside_onnxruntime_is_an_export_error(tmp_path, case, image, capfd):
    path = forge(tmp_path, case)
    model = load_exported(path)  # it declares exactly what the sidecar says
    with pytest.raises(ExportError) as failed:
        model(torch.zeros(2, 3, 16, 16))
    message = str(failed.value)
    assert message.startswith(f"{path}: onnxruntime failed while running it (")
    assert case.says in message
    assert "\x1b" not in message  # a node's name from the file is data
    assert failed.value.exit_code == 1

    assert main(["predict", str(path), str(image)]) == 1
    captured = capfd.readouterr()  # the file descriptors: onnxruntime logs from C++
    assert captured.out == ""
    assert "onnxruntime failed while running it" in _one_error_line(captured.err, path)


def test_an_output_that_does_not_fit_once_run_is_refused(tmp_path, image, capsys):
    path = forge(tmp_path, OPEN_CLASSES)
    model = load_exported(path)  # (batch, classes): nothing to contradict yet
    with pytest.raises(CheckpointError) as refused:
        model(torch.zeros(2, 3, 16, 16))
    assert str(refused.value).startswith(f"{path}: does not fit its sidecar model.onnx.json: ")
    assert OPEN_CLASSES.says in str(refused.value)
    assert main(["predict", str(path), str(image)]) == 2
    assert OPEN_CLASSES.says in _one_error_line(capsys.readouterr().err, path)


def test_a_fitting_model_still_predicts_and_a_sidecar_without_names_is_enough(tmp_path):
    path = write_model(
        tmp_path / "model.onnx", [means()], [value("input", F, BATCH)], [value("logits", F, None)]
    )  # an output of unknown shape: checked on every run instead
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(load_exported(path)(x), x.mean(dim=(2, 3)))
    # A sidecar without "input"/"output" (written by hand, or by an older torchgraft): the
    # names are not checked, everything else is.
    sidecar_path(path).write_text(json.dumps(export_sidecar(path, "onnx")))
    torch.testing.assert_close(load_exported(path)(x), x.mean(dim=(2, 3)))


# -- external data ---------------------------------------------------------------------------


def write_external(folder: Path, location: str = "model.onnx.data") -> Path:
    """logits = channel means * (1, 2, 3), the weights stored in the file ``location``."""
    weights = constant("w", [1.0, 2.0, 3.0])
    nodes = [means("m"), helper.make_node("Mul", ["m", "w"], ["logits"])]
    return write_model(
        folder / "model.onnx",
        nodes,
        [value("input", F, BATCH)],
        [value("logits", F, ["batch", 3])],
        (weights,),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def record(path: Path, *names: str) -> list[dict]:
    """What the sidecar records of the external files ``names`` beside ``path``."""
    files = [path.parent / name for name in names]
    return [
        {"file": name, "size": f.stat().st_size, "sha256": sha256_file(f)}
        for name, f in zip(names, files, strict=True)
    ]


def test_external_data_is_covered_by_the_sidecar(tmp_path, image, capsys):
    path = write_external(tmp_path)
    data = tmp_path / "model.onnx.data"
    assert data.stat().st_size == 12  # three float32 weights, outside model.onnx
    write_sidecar(path, external_data=record(path, "model.onnx.data"))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_exported(path)(x), x.mean(dim=(2, 3)) * torch.tensor([1, 2, 3]))

    changed = bytearray(data.read_bytes())
    changed[1] ^= 0x01  # one bit of the first weight: model.onnx itself is unchanged
    data.write_bytes(changed)
    with pytest.raises(CheckpointError) as refused:
        load_exported(path)
    assert str(refused.value) == (
        f"{path}: its external data file model.onnx.data does not match the sha256 recorded "
        "in model.onnx.json: it was changed or damaged after the export; export the run again"
    )
    assert main(["predict", str(path), str(image)]) == 2
    assert "model.onnx.data does not match" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("external_data", "says"),
    [
        (None, "its sidecar records no external data file"),  # a sidecar from before
        ([], "model.onnx.data, which its sidecar does not record"),
    ],
)
def test_external_data_the_sidecar_does_not_cover_is_refused(tmp_path, external_data, says):
    path = write_external(tmp_path)
    changes = {} if external_data is None else {"external_data": external_data}
    write_sidecar(path, **changes)
    with pytest.raises(CheckpointError, match="export the run again") as refused:
        load_exported(path)
    assert str(refused.value).startswith(f"{path}: it loads weights from model.onnx.data")
    assert says in str(refused.value)


@pytest.fixture
def onnxruntime_sessions(monkeypatch) -> list:
    """onnxruntime.InferenceSession, recording each call: a refusal must come before it."""
    import onnxruntime

    calls: list = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    return calls


@pytest.mark.parametrize("where", ["../outside.data", "ABSOLUTE", "sub/w.data", "link.data"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, where, onnxruntime_sessions):
    folder, outside = tmp_path / "model", tmp_path / "outside.data"
    outside.write_bytes(bytes(12))
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.data").write_bytes(bytes(12))
    (folder / "link.data").symlink_to(outside)
    location = str(outside) if where == "ABSOLUTE" else where
    path = write_external(folder, location="model.onnx.data")
    # point the weights elsewhere, and forge a sidecar that records that file, hash and all
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, path)
    entry = {"file": location, "size": 12, "sha256": sha256_file(outside)}
    write_sidecar(path, external_data=[entry])

    with pytest.raises(CheckpointError) as refused:
        load_exported(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: it loads weights from {location}, ")
    if where == "link.data":
        assert "a link leading out of the model's folder" in message
    else:
        assert "not a plain file name in the model's folder" in message
    assert onnxruntime_sessions == []  # refused before onnxruntime opened anything


def test_a_missing_external_file_is_refused(tmp_path, onnxruntime_sessions):
    path = write_external(tmp_path)
    write_sidecar(path, external_data=record(path, "model.onnx.data"))
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(CheckpointError, match=r"model\.onnx\.data: no such file"):
        load_exported(path)
    assert onnxruntime_sessions == []


def test_the_export_records_each_external_file(tmp_path):
    """The recorder export_run uses, on forged models (an export that writes external data:
    tests/export/test_export.py::test_an_onnx_export_with_external_data_records_its_files)."""
    from torchgraft.engine.export.sidecar import external_data_record

    path = write_external(tmp_path, location="weights.bin")
    assert external_data_record(path) == record(path, "weights.bin")
    self_contained = write_model(
        tmp_path / "plain.onnx",
        [means()],
        [value("input", F, BATCH)],
        [value("logits", F, BATCH[:2])],
    )
    assert external_data_record(self_contained) == []


# -- the installed command -------------------------------------------------------------------


@pytest.mark.slow
def test_the_installed_command_gives_one_line_and_the_right_status(
    tmp_path, image, console_script, subprocess_env
):
    """``torchgraft predict FILE IMG`` as users run it, in parallel subprocesses, on one file
    of each kind (every forged file goes through the command's code in the tests above):
    a declared misfit, one found once run, a changed external data file (exit 2), and a
    model failing inside onnxruntime under a node name holding an ESC (exit 1)."""
    fails = FAILS_WHILE_RUNNING[0]
    changed = write_external(tmp_path / "external")
    write_sidecar(changed, external_data=record(changed, "model.onnx.data"))
    (changed.parent / "model.onnx.data").write_bytes(bytes(12))
    cases = [
        (forge(tmp_path, MISFITS[0]), 2, MISFITS[0].says),
        (forge(tmp_path, OPEN_CLASSES), 2, OPEN_CLASSES.says),
        (changed, 2, "model.onnx.data does not match the sha256"),
        (forge(tmp_path, fails), 1, "onnxruntime failed while running it"),
    ]
    running = [
        (path, status, says, subprocess.Popen(
            [*console_script, "predict", str(path), str(image)], env=subprocess_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for path, status, says in cases
    ]  # fmt: skip
    for path, status, says, process in running:
        out, err = process.communicate(timeout=300)
        assert process.returncode == status, err
        assert out == ""
        assert says in _one_error_line(err, path)  # no traceback, no onnxruntime log, no ESC
