"""torchgraft export: every format checked numerically against the eager model, the sidecar,
atomic refusal of a failed check, the [onnx] extra, and predict on exported files.

One tiny TinyCNN run is shared by the module; the command runs as users run it (the console
script in a subprocess) where that is the point, and through ``cli.main.main`` in-process
where a subprocess would only add torch's import time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchgraft as tg
from support import export_sidecar, tiny_config, write_digit_folder
from torchgraft.checkpoint.write import sha256_file
from torchgraft.cli import export_cmd
from torchgraft.cli.main import main
from torchgraft.data.transforms import Normalizer
from torchgraft.engine.console import RunConsole
from torchgraft.engine.export.load import FORMATS, load_exported, sidecar_path
from torchgraft.engine.export.methods import METHODS
from torchgraft.engine.export.write import (
    CHECK_BATCH_SIZES,
    ExportCheckError,
    check_sample,
    export_run,
)
from torchgraft.engine.inference import image_files, predict_files
from torchgraft.errors import CheckpointError

HERE = Path(__file__).resolve().parent
HAS_ONNX = all(
    __import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")
)
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason='the [onnx] extra is not installed (pip install "torchgraft[onnx]")'
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, image folder) of a TinyCNN trained two epochs on real digits."""
    root = tmp_path_factory.mktemp("export")
    data = write_digit_folder(root / "digits")
    run = tg.fit(tiny_config(data, root / "runs"), console=RunConsole(quiet=True))
    return Path(run.dir), data


def trap_run(run: Path, model: str, where: Path) -> Path:
    """A copy of ``run`` whose model.json builds ``trap_models:<model>`` (same weights)."""
    copy = shutil.copytree(run, where / model)
    record = json.loads((copy / "model.json").read_text())
    record["build"]["model"] = f"trap_models:{model}"
    (copy / "model.json").write_text(json.dumps(record))
    return copy


def normalised(model, count: int, seed: int) -> torch.Tensor:
    """``count`` random images prepared as the model's preprocessing says."""
    size = model.preprocessing.input_size
    pixels = torch.randint(0, 256, (count, *size), generator=torch.Generator().manual_seed(seed))
    return Normalizer(model.preprocessing, torch.device("cpu"))(pixels.to(torch.uint8))


def test_export_torchscript_then_predict_with_it(tiny, console_script, subprocess_env, capsys):
    run, data = tiny
    done = subprocess.run(
        [*console_script, "export", str(run), "--format", "torchscript", "--trust-run"],
        capture_output=True, text=True, env=subprocess_env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = run / "model.ts.pt"
    record = json.loads(sidecar_path(exported).read_text())
    method = record["exported_with"]["method"]  # script, or trace where the model has Python
    assert method in ("torch.jit.script", "torch.jit.trace")
    assert f"(torchscript, {method}," in done.stdout
    assert "batch sizes 1 and 3" in done.stdout
    assert "deprecated" not in done.stderr  # torch 2.14's jit notices are not the user's
    assert record["export"] == "torchscript"
    assert record["sha256"] == sha256_file(exported)
    assert record["check"]["max_abs_diff"] <= record["check"]["allowed"]
    assert "validation data" in record["check"]["sample"]

    # predict in this process: a second subprocess would cost torch's import time again
    argv = ["predict", str(exported), str(data / "1"), "--topk", "3", "--json", "--trust-export"]
    assert main(argv) == 0
    from_export = json.loads(capsys.readouterr().out)["predictions"]
    eager = predict_files(tg.load(run, trust_run=True), image_files([data / "1"]), topk=3)
    assert len(from_export) == len(eager) == 12
    for got, want in zip(from_export, eager, strict=True):
        assert [t["class"] for t in got["top"]] == [name for name, _ in want.top]
        assert [t["probability"] for t in got["top"]] == pytest.approx(
            [p for _, p in want.top], abs=1e-5
        )


def test_pt2_export_matches_the_eager_model_at_any_batch_size(tiny, tmp_path):
    run, _ = tiny
    result = export_run(run, "pt2", tmp_path / "out" / "m.pt2", trust_run=True)
    assert result.method == "torch.export.export"
    assert result.batch_sizes == CHECK_BATCH_SIZES == (1, 3)
    eager = tg.load(run, trust_run=True)
    sample, _ = check_sample(run, eager.preprocessing)
    with torch.no_grad():
        largest = float(eager(sample).abs().max())
    assert result.allowed == pytest.approx(1e-4 * max(1.0, largest))
    assert result.max_abs_diff <= result.allowed
    record = json.loads(result.sidecar.read_text())
    assert record["classes"] == list(eager.classes) == ["0", "1", "2"]
    assert record["preprocessing"]["input_size"] == [3, 16, 16]
    assert record["input"]["shape"] == ["batch", 3, 16, 16]
    assert record["output"]["shape"] == ["batch", 3]
    assert record["exported_with"]["torch"] == torch.__version__
    assert record["sha256"] == result.sha256 == sha256_file(result.path)

    exported = load_exported(result.path, trust=True)
    assert exported.classes == eager.classes
    assert exported.preprocessing == eager.preprocessing
    for batch in (1, 5):  # 5: a batch size neither the converter nor the check saw
        x = normalised(eager, batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), eager(x), rtol=1e-5, atol=1e-5)


