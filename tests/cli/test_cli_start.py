"""Light commands start at once: they import neither timm nor torchvision (seconds each).

``torchgraft --help``, ``inspect FILE.safetensors``, ``report RUN_DIR`` (of a run whose model
is not a timm or torchvision one) and ``predict`` with an ONNX export run here as real
subprocesses, and the modules they imported are read back from the process itself. This is
behaviour, not timing: bench/cli_start.py measures the start times (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torchgraft as tg
from support import export_sidecar, run_light, tiny_config, write_digit_folder
from torchgraft.data.images import to_uint8_tensor
from torchgraft.data.transforms import base_transform
from torchgraft.engine.console import RunConsole
from torchgraft.model.spec import Preprocessing
from torchgraft.zoo import arch_index, catalogue

#: What a light command must not import (top-level package names).
MODEL_LIBRARIES = {"timm", "torchvision"}
#: Also left out by the commands that only read tensors or run an ONNX file.
NOT_FOR_READING = MODEL_LIBRARIES | {"torchmetrics", "matplotlib"}


def test_help_and_version_import_no_torch(tmp_path, subprocess_env):
    for args in (["--help"], ["--version"], ["inspect", "--help"]):
        done, imported = run_light(tmp_path, subprocess_env, *args)
        assert done.returncode == 0, done.stderr
        assert "torchgraft" in done.stdout
        assert not imported & (MODEL_LIBRARIES | {"torch", "numpy"}), args


def test_importing_the_zoo_imports_no_model_library(subprocess_env):
    code = (
        "import sys, torchgraft.zoo as zoo, torchgraft.zoo.identify;"
        "assert set(zoo.ADAPTERS) == {'torchvision', 'timm'};"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('timm', 'torchvision')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def weights_file(tmp_path) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(2)}, str(path))
    return path


def test_inspect_of_a_safetensors_file_imports_no_model_library(
    tmp_path, subprocess_env, weights_file
):
    # The architecture index of this session (conftest: two architectures) exists once a
    # checkpoint has been identified; building it is the one thing that needs the libraries.
    from torchgraft.zoo.identify import identify

    identify({"fc.bias": (2,)})
    for extra in ([], ["--no-identify"], ["--json"]):
        done, imported = run_light(tmp_path, subprocess_env, "inspect", weights_file, *extra)
        assert done.returncode == 0, done.stderr
        assert "conv.weight" in done.stdout
        assert not imported & NOT_FOR_READING, extra
    document = json.loads(done.stdout)
    assert document["architecture"]["summary"].startswith("not identified")


def test_a_complete_index_is_read_without_importing_its_library(tmp_path, monkeypatch):
    """An index completed for every architecture is used as it is in a process that has not
    imported the library (nothing there can have registered more architectures)."""
    monkeypatch.setenv("TORCHGRAFT_TABLES_DIR", "")  # the index is built, not shipped
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(arch_index, "all_names", lambda library: ["resnet18", "alexnet"])
    index = arch_index.load_index("torchvision")
    assert index.complete
    assert {e["name"] for e in index.entries} == {"resnet18", "alexnet"}
    code = (
        "import sys; from torchgraft.zoo import arch_index;"
        "index = arch_index.load_index('torchvision');"
        "print(sorted(e['name'] for e in index.entries), index.complete,"
        " 'torchvision' in sys.modules, arch_index.builds['torchvision'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['alexnet',", "'resnet18']", "True", "False", "0"]


def test_an_index_of_an_earlier_release_is_completed_once(tmp_path, monkeypatch):
    """A file without the ``complete`` mark (written before it existed) is read as
    incomplete; the first full check that finds nothing missing marks it."""
    monkeypatch.setenv("TORCHGRAFT_TABLES_DIR", "")  # the index is built, not shipped
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(arch_index, "all_names", lambda library: ["resnet18"])
    index = arch_index.load_index("torchvision")
    path = arch_index.index_path("torchvision", index.version)
    assert _summary(path)["complete"] is True
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files}
    summary = json.loads(arrays["summary"].tobytes())
    del summary["complete"]
    arrays["summary"] = np.frombuffer(json.dumps(summary).encode(), dtype=np.uint8)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    arch_index._MEMO.clear()
    before = arch_index.builds["torchvision"]
    again = arch_index.load_index("torchvision")
    assert arch_index.builds["torchvision"] == before  # nothing rebuilt
    assert again.complete
    assert [e["name"] for e in again.entries] == ["resnet18"]
    assert _summary(path)["complete"] is True


def _summary(path: Path) -> dict:
    with np.load(path) as stored:
        return json.loads(stored["summary"].tobytes())


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_the_index_version_is_the_library_version(library):
    """Read from the source without importing it: the same string the import gives."""
    assert catalogue._declared_version(library) == importlib.import_module(library).__version__


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of the hand-written TinyCNN: its model is built by tests/handmade_models.py."""
    root = tmp_path_factory.mktemp("cli-start")
    images = write_digit_folder(root / "digits")
    config = tiny_config(images, root / "runs", train={"epochs": 1})
    return Path(tg.fit(config, console=RunConsole(quiet=True)).dir)


