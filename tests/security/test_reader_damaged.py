"""Damaged and odd files: one typed CheckpointError naming the file, in bounded time.

Also objects a pickle can make that break code calling their methods (a shadowed ``get``,
``numel``), tensors with no dense data, and shard indexes whose entries are not file names.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from reader_forge import (
    BUILD,
    EMPTY_DICT,
    EMPTY_TUPLE,
    FALSE,
    MARK,
    PROTO2,
    REDUCE,
    SETITEM,
    SETITEMS,
    STOP,
    TUPLE,
    a_tensor,
    glob,
    integer,
    real_state,
    safetensors,
    sandboxed_read,
    text,
    torch_zip,
)  # fmt: skip
from safetensors.torch import save_file

from torchgraft.checkpoint.limits import ReaderLimits
from torchgraft.checkpoint.read import read_checkpoint

ROOT = os.geteuid() == 0


def _typed(result: dict, path: Path, *needles: str) -> None:
    assert result.get("error") == "CheckpointError", result
    assert str(path) in result["message"], result
    for needle in needles:
        assert needle in result["message"], result
    assert result["cpu_seconds"] < 10, result  # CPU time: holds on a busy machine
    assert result["peak_mb"] < 150, result


# ---- truncated, random, empty, not files --------------------------------------------------


def _sources(folder: Path) -> dict[str, bytes]:
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.zeros(4)}
    torch.save(state, folder / "zip.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, folder / "w.safetensors")
    return {p.name: p.read_bytes() for p in map(folder.joinpath, ["zip.pt", "legacy.pt",
                                                                   "w.safetensors"])}  # fmt: skip


@pytest.mark.parametrize("percent", [0, 10, 50, 99])
def test_truncated_files_give_one_typed_error(tmp_path, percent):
    for name, raw in _sources(tmp_path).items():
        path = tmp_path / f"cut_{percent}_{name}"
        path.write_bytes(raw[: len(raw) * percent // 100])
        _typed(sandboxed_read(path), path)


def test_random_bytes_and_empty_files(tmp_path):
    for name, raw in {"random.pt": os.urandom(4096), "empty.pt": b"",
                      "zeros.safetensors": bytes(4096)}.items():  # fmt: skip
        path = tmp_path / name
        path.write_bytes(raw)
        _typed(sandboxed_read(path), path)


def test_directories_pipes_and_devices_never_hang(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    (tmp_path / "folder.pt").mkdir()
    for path, reason in [
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path / "zero.pt", "not a regular file"),
        (tmp_path / "folder.pt", "without a single weights file"),
    ]:
        _typed(sandboxed_read(path, timeout=20), path, reason)
    # In a folder: a pipe named like the weights file is not read.
    (tmp_path / "hf").mkdir()
    os.mkfifo(tmp_path / "hf" / "model.safetensors")
    _typed(sandboxed_read(tmp_path / "hf", timeout=20), tmp_path / "hf")


def test_permission_denied(tmp_path):
    # Root reads files whatever their permissions: as root, read as "nobody".
    uid = 65534 if ROOT else None
    if ROOT:
        tmp_path.chmod(0o755)
    path = real_state(tmp_path / "w.pt")
    path.chmod(0)
    _typed(sandboxed_read(path, uid=uid), path, "Permission denied")
    folder = tmp_path / "locked"
    folder.mkdir()
    real_state(folder / "w.pt")
    folder.chmod(0)
    try:
        _typed(sandboxed_read(folder / "w.pt", uid=uid), folder / "w.pt", "Permission denied")
        _typed(sandboxed_read(folder, uid=uid), folder, "Permission denied")
    finally:
        folder.chmod(0o700)


# ---- safetensors headers ----------------------------------------------------------------


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


SAFETENSORS = {
    "header-length-2^40": ({"w": _entry()}, bytes(8), 1 << 40, "truncated"),
    "overlapping": ({"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(12), None, "overlaps"),
    "out-of-range": ({"w": _entry(shape=(4,), offsets=(0, 16))}, bytes(8), None, "past the end"),
    "gap": ({"a": _entry(), "b": _entry(offsets=(12, 20))}, bytes(20), None, "gap"),
    "absurd-shape": ({"w": _entry(shape=(1 << 61, 1 << 61), offsets=(0, 8))}, bytes(8), None,
                     "shape"),
    "negative-shape": ({"w": _entry(shape=(-2,))}, bytes(8), None, "shape"),
    "unknown-dtype": ({"w": _entry(dtype="F128")}, bytes(8), None, "dtype"),
    "not-an-object": ({"w": [1, 2]}, bytes(8), None, "not an object"),
    "metadata": ({"__metadata__": {"a": 1}, "w": _entry()}, bytes(8), None, "__metadata__"),
    "nested-json": (b'{"w":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, "not valid JSON"),
    "not-json": (b"{\xff\xfe", b"", None, "not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAFETENSORS))
def test_lying_safetensors_headers(tmp_path, case):
    header, data, length, reason = SAFETENSORS[case]
    path = safetensors(tmp_path / "w.safetensors", header, data, length)
    _typed(sandboxed_read(path), path, reason)


def test_a_100_mb_safetensors_header_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.safetensors"
    with path.open("wb") as handle:  # sparse: the header is claimed, not written
        handle.write(struct.pack("<Q", 100_000_000) + b'{"')
        handle.truncate(8 + 100_000_000 + 8)
    _typed(sandboxed_read(path), path, "max_metadata_bytes", "TORCHGRAFT_MAX_METADATA_BYTES")


def test_unaligned_safetensors_tensors_still_read(tmp_path):
    # The format does not promise alignment: a 3-byte tensor before a float32 one.
    header = {"a": _entry("U8", (3,), (0, 3)), "b": _entry("F32", (2,), (3, 11))}
    data = bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2.0)
    checkpoint = read_checkpoint(safetensors(tmp_path / "u.safetensors", header, data))
    assert checkpoint.tensors["a"].tolist() == [1, 2, 3]
    assert checkpoint.tensors["b"].tolist() == [1.5, -2.0]


# ---- objects whose methods the file replaced ----------------------------------------------


def test_an_ordered_dict_whose_get_is_shadowed(tmp_path):
    # BUILD on an OrderedDict updates its __dict__ from the file: od.get is now 3.
    pickle = (
        PROTO2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
        + text("model") + EMPTY_DICT + text("w") + a_tensor() + SETITEM + SETITEM
        + EMPTY_DICT + MARK + text("get") + integer(3) + text("items") + integer(4) + SETITEMS
        + BUILD + STOP
    )  # fmt: skip
    checkpoint = read_checkpoint(torch_zip(tmp_path / "od.pt", pickle))
    assert checkpoint.container == "model"
    assert list(checkpoint.tensors) == ["w"]


def test_a_tensor_whose_numel_is_replaced(tmp_path):
    state = EMPTY_DICT + MARK + text("numel") + integer(7) + text("element_size") + integer(0)
    state += SETITEMS
    parameter = (
        glob("torch._utils", "_rebuild_parameter_with_state") + MARK + a_tensor() + FALSE
        + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + state + TUPLE + REDUCE
    )  # fmt: skip
    path = torch_zip(tmp_path / "numel.pt", PROTO2 + EMPTY_DICT + text("w") + parameter
                     + SETITEM + STOP)  # fmt: skip
    checkpoint = read_checkpoint(path)
    weight = checkpoint.tensors["w"]
    assert type(weight) is torch.Tensor
    assert weight.numel() == 4
    assert checkpoint.num_elements == 4
    assert checkpoint.num_bytes == 16


def test_nested_sparse_and_meta_tensors_are_set_aside(tmp_path):
    with pytest.warns(UserWarning, match="prototype"):
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    torch.save(
        {"w": torch.ones(2), "nested": nested, "sparse": torch.eye(3).to_sparse(),
         "meta": torch.empty(4, device="meta")},
        tmp_path / "odd.pt",
    )  # fmt: skip
    checkpoint = read_checkpoint(tmp_path / "odd.pt")
    assert list(checkpoint.tensors) == ["w"]
    assert checkpoint.set_aside == {
        "nested": "nested tensor",
        "sparse": "sparse_coo tensor",
        "meta": "meta tensor (no data)",
    }


def test_huge_numbers_and_odd_keys_are_described_not_written_out(tmp_path):
    torch.save({"w": torch.ones(1), "big": 10**600, 7: 1, (1, 2): 2, None: "v"},
               tmp_path / "odd.pt")  # fmt: skip
    expected = {"big": "int", "7": "int = 1", "<tuple>": "int = 2", "None": "str = 'v'"}
    assert read_checkpoint(tmp_path / "odd.pt").set_aside == expected
    # Past 4,300 digits Python refuses to write a number out (torch files cannot hold one,
    # in-memory state_dicts and trusted pickles can).
    checkpoint = read_checkpoint({"w": torch.ones(1), "big": 10**5000})
    assert checkpoint.set_aside == {"big": "int"}


# ---- shard indexes ------------------------------------------------------------------------


def _sharded(folder: Path, weight_map) -> Path:
    save_file({"a": torch.ones(2)}, folder / "model-1.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    return index


@pytest.mark.parametrize(
    ("weight_map", "reason"),
    [
        ({"a": ["model-1.safetensors"]}, "maps to a list"),
        ({"a": {"file": "model-1.safetensors"}}, "maps to a dict"),
        ({"a": "model-1.safetensors\x00.txt"}, "outside the folder"),
        ({"a": "m" * 300 + ".safetensors"}, "outside the folder"),
        ({"a": "/etc/passwd"}, "outside the folder"),
        ({"a": "."}, "outside the folder"),
        ([["a", "model-1.safetensors"]], "should map"),
    ],
    ids=["list", "dict", "nul", "300-chars", "absolute", "dot", "not-a-map"],
)
def test_shard_index_entries_that_are_not_file_names(tmp_path, weight_map, reason):
    _sharded(tmp_path, weight_map)
    _typed(sandboxed_read(tmp_path), tmp_path / "model.safetensors.index.json", reason)


def test_deeply_nested_or_huge_shard_indexes(tmp_path):
    index = _sharded(tmp_path, {})
    index.write_text("[" * 200_000 + "]" * 200_000)
    _typed(sandboxed_read(tmp_path), index, "not a valid shard index")
    index.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}, "pad": "x" * 2000}))
    result = sandboxed_read(tmp_path, limits=ReaderLimits(max_metadata_bytes=1000))
    _typed(result, index, "max_metadata_bytes")


def test_a_shard_that_is_a_loop_of_links(tmp_path):
    index = _sharded(tmp_path, {"a": "loop-a.safetensors"})
    (tmp_path / "loop-a.safetensors").symlink_to("loop-b.safetensors")
    (tmp_path / "loop-b.safetensors").symlink_to("loop-a.safetensors")
    result = sandboxed_read(tmp_path)
    assert result.get("error") == "CheckpointError", result
    assert "loop of symbolic links" in result["message"], (result, index)
