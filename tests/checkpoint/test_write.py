"""save_grafted: safetensors + JSON sidecar with the file's sha256, written atomically."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from torchgraft.checkpoint import write as save_module
from torchgraft.checkpoint.write import save_grafted, sha256_file, sidecar_path
from torchgraft.errors import CheckpointError


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Compare bytes, not values: NaN != NaN and -0.0 == 0.0 would hide differences.
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.dtype == b.dtype and a.shape == b.shape and raw(a).equal(raw(b))


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(8, 3, 3, 3),
        "bn.running_var": torch.rand(8) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
        "head.weight": torch.randn(4, 8).to(torch.bfloat16),
        "nan_and_inf": torch.tensor([float("nan"), float("inf"), -0.0]),
        "empty": torch.empty(0, 5),
    }


def test_round_trip_is_bitwise_and_sidecar_holds_the_sha256(tmp_path):
    tensors = _tensors()
    out = save_grafted(tmp_path / "out.safetensors", tensors, {"source": "a.ckpt", "n": 3})
    assert out == tmp_path / "out.safetensors"
    loaded = load_file(out)
    assert list(sorted(loaded)) == sorted(tensors)
    assert all(_bitwise_equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    sidecar = json.loads((tmp_path / "out.safetensors.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["file"] == "out.safetensors"
    assert (sidecar["source"], sidecar["n"]) == ("a.ckpt", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "out.safetensors.json"]


def test_sha256_file_streams_and_matches_hashlib(tmp_path):
    data = torch.randint(0, 256, (3 * (1 << 20) + 17,), dtype=torch.uint8).numpy().tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)  # more than one 1 MiB chunk, with a ragged tail
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_tied_weights_views_and_non_contiguous_tensors_are_saved(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, like a language model's embedding and head
    state = model.state_dict()
    assert state["0.weight"].data_ptr() == state["1.weight"].data_ptr()
    base = torch.randn(6, 4)
    state["slice_a"], state["slice_b"] = base[:3], base[3:]  # two views of one storage
    state["transposed"] = torch.randn(3, 5).t()
    out = save_grafted(tmp_path / "tied.safetensors", state, {})
    loaded = load_file(out)
    assert sorted(loaded) == sorted(state)  # every key kept, none deduplicated away
    assert all(_bitwise_equal(loaded[k], v) for k, v in state.items())
    assert state["transposed"].is_contiguous() is False  # the caller's tensors are untouched


def test_a_failure_midway_leaves_no_files(tmp_path, monkeypatch):
    def disk_full(path):
        # By now the weights are fully written to their temporary file.
        assert path.stat().st_size > 0
        assert path.name.startswith(".out.safetensors.")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(save_module, "sha256_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_grafted(tmp_path / "out.safetensors", _tensors(), {"source": "x"})
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_keeps_the_previous_pair(tmp_path, monkeypatch):
    out = save_grafted(tmp_path / "out.safetensors", {"w": torch.ones(3)}, {"v": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # a torn header
        raise RuntimeError("interrupted")

    monkeypatch.setattr("safetensors.torch.save_file", half_written)
    with pytest.raises(CheckpointError, match=r"out\.safetensors"):
        save_grafted(out, {"w": torch.zeros(3)}, {"v": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("name", "tensors", "sidecar", "reason"),
    [
        ("out.pt", {"w": torch.ones(1)}, {}, "safetensors"),
        ("out.safetensors", {"w": [1, 2]}, {}, "only str → tensor"),
        ("out.safetensors", {"w": torch.ones(2).to_sparse()}, {}, "dense"),
        ("out.safetensors", {"w": torch.ones(1)}, {"loss": float("nan")}, "JSON"),
        ("out.safetensors", {"w": torch.ones(1)}, {"model": nn.Linear(1, 1)}, "JSON"),
    ],
    ids=["suffix", "non-tensor", "sparse", "nan-in-sidecar", "object-in-sidecar"],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, name, tensors, sidecar, reason):
    with pytest.raises(CheckpointError, match=reason):
        save_grafted(tmp_path / name, tensors, sidecar)
    assert list(tmp_path.iterdir()) == []


def test_paths_in_the_sidecar_are_strings_and_sidecar_path_is_beside(tmp_path):
    out = save_grafted(tmp_path / "m.v1.safetensors", {"w": torch.ones(1)}, {"src": tmp_path})
    assert sidecar_path(out) == tmp_path / "m.v1.safetensors.json"  # FILE + .json
    assert json.loads(sidecar_path(out).read_text())["src"] == str(tmp_path)