@pytest.mark.slow  # a one-epoch run, then a subprocess that runs its model
def test_report_of_a_run_imports_no_model_library(tmp_path, subprocess_env, run_dir):
    page = run_dir / "report.html"
    page.unlink()
    done, imported = run_light(
        tmp_path, subprocess_env, "report", run_dir, "--trust-run", "--examples", "4"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(page)
    text = page.read_text(encoding="utf-8")
    # the image sections: the model ran over the data; each of the 6 validation images is
    # misclassified or correct, at most 4 shown in each section
    assert 4 <= text.count("<figure>") <= 6
    assert not imported & MODEL_LIBRARIES


def _onnx_export(folder: Path) -> Path:
    """A real 3-class ONNX model (the mean of each channel are the logits) with a sidecar."""
    onnx = pytest.importorskip("onnx", reason="the [onnx] extra is not installed")
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from onnx import TensorProto, helper

    from torchgraft.engine.export.load import sidecar_path

    node = helper.make_node("ReduceMean", ["input"], ["logits"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph(
        [node],
        "means",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    sidecar_path(path).write_text(json.dumps(export_sidecar(path, "onnx")))
    return path


def test_predict_with_an_onnx_export_imports_no_model_library(tmp_path, subprocess_env):
    model = _onnx_export(tmp_path)
    red = tmp_path / "red.png"
    Image.new("RGB", (20, 24), (250, 10, 10)).save(red)
    done, imported = run_light(tmp_path, subprocess_env, "predict", model, red, "--json")
    assert done.returncode == 0, done.stderr
    (prediction,) = json.loads(done.stdout)["predictions"]
    assert prediction["top"][0]["class"] == "0"  # the red channel has the largest mean
    assert not imported & NOT_FOR_READING


# The base transform is Pillow's own now (torchvision is not imported to predict): the same
# pixels as torchvision's transforms.v2 pipeline it replaces, for every size and filter.
SIZES = [(1, 1), (1, 50), (37, 61), (61, 37), (64, 64), (300, 199)]
PREPROCESSING = [
    ((16, 16), 0.875, "bilinear"),
    ((17, 23), 0.9, "bicubic"),
    ((24, 15), 1.0, "nearest"),
    ((32, 32), 0.95, "lanczos"),
    ((16, 16), 1.15, "random"),  # a name torchgraft does not know: bilinear
]


def _torchvision_base(pre: Preprocessing):
    from torchvision.transforms import InterpolationMode, v2

    height, width = pre.input_size[1:]
    modes = {"bilinear", "bicubic", "nearest", "lanczos"}
    mode = InterpolationMode(pre.interpolation if pre.interpolation in modes else "bilinear")
    resize = max(height, width) if pre.crop_pct >= 1 else round(max(height, width) / pre.crop_pct)
    pipeline = v2.Compose(
        [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop((height, width))]
    )
    return lambda image: to_uint8_tensor(pipeline(image))


@pytest.mark.parametrize(("size", "crop_pct", "interpolation"), PREPROCESSING)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_base_transform_gives_torchvision_pixels(size, crop_pct, interpolation, mode):
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    pre = Preprocessing(
        input_size=(channels, *size), crop_pct=crop_pct, interpolation=interpolation
    )
    ours, theirs = base_transform(pre), _torchvision_base(pre)
    for width, height in SIZES:
        pixels = rng.integers(0, 256, (height, width, 3)[: 3 if channels == 3 else 2])
        image = Image.fromarray(pixels.astype(np.uint8), mode)
        expected = theirs(image)
        got = ours(image)
        assert got.shape == (channels, *size)
        assert torch.equal(got, expected), (width, height)
