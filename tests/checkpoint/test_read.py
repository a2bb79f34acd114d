"""read_checkpoint: every format by content, containers, safety, and one error type for bad files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from torchgraft.checkpoint.read import read_checkpoint, sniff_format
from torchgraft.errors import CheckpointError, UnsafeCheckpointError

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "torchgraft"


def _state() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.weight": torch.rand(4),
        "bn.num_batches_tracked": torch.tensor(3),
        "fc.weight": torch.randn(2, 4).half(),
    }


def _same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return list(actual) == list(expected) and all(
        actual[k].dtype == v.dtype and torch.equal(actual[k], v) for k, v in expected.items()
    )


def _legacy_save(obj, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


# ---- formats, recognised by content ----------------------------------------------------


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin", "w.ckpt", "weights"])
def test_torch_zip_by_content_whatever_the_extension(tmp_path, name):
    state = _state()
    torch.save(state, tmp_path / name)
    checkpoint = read_checkpoint(tmp_path / name)
    assert checkpoint.format == "torch"
    assert checkpoint.container is None
    assert _same(checkpoint.tensors, state)
    assert checkpoint.files == (str(tmp_path / name),)
    assert checkpoint.set_aside == {}


def test_legacy_torch_file_is_read_without_mmap(tmp_path):
    state = _state()
    path = _legacy_save({"state_dict": state, "epoch": 2}, tmp_path / "old.pth")
    checkpoint = read_checkpoint(path)
    assert (checkpoint.format, checkpoint.container) == ("torch-legacy", "state_dict")
    assert _same(checkpoint.tensors, state)
    assert checkpoint.set_aside == {"epoch": "int = 2"}


def test_torch_load_gets_weights_only_explicitly_and_mmap_only_for_zip(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.save(_state(), tmp_path / "zip.pt")
    read_checkpoint(tmp_path / "zip.pt")
    read_checkpoint(_legacy_save(_state(), tmp_path / "legacy.pt"))
    read_checkpoint(tmp_path / "zip.pt", mmap=False)
    assert [(c["weights_only"], c["mmap"]) for c in calls] == [
        (True, True),
        (True, False),
        (True, False),
    ]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_zip_and_safetensors_are_memory_mapped_unless_asked_not_to(tmp_path):
    torch.save(_state(), tmp_path / "w.pt")
    save_file(_state(), tmp_path / "w.safetensors")
    for path in (tmp_path / "w.pt", tmp_path / "w.safetensors"):
        mapped = read_checkpoint(path)
        assert _mapped(path), path
        del mapped
        copied = read_checkpoint(path, mmap=False)
        assert not _mapped(path), path
        assert copied.tensors["conv.weight"].sum().isfinite()


def test_mapped_tensors_are_copy_on_write(tmp_path):
    save_file({"w": torch.zeros(16)}, tmp_path / "w.safetensors")
    torch.save({"w": torch.zeros(16)}, tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        before = path.read_bytes()
        read_checkpoint(path).tensors["w"].add_(1)  # a caller scribbling on the tensors
        assert path.read_bytes() == before
        assert read_checkpoint(path).tensors["w"].sum() == 0


def test_lightning_ckpt_keeps_the_module_prefix_and_sets_the_rest_aside(tmp_path):
    state = {f"model.{k}": v for k, v in _state().items()}
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.3)}
        },
        "optimizer_states": [
            {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": []}
        ],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.01, "num_classes": 2},
    }
    torch.save(ckpt, tmp_path / "epoch=3.ckpt")
    checkpoint = read_checkpoint(tmp_path / "epoch=3.ckpt")
    assert (checkpoint.format, checkpoint.container) == ("lightning", "state_dict")
    assert _same(checkpoint.tensors, state)  # "model." kept: matching strips it later
    assert checkpoint.metadata["pytorch-lightning_version"] == "2.4.0"
    assert checkpoint.set_aside["global_step"] == "int = 120"
    assert checkpoint.set_aside["optimizer_states"] == "list of 1"
    assert checkpoint.set_aside["callbacks"] == "dict of 1 (holds tensors)"
    assert set(checkpoint.set_aside) == set(ckpt) - {"state_dict"}


def test_safetensors_with_metadata(tmp_path):
    state = _state()
    save_file(state, tmp_path / "w.safetensors", metadata={"format": "pt", "source": "x"})
    checkpoint = read_checkpoint(tmp_path / "w.safetensors")
    assert checkpoint.format == "safetensors"
    assert _same(checkpoint.tensors, dict(sorted(state.items())))  # stored sorted by name
    assert checkpoint.metadata == {"format": "pt", "source": "x"}


def test_content_wins_over_extension(tmp_path):
    save_file(_state(), tmp_path / "really_safetensors.bin")
    torch.save(_state(), tmp_path / "really_torch.safetensors")
    assert read_checkpoint(tmp_path / "really_safetensors.bin").format == "safetensors"
    assert read_checkpoint(tmp_path / "really_torch.safetensors").format == "torch"


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "custom.pth"])
def test_folder_with_one_weights_file(tmp_path, weights):
    state = _state()
    if weights.endswith(".safetensors"):
        save_file(state, tmp_path / weights)
    else:
        torch.save(state, tmp_path / weights)
    (tmp_path / "config.json").write_text("{}")
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.format == "hf-folder"
    assert checkpoint.metadata["file"] == weights
    assert {k: v.shape for k, v in checkpoint.tensors.items()} == {
        k: v.shape for k, v in state.items()
    }
    assert checkpoint.files == (str(tmp_path / weights),)


def test_folder_prefers_safetensors_over_pickle(tmp_path):
    save_file({"from_safetensors": torch.ones(1)}, tmp_path / "model.safetensors")
    torch.save({"from_pickle": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    assert list(read_checkpoint(tmp_path).tensors) == ["from_safetensors"]


def _write_sharded(folder: Path, state: dict[str, torch.Tensor], safetensors: bool) -> Path:
    keys = list(state)
    shards = {"a": keys[:2], "b": keys[2:]}
    suffix = "safetensors" if safetensors else "bin"
    weight_map = {}
    for index, (_name, shard_keys) in enumerate(shards.items(), start=1):
        shard = f"model-0000{index}-of-00002.{suffix}"
        part = {k: state[k] for k in shard_keys}
        save_file(part, folder / shard) if safetensors else torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(shard_keys, shard))
    index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    index_path = folder / index_name
    index_path.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return index_path


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_sharded_folder(tmp_path, safetensors):
    state = _state()
    index = _write_sharded(tmp_path, state, safetensors)
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.format == "hf-folder"
    assert checkpoint.metadata["file"] == index.name
    assert _same(checkpoint.tensors, state)
    assert checkpoint.files[0] == str(index)
    assert len(checkpoint.files) == 3


def test_in_memory_nested_state_dict_is_flattened(tmp_path):
    nested = {
        "backbone": {"conv": {"weight": torch.ones(2)}},
        "head.bias": torch.zeros(1),
        "step": 4,
    }
    checkpoint = read_checkpoint(nested)
    assert list(checkpoint.tensors) == ["backbone.conv.weight", "head.bias"]
    assert (checkpoint.format, checkpoint.set_aside) == ("state_dict", {"step": "int = 4"})


def test_module_gives_its_state_dict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    checkpoint = read_checkpoint(model)
    assert checkpoint.format == "module"
    assert _same(checkpoint.tensors, model.state_dict())


# ---- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "module", "net"])
def test_container_is_unwrapped_and_reported(tmp_path, key):
    state = _state()
    torch.save(
        {key: state, "optimizer": {"state": {0: {"exp_avg": torch.ones(1)}}}, "epoch": 9},
        tmp_path / "c.pt",
    )
    checkpoint = read_checkpoint(tmp_path / "c.pt")
    assert checkpoint.container == key
    assert _same(checkpoint.tensors, state)
    assert checkpoint.set_aside == {"optimizer": "dict of 1 (holds tensors)", "epoch": "int = 9"}


def test_nested_containers_and_non_tensor_entries_inside_the_state_dict():
    state = {"conv.weight": torch.ones(1), "_metadata_note": "v2"}
    checkpoint = read_checkpoint({"model": {"state_dict": state, "arch": "resnet"}, "epoch": 1})
    assert checkpoint.container == "model.state_dict"
    assert list(checkpoint.tensors) == ["conv.weight"]
    assert checkpoint.set_aside == {
        "epoch": "int = 1",
        "model.arch": "str = 'resnet'",
        "_metadata_note": "str = 'v2'",
    }


def test_ema_weights_are_selectable(tmp_path):
    regular, ema = _state(), {k: v + 1 for k, v in _state().items()}
    torch.save(
        {"state_dict": regular, "state_dict_ema": ema, "arch": "resnet18"}, tmp_path / "timm.pth"
    )
    default = read_checkpoint(tmp_path / "timm.pth")
    assert default.container == "state_dict"
    assert _same(default.tensors, regular)
    assert default.set_aside["state_dict_ema"] == "dict of 4 (holds tensors)"
    chosen = read_checkpoint(tmp_path / "timm.pth", ema=True)
    assert chosen.container == "state_dict_ema"
    assert _same(chosen.tensors, ema)
    torch.save({"model": regular, "model_ema": ema}, tmp_path / "tv.pth")
    assert read_checkpoint(tmp_path / "tv.pth", ema=True).container == "model_ema"


@pytest.mark.parametrize("source", ["plain", "safetensors", "module"])
def test_ema_without_ema_weights_is_an_error(tmp_path, source):
    if source == "plain":
        torch.save({"state_dict": _state()}, tmp_path / "w.pt")
        source = tmp_path / "w.pt"
    elif source == "safetensors":
        save_file(_state(), tmp_path / "w.safetensors")
        source = tmp_path / "w.safetensors"
    else:
        source = nn.Linear(1, 1)
    with pytest.raises(CheckpointError, match="EMA"):
        read_checkpoint(source, ema=True)


def test_a_level_holding_tensors_is_never_taken_for_a_container():
    # "model" here is a submodule's weights beside other weights, not a wrapper.
    checkpoint = read_checkpoint({"model": {"weight": torch.ones(1)}, "head.weight": torch.ones(1)})
    assert checkpoint.container is None
    assert list(checkpoint.tensors) == ["model.weight", "head.weight"]


def test_cycles_and_colliding_names_are_handled():
    cyclic: dict = {"w": torch.ones(1)}
    cyclic["again"] = cyclic  # pickles can build this; it must not recurse forever
    checkpoint = read_checkpoint(cyclic)
    assert list(checkpoint.tensors) == ["w"]
    assert checkpoint.set_aside == {"again": "dict of 2 (holds tensors)"}
    with pytest.raises(CheckpointError, match=r"same name 'a\.b'"):
        read_checkpoint({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}})


# ---- safety ----------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_files(folder: Path) -> list[Path]:
    payload = {"state_dict": _state(), "extra": _Exploit(folder / "MARKER")}
    torch.save(payload, folder / "evil.pt")
    return [folder / "evil.pt", _legacy_save(payload, folder / "evil_legacy.pt")]


# The child imports io.py under bare parent packages: the real package __init__s import timm
# and the whole API (seconds per process); io.py itself is imported and run unchanged.
CHILD = textwrap.dedent(
    """
    import json, sys, types
    for name, folder in (("torchgraft", sys.argv[1]), ("torchgraft.graft", sys.argv[1] + "/graft")):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = [folder]
    from torchgraft.errors import UnsafeCheckpointError
    from torchgraft.checkpoint.read import read_checkpoint
    results = []
    for path in sys.argv[2:]:
        try:
            read_checkpoint(path)
            results.append({"loaded": True})
        except UnsafeCheckpointError as exc:
            results.append({"globals": exc.globals_wanted, "message": str(exc)})
    print(json.dumps(results))
    """
)


def test_environment_variables_cannot_switch_the_unsafe_path_on(tmp_path):
    files = _malicious_files(tmp_path)
    marker = tmp_path / "MARKER"
    children = []
    for variable in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        env = {**os.environ, variable: "1"}
        command = [sys.executable, "-c", CHILD, str(PACKAGE), *map(str, files)]
        children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    for child in children:  # run side by side: each pays torch's import time
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        for path, result in zip(files, json.loads(out), strict=True):
            assert result["globals"] == ["builtins.exec"]
            assert str(path) in result["message"]
            assert "builtins.exec" in result["message"]
    assert not marker.exists()
    # The same refusal in this process, and proof that the file really is an exploit:
    for path in files:
        with pytest.raises(UnsafeCheckpointError) as refused:
            read_checkpoint(path)
        assert refused.value.globals_wanted == ["builtins.exec"]
        assert not marker.exists()
    with pytest.warns(UserWarning, match="weights_only=False"):
        read_checkpoint(files[0], trust=True)
    assert marker.exists()


@pytest.fixture
def harmless_module(tmp_path, monkeypatch):
    """An importable module with plain classes, pickled as globals torch does not allow."""
    source = (
        "class Scale:\n    def __init__(self, f):\n        self.f = f\n\nclass Other:\n    pass\n"
    )
    (tmp_path / "tg_harmless.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tg_harmless

    yield tg_harmless
    sys.modules.pop("tg_harmless", None)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_allow_globals_is_named_and_scoped_to_one_load(tmp_path, harmless_module, legacy):
    payload = {
        "state_dict": _state(),
        "cfg": harmless_module.Scale(2),
        "other": harmless_module.Other(),
    }
    path = tmp_path / "custom.pt"
    _legacy_save(payload, path) if legacy else torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)) as refused:
        read_checkpoint(path)
    assert sorted(refused.value.globals_wanted) == ["tg_harmless.Other", "tg_harmless.Scale"]
    with pytest.raises(UnsafeCheckpointError) as still_refused:
        read_checkpoint(path, allow_globals=["tg_harmless.Scale"])
    assert still_refused.value.globals_wanted == ["tg_harmless.Other"]
    checkpoint = read_checkpoint(path, allow_globals=["tg_harmless.Scale", "tg_harmless.Other"])
    assert _same(checkpoint.tensors, payload["state_dict"])
    assert checkpoint.set_aside == {"cfg": "Scale", "other": "Other"}
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)  # the allowance did not outlive its load
    assert "tg_harmless.Scale" not in map(str, torch.serialization.get_safe_globals())


def test_trust_loads_with_a_warning_and_whole_modules_need_it(tmp_path, harmless_module):
    torch.save({"model": _state(), "cfg": harmless_module.Scale(1)}, tmp_path / "a.pt")
    with pytest.warns(UserWarning, match="code inside the file can run"):
        assert read_checkpoint(tmp_path / "a.pt", trust=True).set_aside == {"cfg": "Scale"}
    model = nn.Sequential(nn.Linear(2, 3))
    torch.save(model, tmp_path / "whole.pt")  # the classic mistake: a pickled module
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(tmp_path / "whole.pt")
    assert "torch.nn.modules.linear.Linear" in refused.value.globals_wanted
    with pytest.warns(UserWarning, match="weights_only=False"):
        checkpoint = read_checkpoint(tmp_path / "whole.pt", trust=True)
    assert checkpoint.format == "module"
    assert _same(checkpoint.tensors, model.state_dict())


def test_allow_globals_that_cannot_be_imported(tmp_path):
    torch.save(_state(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"no_such_module\.Thing"):
        read_checkpoint(tmp_path / "w.pt", allow_globals=["no_such_module.Thing"])


# ---- one typed error for every bad file -----------------------------------------------------


def _torch_bytes(tmp_path: Path, legacy: bool = False) -> bytes:
    path = tmp_path / "source.pt"
    torch.save(_state(), path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


def _safetensors_bytes(tmp_path: Path) -> bytes:
    save_file(_state(), tmp_path / "source.safetensors")
    return (tmp_path / "source.safetensors").read_bytes()


def _lying_offsets(tmp_path: Path) -> bytes:
    raw = _safetensors_bytes(tmp_path)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["conv.weight"]["data_offsets"][1] += 4096  # claims data past the end of the file
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :]


def _not_torch_zip(tmp_path: Path) -> bytes:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("docs/readme.txt", "hello")
    return (tmp_path / "a.zip").read_bytes()


def _torchscript(tmp_path: Path) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, still common
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "ts.pt"))
    return (tmp_path / "ts.pt").read_bytes()


BAD_FILES = {
    "empty": (lambda d: b"", "empty"),
    "text": (lambda d: b"epochs: 10\nlr: 0.1\n", "text file"),
    "jpeg": (lambda d: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)), "JPEG"),
    "random": (lambda d: bytes((i * 97 + 13) % 256 for i in range(4096)), "not a checkpoint"),
    "git-lfs-pointer": (
        lambda d: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
        "git lfs pull",
    ),
    "html-download": (lambda d: b"<!DOCTYPE html><html>Sign in</html>", "HTML"),
    "plain-pickle": (lambda d: __import__("pickle").dumps({"w": [1.0]}), "not a torch.save file"),
    "truncated-zip": (lambda d: _torch_bytes(d)[:-300], "damaged or truncated zip"),
    "truncated-zip-head": (lambda d: _torch_bytes(d)[:40], "damaged or truncated zip"),
    "truncated-legacy": (
        lambda d: _torch_bytes(d, legacy=True)[:-100],
        "cannot be read as a torch file",
    ),
    "truncated-safetensors": (lambda d: _safetensors_bytes(d)[:-10], "damaged safetensors"),
    "safetensors-header-cut": (lambda d: _safetensors_bytes(d)[:30], "truncated safetensors"),
    "safetensors-lying-offsets": (_lying_offsets, "offset"),
    "zip-not-torch": (_not_torch_zip, "not a torch checkpoint"),
    "torchscript": (_torchscript, "TorchScript"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gives_one_checkpoint_error_naming_file_and_reason(tmp_path, case):
    make, reason = BAD_FILES[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert type(error.value) is CheckpointError  # not mistaken for an unsafe pickle
    assert str(path) in str(error.value)
    assert reason.lower() in str(error.value).lower()


def test_pickles_holding_no_state_dict(tmp_path):
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 1, "note": "no weights"}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no tensors found"):
        read_checkpoint(tmp_path / "meta.pt")


def test_missing_paths_and_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CheckpointError, match="without a single weights file"):
        read_checkpoint(tmp_path / "empty_folder")
    two = tmp_path / "two"
    two.mkdir()
    torch.save(_state(), two / "a.pt")
    torch.save(_state(), two / "b.pt")
    with pytest.raises(CheckpointError, match=r"a\.pt, b\.pt; pass one of them"):
        read_checkpoint(two)


@pytest.mark.parametrize(
    "defect", ["missing-shard", "key-not-in-shard", "outside", "bad-json", "no-map"]
)
def test_broken_shard_index(tmp_path, defect):
    index = _write_sharded(tmp_path, _state(), safetensors=True)
    document = json.loads(index.read_text())
    first = next(iter(document["weight_map"]))
    if defect == "missing-shard":
        (tmp_path / document["weight_map"][first]).unlink()
    elif defect == "key-not-in-shard":
        document["weight_map"]["ghost.weight"] = document["weight_map"][first]
    elif defect == "outside":
        document["weight_map"][first] = "../elsewhere.safetensors"
    elif defect == "no-map":
        document["weight_map"] = ["not", "a", "map"]
    index.write_text("{not json" if defect == "bad-json" else json.dumps(document))
    reason = {"missing-shard": "is missing", "key-not-in-shard": "'ghost.weight' is not in",
              "outside": "outside the folder", "bad-json": "not a valid shard index",
              "no-map": "should map"}[defect]  # fmt: skip
    with pytest.raises(CheckpointError, match=reason) as error:
        read_checkpoint(tmp_path)
    assert str(index) in str(error.value)


def test_sniff_format_names_the_three_formats(tmp_path):
    torch.save(_state(), tmp_path / "a")
    _legacy_save(_state(), tmp_path / "b")
    save_file(_state(), tmp_path / "c")
    assert [sniff_format(tmp_path / n) for n in "abc"] == ["torch", "torch-legacy", "safetensors"]


# ---- property: arbitrary bytes never escape as anything but CheckpointError -----------------


def _read_bytes_as_checkpoint(folder: Path, data: bytes) -> None:
    path = folder / "fuzz.bin"
    path.write_bytes(data)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        message = str(exc)
    else:
        assert all(isinstance(t, torch.Tensor) for t in checkpoint.tensors.values())
        return
    assert str(path) in message  # any other exception type fails the test by escaping


_PREFIXES = [
    b"",
    b"PK\x03\x04",
    b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",
    b"\x40\x00\x00\x00\x00\x00\x00\x00{",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prefix=st.sampled_from(_PREFIXES), data=st.binary(max_size=2048))
def test_random_bytes_only_ever_give_checkpoint_error(tmp_path, prefix, data):
    # Prefixes steer the bytes into each reader (zip, legacy pickle, safetensors header).
    _read_bytes_as_checkpoint(tmp_path, prefix + data)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    small = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    torch.save({"state_dict": small, "epoch": 1}, folder / "zip.pt")
    torch.save(small, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(small, folder / "w.safetensors")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_real_checkpoints_only_ever_give_checkpoint_error(tmp_path, valid_files, data):
    raw = bytearray(valid_files[data.draw(st.sampled_from(sorted(valid_files)))])
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=4)
    )
    for position, xor in flips:
        raw[position] ^= xor
    _read_bytes_as_checkpoint(
        tmp_path, bytes(raw[: max(cut, len(raw) // 2)] if flips else raw[:cut])
    )
