"""Small files that ask for a crash, gigabytes or minutes: each is refused, quickly, by name.

Every hostile read runs in a forked child under memory, CPU and time limits
(:func:`reader_forge.sandboxed_read`), so a regression fails its test and nothing else.
"""

from __future__ import annotations

import json
import struct
import zipfile

import pytest
import torch
from reader_forge import (
    APPEND,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    FALSE,
    MARK,
    PROTO2,
    REDUCE,
    SETITEM,
    SETITEMS,
    STOP,
    TUPLE,
    TUPLE1,
    TUPLE2,
    a_tensor,
    get,
    glob,
    integer,
    legacy,
    put,
    sandboxed_read,
    storage,
    tensor,
    text,
    torch_zip,
    with_entry,
)  # fmt: skip

from torchgraft.checkpoint.limits import ReaderLimits
from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.errors import CheckpointError


def _refused(result: dict, *needles: str) -> None:
    """A typed refusal naming each needle, with little memory and time spent."""
    assert result.get("typed") is True, result
    for needle in needles:
        assert needle in result["message"], result
    assert result["peak_mb"] < 150, result
    assert result["cpu_seconds"] < 20, result  # CPU time: the bound holds on a busy machine


# ---- nesting ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tuple_nested_a_million_times_as_a_dict_key_is_refused_not_a_crash(tmp_path):
    # ~1 MB; hashing the key recursed a million C frames deep: SIGSEGV in the reader.
    deep = EMPTY_TUPLE + TUPLE1 * 1_000_000
    path = torch_zip(tmp_path / "deep.pt", PROTO2 + EMPTY_DICT + text("w") + a_tensor()
                     + SETITEM + deep + integer(1) + SETITEM + STOP)  # fmt: skip
    _refused(sandboxed_read(path), "max_depth=100", "TORCHGRAFT_MAX_DEPTH")


def test_a_deep_list_is_refused(tmp_path):
    lists = 5_000
    path = torch_zip(
        tmp_path / "deep_list.pt", with_entry(EMPTY_LIST * lists + APPEND * (lists - 1))
    )
    _refused(sandboxed_read(path), "max_depth")


def test_nesting_made_after_the_fact_through_the_memo_is_still_counted(tmp_path):
    # Lists made first, then each appended into the one before: every append sees a list of
    # height 1, but the result is 150 deep. The scan must not trust heights it recorded.
    count = 150
    made = b"".join(EMPTY_LIST + put(i) for i in range(count))
    chain = b"".join(get(i) + get(i + 1) + APPEND for i in range(count - 1))
    path = torch_zip(tmp_path / "memo.pt", with_entry(get(0), setup=made + chain))
    with pytest.raises(CheckpointError, match="max_depth"):
        read_checkpoint(path)


def test_raising_the_depth_limit_admits_deep_files(tmp_path):
    path = torch_zip(tmp_path / "deep_list.pt", with_entry(EMPTY_LIST * 150 + APPEND * 149))
    with pytest.raises(CheckpointError, match="max_depth"):
        read_checkpoint(path)
    checkpoint = read_checkpoint(path, limits=ReaderLimits(max_depth=200))
    assert checkpoint.set_aside == {"x": "list of 1"}


# ---- memory -------------------------------------------------------------------------------

GIGS = 4_600_000_000


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_a_bytearray_of_any_size_is_refused(tmp_path, legacy_format):
    entry = glob("builtins", "bytearray") + integer(GIGS) + TUPLE1 + REDUCE
    main = with_entry(entry)
    if legacy_format:
        main = main.replace(a_tensor(), tensor(storage("0", 4, extra=b"N"), (4,), (1,)))
        path = legacy(tmp_path / "bytearray.pt", main)
    else:
        path = torch_zip(tmp_path / "bytearray.pt", main)
    assert path.stat().st_size < 1000
    _refused(sandboxed_read(path), "4,600,000,", "inflation_allowance", "TORCHGRAFT_")


def test_a_stride_0_view_materialised_is_refused(tmp_path):
    # 4 bytes of storage viewed as 575 million elements, then converted (copied) to float64.
    view = tensor(storage("0", 4), (575_000_000,), (0,))
    copy = (
        glob("torch._utils", "_rebuild_device_tensor_from_cpu_tensor") + MARK + view
        + glob("torch", "float64") + text("cpu") + FALSE + TUPLE + REDUCE
    )  # fmt: skip
    path = torch_zip(tmp_path / "stride0.pt", with_entry(copy))
    assert path.stat().st_size < 1000
    _refused(sandboxed_read(path), "claim", "inflation_allowance")


def test_a_deflate_bomb_in_the_zip_is_refused(tmp_path):
    big = bytes(64 << 20)  # stands for gigabytes: the test checks the refusal, not the bomb
    numel = len(big) // 4
    path = torch_zip(
        tmp_path / "deflate.pt", with_entry(tensor(storage("1", numel), (numel,), (1,))),
        records={"0": bytes(16), "1": big}, compress={"1": zipfile.ZIP_DEFLATED},
    )  # fmt: skip
    assert path.stat().st_size < 1 << 20
    for mmap in (True, False):
        _refused(sandboxed_read(path, mmap=mmap), "compressed")


def test_a_storage_claiming_more_than_its_record_is_refused(tmp_path):
    path = torch_zip(tmp_path / "claim.pt", with_entry(tensor(storage("1", 10**9), (4,), (1,))),
                     records={"0": bytes(16), "1": bytes(16)})  # fmt: skip
    for mmap in (True, False):
        _refused(sandboxed_read(path, mmap=mmap), "claims 4,000,000,000 bytes", "holds 16")