def test_torchscript_falls_back_to_tracing_and_says_why(tiny, tmp_path):
    run = trap_run(tiny[0], "Unscriptable", tmp_path)
    (run / "config.yaml").unlink()  # the run's data unknown: checked on random pixels instead
    result = export_run(run, "torchscript", trust_run=True)
    assert result.path == run / "model.ts.pt"
    assert result.method == "torch.jit.trace"
    assert any(note.startswith("torch.jit.script failed:") for note in result.notes)
    record = json.loads(result.sidecar.read_text())
    assert record["exported_with"]["method"] == "torch.jit.trace"
    assert record["exported_with"]["notes"] == result.notes
    assert record["check"]["sample"].startswith("3 images of random pixels")
    eager, exported = tg.load(run, trust_run=True), load_exported(result.path, trust=True)
    x = normalised(eager, 4, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x), rtol=1e-5, atol=1e-5)


def test_a_failed_check_is_exit_1_and_keeps_the_previous_export(
    tiny, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "shipped" / "model.ts.pt"
    export = ["export", "--format", "torchscript", "--trust-run", "-o", str(out)]
    assert main([*export, str(tiny[0])]) == 0
    before = out.read_bytes(), sidecar_path(out).read_bytes()
    noisy = trap_run(tiny[0], "Noisy", tmp_path)
    capsys.readouterr()

    status = main([*export, str(noisy)])
    error = capsys.readouterr().err
    assert status == 1
    assert "outputs differ by" in error
    assert "torch.jit.trace ran but" in error
    assert "a previous export at that path is kept" in error
    assert (out.read_bytes(), sidecar_path(out).read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.ts.pt", "model.ts.pt.json"]

    with pytest.raises(ExportCheckError, match=r"differ by \d"):
        export_run(noisy, "pt2", trust_run=True)
    assert not list(noisy.glob("*model.pt2*"))


def test_outputs_that_would_replace_the_run_or_cannot_be_written_are_refused(
    tiny, tmp_path, capsys
):
    run = tiny[0]
    weights = (run / "model.safetensors").read_bytes()
    export = ["export", str(run), "--format", "pt2", "--trust-run", "-o"]
    assert main([*export, str(run / "model.safetensors")]) == 2
    assert "the run's own model.safetensors" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == weights
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*export, str(blocker / "m.pt2")]) == 2
    assert "-o/--output" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--format", "pt2"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_onnx_without_the_extra_names_it(tiny, tmp_path, capsys, monkeypatch):
    run = tiny[0]
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err
    assert 'pip install "torchgraft[onnx]"' in error
    assert "onnxscript" in error
    assert not (tmp_path / "m.onnx").exists()

    fake = tmp_path / "model.onnx"  # predict needs only onnxruntime, and says so first
    fake.write_bytes(b"not checked before the runtime is there")
    sidecar_path(fake).write_text(json.dumps(export_sidecar(fake, "onnx")))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(fake), str(tiny[1] / "1")]) == 2
    assert 'pip install "torchgraft[onnx]"' in capsys.readouterr().err


def test_predict_refuses_changed_or_unrecorded_exports(tiny, tmp_path):
    result = export_run(tiny[0], "torchscript", tmp_path / "m.ts.pt", trust_run=True)
    changed = tmp_path / "changed.ts.pt"
    changed.write_bytes(result.path.read_bytes() + b"\0")
    shutil.copy(result.sidecar, sidecar_path(changed))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_exported(changed, trust=True)
    bare = tmp_path / "bare.ts.pt"
    shutil.copy(result.path, bare)
    with pytest.raises(CheckpointError, match=r"no bare\.ts\.pt\.json beside it"):
        load_exported(bare)
    for bad in ({"classes": "0,1,2"}, {"export": "pickle"}, {"preprocessing": {"mean": [0]}}):
        sidecar_path(bare).write_text(json.dumps(export_sidecar(bare, "torchscript", **bad)))
        with pytest.raises(CheckpointError, match="export the run again"):
            load_exported(bare)


