"""Runs with LoRA/DoRA adapters (``peft``), through the installed console script: a real timm
CNN with depthwise convolutions and BatchNorm, its pretrained weights from a file, trained
with only its adapters and head; the run folder holds the merged plain model and the adapters
alone; eval, predict and the report read it; a SIGKILLed run resumes bitwise."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_train_cmd import _kill_after, write_config

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.adapters import load_adapters, plain_names, read_adapters
from torchgraft.engine.config.load import load_config
from torchgraft.engine.resume import load_state
from torchgraft.errors import ConfigError

MODEL = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A timm model's own weights as a file: what the run grafts and must never change."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False)
    with torch.no_grad():  # statistics that describe something, so a change would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _config(data, out, weights, method="lora", **sections) -> dict:
    return tiny_config(
        data,
        out,
        model={"name": f"timm:{MODEL}", "channels_last": False},
        weights={"source": str(weights)},
        optim={"name": "adamw", "lr": 0.01},
        peft={"method": method, "rank": 2},
        data={"image_size": 32},
        **sections,
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_run_with_adapters_trains_only_them_and_keeps_the_merged_plain_model(
    console_script, subprocess_env, tmp_path, pretrained, method
):
    data = write_digit_folder(tmp_path / "images", per_class=12, size=32)
    config = write_config(
        tmp_path / "run.yaml", _config(data, tmp_path / "out", pretrained, method)
    )
    result = run_cli(console_script, "train", "--config", config, env=subprocess_env)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "out" / "run"
    assert {"model.safetensors", "adapters.safetensors", "adapters.safetensors.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    weights = load_file(str(pretrained))

    # What trained: the adapters and the head; every other tensor, BatchNorm statistics
    # included, is bitwise the pretrained file's after the training steps.
    state = load_state(run_dir)
    names = plain_names(state["model"], state["fingerprint"]["adapters"])
    head = ("classifier.",)
    for key, tensor in state["model"].items():
        plain = names[key]
        if plain is not None and not plain.startswith(head):
            assert torch.equal(tensor, weights[plain]), key
    lora_b = [v for k, v in state["model"].items() if ".lora_B." in k]
    assert lora_b
    assert any(v.abs().max() > 0 for v in lora_b)  # the adapters moved (they start at 0)

    # model.safetensors: the plain architecture's keys, loaded without adapter code, and
    # computing what the adapted model computes (pretrained weights + adapters file)
    merged = tg.load(run_dir)
    classes = len([p for p in data.iterdir() if p.is_dir()])
    plain = timm.create_model(MODEL, pretrained=False, num_classes=classes)
    assert list(merged.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(merged.state_dict(), strict=True)
    adapted = tg.create_model(f"timm:{MODEL}", num_classes=classes)
    adapted.load_state_dict(
        {k: v for k, v in weights.items() if not k.startswith(head)}, strict=False
    )
    tensors, record = read_adapters(run_dir)
    assert record["method"] == method
    load_adapters(adapted, tensors, record)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = adapted.eval()(images)
        got = merged.eval()(images)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5

    # the rest of the tool reads the run as any other
    evaluated = run_cli(console_script, "eval", run_dir, "--data", data, env=subprocess_env)
    assert evaluated.returncode == 0, evaluated.stderr
    image = next(p for p in data.rglob("*.png"))
    predicted = run_cli(console_script, "predict", run_dir, image, env=subprocess_env)
    assert predicted.returncode == 0, predicted.stderr
    report = (run_dir / "report.html").read_text()
    assert f"{'LoRA' if method == 'lora' else 'DoRA'} adapters, rank 2" in report
    if method == "dora":
        return  # the rest reads only the run folder's plain model: once is enough
    exported = run_cli(
        console_script, "export", run_dir, "--format", "torchscript", env=subprocess_env
    )
    assert exported.returncode == 0, exported.stderr
    assert (run_dir / "model.ts.pt").exists()
    # lr-find sweeps the same run set-up: adapters and head only
    swept = run_cli(
        console_script, "lr-find", "--config", config, "--steps", "8", "-o", tmp_path / "found",
        env=subprocess_env,
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr


@pytest.mark.slow
def test_a_run_with_adapters_killed_mid_run_resumes_bitwise(
    console_script, subprocess_env, tmp_path, pretrained
):
    data = write_digit_folder(tmp_path / "images", per_class=12, size=32)
    settings = {"train": {"epochs": 4, "threads": 1}}
    whole = write_config(
        tmp_path / "whole.yaml", _config(data, tmp_path / "whole", pretrained, **settings)
    )
    killed = write_config(
        tmp_path / "killed.yaml", _config(data, tmp_path / "killed", pretrained, **settings)
    )
    assert run_cli(console_script, "train", "--config", whole, env=subprocess_env).returncode == 0
    expected = load_state(tmp_path / "whole" / "run")["model"]
    run_dir = tmp_path / "killed" / "run"
    _kill_after(console_script, killed, subprocess_env, run_dir, epochs_done=2)
    assert load_state(run_dir)["epoch"] < 3
    resumed = run_cli(console_script, "train", "--resume", run_dir, env=subprocess_env)
    assert resumed.returncode == 0, resumed.stderr
    got = load_state(run_dir)["model"]
    assert got.keys() == expected.keys()
    assert any(".lora_A." in k for k in got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_adapters_with_batchnorm_statistics_that_move_are_refused():
    with pytest.raises(ConfigError, match=r"freeze\.bn: got 'train'.*adapters"):
        load_config(None, ["--peft.method", "lora", "--freeze.bn", "train"])


def test_the_two_phase_recipe_gives_adapters_one_rate_unless_told_otherwise():
    assert load_config(None, ["--peft.method", "lora"]).freeze.schedule.lr_mult == 1.0
    assert load_config(None, []).freeze.schedule.lr_mult == 100.0
    told = load_config(None, ["--peft.method", "dora", "--freeze.schedule.lr_mult", "10"])
    assert told.freeze.schedule.lr_mult == 10.0