def test_a_legacy_storage_claiming_more_than_the_file_is_refused(tmp_path):
    main = with_entry(tensor(storage("1", 10**9, extra=b"N"), (4,), (1,)))
    main = main.replace(a_tensor(), tensor(storage("0", 4, extra=b"N"), (4,), (1,)))
    path = legacy(tmp_path / "claim_legacy.pt", main, {"0": bytes(16), "1": bytes(16)})
    _refused(sandboxed_read(path), "storages claim", "more than the file")


@pytest.mark.parametrize(
    "entry",
    [
        glob("torch", "FloatTensor") + integer(GIGS) + TUPLE1 + REDUCE,
        glob("torch", "Tensor") + MARK + integer(70_000) + integer(70_000) + TUPLE + REDUCE,
        glob("torch.storage", "UntypedStorage") + integer(GIGS) + TUPLE1 + REDUCE,
    ],
    ids=["FloatTensor(n)", "Tensor(n, m)", "UntypedStorage(n)"],
)
def test_tensor_constructors_with_huge_sizes_are_refused(tmp_path, entry):
    _refused(sandboxed_read(torch_zip(tmp_path / "ctor.pt", with_entry(entry))), "claim")


def test_iterating_a_huge_view_into_a_set_is_refused(tmp_path):
    # 64 M elements fit the inflation allowance as a view, but set() would make a Python
    # object of each one.
    view = tensor(storage("0", 4), (64_000_000,), (0,))
    entry = glob("builtins", "set") + view + TUPLE1 + REDUCE
    _refused(
        sandboxed_read(torch_zip(tmp_path / "set.pt", with_entry(entry))),
        "builtins.set on a tensor",
    )


# ---- time ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_quadratic_codec_chosen_by_the_file_is_refused(tmp_path):
    # _codecs.encode is on torch's safe list for bytes; the codec name comes from the file.
    # 3,000 distinct non-ASCII characters take ~2 s in punycode; 100 calls share one string.
    word = "".join(chr(0x100 + (i * 7919) % 50_000) for i in range(3000))
    calls = b"".join(
        integer(i) + glob("_codecs", "encode") + (text(word) + put(1) if i == 0 else get(1))
        + text("punycode") + TUPLE2 + REDUCE
        for i in range(100)
    )  # fmt: skip
    path = torch_zip(tmp_path / "punycode.pt", with_entry(EMPTY_DICT + MARK + calls + SETITEMS))
    assert path.stat().st_size < 30_000
    _refused(sandboxed_read(path, timeout=60), "codec 'punycode'")


def test_latin1_bytes_as_torch_save_writes_them_still_load(tmp_path):
    torch.save({"w": torch.ones(2), "blob": b"\x00\xffbytes", "ids": {1, 2}, "z": 1 + 2j},
               tmp_path / "plain.pt")  # fmt: skip
    checkpoint = read_checkpoint(tmp_path / "plain.pt")
    assert checkpoint.set_aside == {"blob": "bytes", "ids": "set of 2", "z": "complex"}


def _views(count: int) -> bytes:
    """``count`` one-element views of one storage, the globals and strings memoized."""
    first = text("k0") + tensor(storage("0", 4), (1,), (1,))
    rest = b"".join(
        text(f"k{i}") + glob("torch._utils", "_rebuild_tensor_v2")
        + MARK + get(0) + integer(i % 4) + get(1) + get(1) + FALSE + get(2) + EMPTY_TUPLE + REDUCE
        + TUPLE + REDUCE
        for i in range(1, count)
    )  # fmt: skip
    # memo 0: the storage, 1: (1,), 2: OrderedDict (left on the stack below the dict)
    prelude = (
        storage("0", 4) + put(0) + integer(1) + TUPLE1 + put(1)
        + glob("collections", "OrderedDict") + put(2)
    )  # fmt: skip
    return PROTO2 + prelude + EMPTY_DICT + MARK + first + rest + SETITEMS + STOP


@pytest.mark.slow
def test_two_hundred_thousand_views_are_refused_quickly(tmp_path):
    path = torch_zip(tmp_path / "views.pt", _views(200_000))
    result = sandboxed_read(path, timeout=120)
    _refused(result, "200,000 tensors", "max_tensors=100,000", "TORCHGRAFT_MAX_TENSORS")


def test_views_under_the_limit_read(tmp_path):
    checkpoint = read_checkpoint(torch_zip(tmp_path / "views.pt", _views(50)))
    assert len(checkpoint.tensors) == 50
    assert checkpoint.tensors["k7"].data_ptr() == checkpoint.tensors["k3"].data_ptr() + 0


def _many_safetensors(count: int) -> tuple[dict, bytes]:
    header = {f"t{i:07d}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
              for i in range(count)}  # fmt: skip
    return header, bytes(count)


@pytest.mark.slow
def test_a_safetensors_file_of_150k_tensors_is_refused_then_read_when_allowed(
    tmp_path, monkeypatch
):
    header, data = _many_safetensors(150_000)
    raw = json.dumps(header).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    _refused(sandboxed_read(path, timeout=120), "150,000 tensors", "max_tensors")
    monkeypatch.setenv("TORCHGRAFT_MAX_TENSORS", "200000")
    checkpoint = read_checkpoint(path)
    assert len(checkpoint.tensors) == 150_000
    assert checkpoint.tensors["t0149999"].tolist() == [0]