def test_class_names_from_the_sidecar_are_printed_escaped(tiny, tmp_path, capsys):
    result = export_run(tiny[0], "torchscript", tmp_path / "m.ts.pt", trust_run=True)
    record = json.loads(result.sidecar.read_text())
    record["classes"] = ["\x1b[2Jzero", "[bold red]one[/]", "two\nFORGED LINE"]
    result.sidecar.write_text(json.dumps(record))  # the sha256 covers the model file only
    argv = ["predict", str(result.path), str(tiny[1] / "1"), "--topk", "3", "--trust-export"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[2Jzero" in out
    assert "[bold red]one[/]" in out
    assert "two\\nFORGED LINE" in out
    assert "\nFORGED LINE" not in out


@pytest.mark.slow
@needs_onnx
def test_onnx_export_has_a_dynamic_batch_and_runs_in_onnxruntime(tiny, tmp_path, capsys):
    run, data = tiny
    out = tmp_path / "deep" / "er" / "m.onnx"  # missing folders are made
    assert (
        main(["export", str(run), "--format", "onnx", "-o", str(out), "--json", "--trust-run"]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["path"] == str(out)
    assert document["method"] == "torch.onnx.export (dynamo=True)"
    assert document["runtime"].startswith("onnxruntime")
    assert document["max_abs_diff"] <= document["allowed"]
    record = json.loads(sidecar_path(out).read_text())
    assert record["exported_with"]["opset"] >= 18
    assert record["sha256"] == sha256_file(out)
    assert record["external_data"] == []  # one self-contained file: nothing else to cover
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.json"]

    import onnxruntime

    eager = tg.load(run, trust_run=True)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    for batch in (1, 7):
        x = normalised(eager, batch, seed=batch)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, eager(x), rtol=1e-5, atol=1e-5)

    files = image_files([data / "2"])
    from_onnx = predict_files(load_exported(out), files, topk=2)
    from_eager = predict_files(eager, files, topk=2)
    assert [p.top[0][0] for p in from_onnx] == [p.top[0][0] for p in from_eager]
    assert [p.top[0][1] for p in from_onnx] == pytest.approx(
        [p.top[0][1] for p in from_eager], abs=1e-5
    )


@needs_onnx
def test_an_onnx_export_with_external_data_records_its_files(tiny, tmp_path, monkeypatch):
    """The exporters write external data for models over 2 GB (torch's dynamo exporter does,
    whatever ``external_data=False`` says): here the legacy method's file, re-saved with its
    weights outside, stands in for one. The sidecar covers the extra file, and predict
    notices when it changes."""
    import onnx

    legacy = METHODS["onnx"][1][1]

    def with_external_data(model, example, path):
        legacy(model, example, path)
        proto = onnx.load(str(path))
        onnx.save(proto, str(path), save_as_external_data=True, location=f"{path.name}.data",
                  size_threshold=0)  # fmt: skip

    monkeypatch.setitem(METHODS, "onnx", (("legacy, weights outside", with_external_data),))
    out = tmp_path / "m.onnx"
    result = export_run(tiny[0], "onnx", out, trust_run=True)
    (entry,) = json.loads(result.sidecar.read_text())["external_data"]
    data = out.parent / entry["file"]  # named after the temporary file the exporter wrote
    assert entry == {"file": data.name, "size": data.stat().st_size, "sha256": sha256_file(data)}
    assert entry["size"] > 1000  # TinyCNN's weights are there, not in m.onnx
    eager, exported = tg.load(tiny[0], trust_run=True), load_exported(out)
    x = normalised(eager, 3, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x), rtol=1e-5, atol=1e-5)

    changed = bytearray(data.read_bytes())
    changed[-1] ^= 0x01
    data.write_bytes(changed)
    with pytest.raises(CheckpointError, match=f"external data file {data.name} does not match"):
        load_exported(out)


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory) -> Path:
    """A real timm EfficientNet (timm's small test_efficientnet) trained one step at 32 px."""
    root = tmp_path_factory.mktemp("export-timm")
    data = write_digit_folder(root / "digits", per_class=4)
    config = tiny_config(
        data,
        root / "runs",
        model={"name": "timm:test_efficientnet"},
        data={"image_size": 32},
        train={"epochs": 1, "max_steps": 1},
    )
    return Path(tg.fit(config, console=RunConsole(quiet=True)).dir)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_a_real_timm_efficientnet_exports(timm_run, fmt, tmp_path):
    result = export_run(timm_run, fmt, tmp_path / FORMATS[fmt].default_file)
    assert result.method == {"torchscript": "torch.jit.script", "pt2": "torch.export.export"}[fmt]
    eager, exported = tg.load(timm_run), load_exported(result.path, trust=True)
    x = normalised(eager, 5, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x), rtol=1e-4, atol=1e-4)


def test_cli_literals_match_the_library():
    assert {f.name: f.default_file for f in FORMATS.values()} == export_cmd.DEFAULT_FILES
