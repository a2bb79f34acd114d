"""A record read from a file never selects code: a stranger's run directory, a lone
``model.safetensors`` and a resume state that name a ``package.module:callable`` builder
are refused before anything is imported — through the CLI (``predict``, ``eval``,
``export``, ``report``, ``train --resume``) and the API (``tg.load``, ``tg.fit(resume=)``)
— with the weights' sha256 still matching. Only the caller's opt-in (``--trust-run``,
``trust_run=True``) builds them, and call syntax is never taken from a file.

The builder is a module of this test's own (``evil_builder``, on the path): importing it
creates a sentinel file. Every refusal asserts the sentinel was NOT created; the positive
controls (with the opt-in) assert that it was — so a sentinel that stayed absent means the
code did not run, not that the test could not see it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import torchgraft as tg
from support import run_cli, tiny_config
from torchgraft.checkpoint.write import sha256_file
from torchgraft.cli.main import main
from torchgraft.engine.artifacts import save_model
from torchgraft.engine.console import RunConsole
from torchgraft.errors import CheckpointError, UntrustedRunError

EVIL = """
import pathlib
pathlib.Path({sentinel!r}).write_text("the file's code ran")


def build(**kwargs):
    from handmade_models import TinyCNN

    return TinyCNN(**kwargs)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch TinyCNN run on three digit classes (copied by each test)."""
    from support import write_digit_folder

    root = tmp_path_factory.mktemp("code-from-data")
    images = write_digit_folder(root / "digits")
    config = tiny_config(images, root / "runs", train={"epochs": 1})
    run = tg.fit(config, console=RunConsole(quiet=True))
    return run.dir, images


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """``evil_builder`` importable here and in subprocesses; returns the sentinel path."""
    sentinel = tmp_path / "SENTINEL"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "evil_builder.py").write_text(EVIL.format(sentinel=str(sentinel)))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{Path(__file__).parents[1]}")
    yield sentinel
    sys.modules.pop("evil_builder", None)


def stranger_run(trained, tmp_path, builder: str) -> Path:
    """A copy of the run whose model.json names ``builder`` (model.safetensors untouched,
    so its sha256 in model.json still matches)."""
    run = tmp_path / "stranger"
    shutil.copytree(trained[0], run)
    document = json.loads((run / "model.json").read_text())
    document["build"]["model"] = builder
    (run / "model.json").write_text(json.dumps(document))
    assert document["sha256"] == sha256_file(run / "model.safetensors")
    return run


def commands(run: Path, images: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "predict": ["predict", str(run), str(images / "1")],
        "eval": ["eval", str(run), "--data", str(images)],
        "export": ["export", str(run), "--format", "torchscript", "-o", str(tmp_path / "m.ts")],
    }


def test_a_run_directory_naming_a_module_builder_runs_nothing(trained, evil, tmp_path, capsys):
    run = stranger_run(trained, tmp_path, "evil_builder:build")
    for name, argv in commands(run, trained[1], tmp_path).items():
        assert main(argv) == 2, name
        said = capsys.readouterr().err
        assert "evil_builder:build" in said, said
        assert "--trust-run" in said
        assert "internal error" not in said
    with pytest.raises(UntrustedRunError, match="trust_run=True"):
        tg.load(run)
    assert not evil.exists()
    # report: the page is written (its other sections are data), the model is not built
    assert main(["report", str(run), "--no-plots"]) == 0
    assert "--trust-run" in capsys.readouterr().err  # said where the command was run, too
    page = (run / "report.html").read_text()
    assert "the saved model was not built" in page
    assert "--trust-run" in page
    assert not evil.exists()


def test_the_opt_in_builds_the_module_builder(trained, evil, tmp_path):
    """Positive control: the sentinel does appear when the code runs."""
    run = stranger_run(trained, tmp_path, "evil_builder:build")
    model = tg.load(run, trust_run=True)
    assert evil.exists()
    assert model.classes == ("0", "1", "2")


def test_call_syntax_in_a_file_is_refused_even_with_the_opt_in(trained, evil, tmp_path, capsys):
    target = tmp_path / "touched"
    for builder in (f"os:system('touch {target}')", "evil_builder:build(record='x')"):
        run = stranger_run(trained, tmp_path / builder[:4], builder)
        with pytest.raises(CheckpointError, match="not a model spec a file may hold"):
            tg.load(run, trust_run=True)
        assert main(["predict", str(run), str(trained[1] / "1"), "--trust-run"]) == 2
        assert "not a model spec a file may hold" in capsys.readouterr().err
    assert not target.exists()
    assert not evil.exists()


@pytest.mark.slow  # a real `torchgraft predict` process (imports torch and timm)
def test_predict_on_a_lone_safetensors_with_a_record_naming_a_builder(
    trained, evil, tmp_path, console_script
):
    """The record inside the safetensors header is data too (no model.json beside it)."""
    run = trained[0]
    document = json.loads((run / "model.json").read_text())
    document.pop("sha256")
    document["build"]["model"] = "evil_builder:build"
    tensors = tg.load(run, trust_run=True).state_dict()
    save_model(tmp_path, tensors, document)
    lone = tmp_path / "lone.safetensors"
    (tmp_path / "model.safetensors").rename(lone)
    (tmp_path / "model.json").unlink()
    import os

    done = run_cli(
        console_script, "predict", lone, trained[1] / "1", env=dict(os.environ), timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "evil_builder:build" in done.stderr
    assert "--trust-run" in done.stderr
    assert "Traceback" not in done.stderr
    assert not evil.exists()


def _resume_state_naming(run: Path, builder: str) -> None:
    """The run's config.yaml and model.json name a torchvision model (so they are not what
    refuses), its resume state's fingerprint names ``builder``; last.json's sha256 is
    recomputed, as an attacker would."""
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(
        config.replace("handmade_models:TinyCNN", "torchvision:resnet18")
    )
    document = json.loads((run / "model.json").read_text())
    document["build"]["model"] = "torchvision:resnet18"
    (run / "model.json").write_text(json.dumps(document))
    pointer = json.loads((run / "state" / "last.json").read_text())
    path = run / "state" / pointer["file"]
    state = torch.load(path, weights_only=True)
    state["fingerprint"]["build"]["model"] = builder
    torch.save(state, path)
    pointer["sha256"] = sha256_file(path)
    (run / "state" / "last.json").write_text(json.dumps(pointer))


def test_a_resume_state_naming_a_module_builder_runs_nothing(trained, evil, tmp_path, capsys):
    run = tmp_path / "resume"
    shutil.copytree(trained[0], run)
    _resume_state_naming(run, "evil_builder:build")
    with pytest.raises(UntrustedRunError, match="state: fingerprint"):
        tg.fit(None, ["--train.epochs", "2"], resume=run, console=RunConsole(quiet=True))
    assert main(["train", "--resume", str(run), "--train.epochs", "2"]) == 2
    said = capsys.readouterr().err
    assert "evil_builder:build" in said
    assert "--trust-run" in said
    assert not evil.exists()


def test_a_run_config_naming_a_module_builder_is_not_imported_on_resume(
    trained, evil, tmp_path, capsys
):
    """config.yaml of the run is a file too: checking its model name must not import it."""
    run = tmp_path / "config"
    shutil.copytree(trained[0], run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(
        config.replace("handmade_models:TinyCNN", "evil_builder:build")
    )
    assert main(["train", "--resume", str(run), "--train.epochs", "2"]) == 2
    assert "evil_builder:build" in capsys.readouterr().err
    assert not evil.exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"checkpoint_path": "/tmp/x.pt"},
        {"pretrained": True},
        {"pretrained_cfg_overlay": {"file": "/tmp/x.pt"}},
        {"weights": "/tmp/x.pt"},
        {"read_options": {"trust": True}},
        {"norm": {"deep": [1]}},
    ],
    ids=lambda k: next(iter(k)),
)
def test_builder_options_that_load_files_are_never_taken_from_a_file(trained, tmp_path, kwargs):
    run = stranger_run(trained, tmp_path, "handmade_models:TinyCNN")
    document = json.loads((run / "model.json").read_text())
    document["build"]["kwargs"] = kwargs
    (run / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=f"build.kwargs.{next(iter(kwargs))}"):
        tg.load(run, trust_run=True)
