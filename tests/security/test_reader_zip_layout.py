"""A torch zip is read by two readers (Python's zipfile for the checks and the scan, torch's
miniz in torch.load): a file laid out so that they disagree is refused before either reads a
pickle, and every layout torch.save writes still reads (issue 17, item 4).

Hostile files are forged record by record (:mod:`zip_forge`); each test first shows the
disagreement is real (the two readers return different ``data.pkl`` bytes), then that the
reader refuses it. The round-one attacks run sandboxed (:func:`reader_forge.sandboxed_read`):
if the check broke, torch would crash, hang or allocate gigabytes in a child process.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from reader_forge import ROUND_ONE, a_tensor, integer, sandboxed_read, state_dict
from torch import nn
from zip_forge import (
    Entry,
    archive,
    directory,
    ending,
    local_record,
    locals_of,
    torch_entries,
    two_directories,
    two_zip64_records,
)

from support import run_cli
from torchgraft.checkpoint.allowed_globals import torch_safe_names
from torchgraft.checkpoint.limits import ReaderLimits
from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.checkpoint.torch_files import check_torch_file
from torchgraft.checkpoint.zip_layout import check_layout
from torchgraft.errors import CheckpointError

#: What Python's zipfile is shown: one plain tensor.
BENIGN = state_dict({"w": a_tensor()})
#: What torch would read in the in-process cases: harmless, and visible if it got through.
HIDDEN = state_dict({"w": a_tensor(), "hidden": integer(1)})
TWO_VIEWS = "two different archives"


def _views(path: Path) -> tuple[bytes | str, bytes | str]:
    """``data.pkl`` as Python's zipfile reads it, and as torch's reader does (or the error)."""
    try:
        with zipfile.ZipFile(path) as archive_:
            python = archive_.read("archive/data.pkl")
    except Exception as exc:
        python = repr(exc)
    try:
        with path.open("rb") as handle:
            seen_by_torch = torch._C.PyTorchFileReader(handle).get_record("data.pkl")
    except Exception as exc:
        seen_by_torch = repr(exc)
    return python, seen_by_torch


def _refused(result: dict, path: Path, *needles: str) -> None:
    assert result.get("error") == "CheckpointError", result
    for needle in (str(path), *needles):
        assert needle in result["message"], result
    assert result["cpu_seconds"] < 10, result  # CPU time: holds on a busy machine
    assert result["peak_mb"] < 150, result


# ---- two central directories: the finding ------------------------------------------------


def _two_views(folder: Path, hostile: bytes, zip64: bool = True) -> Path:
    path = folder / "two_views.pt"
    path.write_bytes(two_directories(torch_entries(BENIGN), torch_entries(hostile), zip64))
    assert _views(path) == (BENIGN, hostile)  # the scan would see one, torch the other
    return path


@pytest.mark.parametrize("zip64", [True, False], ids=["zip64", "zip32"])
@pytest.mark.parametrize("attack", sorted(ROUND_ONE))
def test_two_central_directories_are_refused_whatever_the_hidden_pickle(tmp_path, attack, zip64):
    path = _two_views(tmp_path, ROUND_ONE[attack](), zip64)
    for mmap in (True, False):
        _refused(sandboxed_read(path, mmap=mmap), path, TWO_VIEWS, "second central directory")


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ROUND_ONE))
def test_the_command_line_refuses_two_central_directories(
    tmp_path, attack, console_script, subprocess_env
):
    path = _two_views(tmp_path, ROUND_ONE[attack]())
    result = run_cli(console_script, "inspect", path, "--no-identify", env=subprocess_env,
                     timeout=120)  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert str(path) in result.stderr
    assert TWO_VIEWS in result.stderr
    assert "Traceback" not in result.stderr


# ---- every other way the readers part ----------------------------------------------------


def _overlapping() -> bytes:
    """``data/0`` holds, inside its bytes, the local header of ``data/1``."""
    inner = Entry("archive/data/1", bytes(16))
    entries = torch_entries(BENIGN, records={"0": bytes(16) + local_record(inner)})
    body, offsets = locals_of(entries)
    inner_at = offsets[2] + 30 + len(entries[2].name) + 16
    cd = directory([*entries, inner], [*offsets, inner_at])
    return body + cd + ending(len(entries) + 1, len(cd), len(body), len(body) + len(cd), True)


def _miscounted() -> bytes:
    """The end records count one entry fewer than the directory holds (miniz reads fewer)."""
    raw = bytearray(archive(torch_entries(BENIGN), zip64=False))
    raw[-14:-10] = struct.pack("<HH", 3, 3)
    return bytes(raw)


def _local_name() -> bytes:
    entries = torch_entries(BENIGN)
    entries[0].local_name = "archive/data.pkx"  # read by Python only
    return archive(entries)


ODD_LAYOUTS = {
    # name: (the file, what the refusal says, whether the readers read different pickles;
    # in the other cases one of them fails, or the file is only an odd one)
    "zip64-locator-elsewhere": (
        lambda: two_zip64_records(torch_entries(BENIGN), torch_entries(HIDDEN)),
        "zip64 locator points at", True,
    ),
    "names-equal-but-for-case": (
        lambda: archive([Entry("archive/DATA.PKL", HIDDEN), *torch_entries(BENIGN)]),
        "one name to torch's reader", True,
    ),
    "nul-in-a-name": (
        lambda: archive([*torch_entries(BENIGN), Entry("archive/data.pkl\0", HIDDEN)]),
        "not plain ASCII", True,
    ),
    "data-before-the-archive": (
        lambda: b"PK\x03\x04" + bytes(60) + archive(torch_entries(BENIGN), zip64=False),
        "data before the archive", False,
    ),
    "comment": (lambda: archive(torch_entries(BENIGN), comment=b"hi"), "last 22 bytes", False),
    "trailing-bytes": (lambda: archive(torch_entries(BENIGN)) + bytes(8), "last 22 bytes", False),
    "local-header-names-another-file": (_local_name, "local header of 'archive/data.pkl'", False),
    "overlapping-entries": (_overlapping, "'archive/data/0' overlaps 'archive/data/1'", False),
    "miscounted-entries": (_miscounted, "counts 3 entries", False),
    "a-second-folder": (
        lambda: archive(torch_entries(BENIGN) + torch_entries(HIDDEN, folder="other")),
        "outside its folder 'archive'", False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ODD_LAYOUTS))
def test_layouts_the_readers_could_read_differently_are_refused(tmp_path, case):
    make, needle, parted = ODD_LAYOUTS[case]
    path = tmp_path / "odd.pt"
    path.write_bytes(make())
    if parted:  # both readers read a data.pkl, and not the same one
        python, seen_by_torch = _views(path)
        assert {python, seen_by_torch} == {BENIGN, HIDDEN}, (python, seen_by_torch)
    for mmap in (True, False):
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(path, mmap=mmap)
        assert str(path) in str(refused.value)
        assert needle in str(refused.value)


def test_a_layout_refusal_needs_no_scan_and_holds_with_trust(tmp_path):
    # trust=True skips the pickle scan, not the layout: torch would still read the other view.
    path = tmp_path / "two.pt"
    path.write_bytes(two_directories(torch_entries(BENIGN), torch_entries(HIDDEN)))
    with pytest.raises(CheckpointError, match=TWO_VIEWS):
        read_checkpoint(path, trust=True)


def test_bytes_that_differ_between_the_readers_are_refused(tmp_path, monkeypatch):
    # The last guard: even with a layout that passed, data.pkl is read by both readers and
    # compared. Stand in a torch reader that returns other bytes.
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    real = torch._C.PyTorchFileReader

    class Other:
        def __init__(self, handle):
            self.real = real(handle)

        def get_record_offset(self, name):
            return self.real.get_record_offset(name)

        def get_record(self, name):
            return HIDDEN

    monkeypatch.setattr(torch._C, "PyTorchFileReader", Other)
    with pytest.raises(CheckpointError, match=r"read different bytes for 'w/data\.pkl'"):
        read_checkpoint(path)


# ---- what torch.save writes still reads --------------------------------------------------


def _sources() -> dict[str, object]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    return {
        "state_dict": model.state_dict(),
        "many": {f"t{i}": torch.full((2,), float(i)) for i in range(300)},
        "nested": {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "extra": OrderedDict(a=[torch.ones(1), (torch.zeros(2),)]), "epoch": 3},
    }  # fmt: skip


def _zip64_end_records(raw: bytes) -> bool:
    """Whether a zip64 locator and end record precede the end record (torch always writes
    them: its writer is initialised with MZ_ZIP_FLAG_WRITE_ZIP64)."""
    return raw[-42:-38] == b"PK\x06\x07" and raw[-98:-94] == b"PK\x06\x06"


def test_files_torch_save_writes_pass_the_layout_check(tmp_path):
    for name, obj in _sources().items():
        buffer = io.BytesIO()
        torch.save(obj, buffer)  # to a stream: the archive folder is "archive"
        paths = [tmp_path / f"{name}.pt", tmp_path / f"{name} (copy ñ).pt", tmp_path / "buf.pt"]
        torch.save(obj, paths[0])
        torch.save(obj, paths[1])  # a name that is not ASCII: torch writes "archive/" too
        paths[2].write_bytes(buffer.getvalue())
        expected = obj["model"] if name == "nested" else obj
        for path, mmap in zip(paths, (True, False, True), strict=True):
            assert _zip64_end_records(path.read_bytes()), path
            assert check_layout(path, ReaderLimits())[0].name.endswith("/data.pkl")
            tensors = read_checkpoint(path, mmap=mmap).tensors
            assert tensors.keys() == expected.keys(), path
            assert all(torch.equal(tensors[k], v) for k, v in expected.items()), path


def test_zip64_records_as_torch_writes_them_for_huge_files_are_accepted(tmp_path):
    # Over 65,535 entries the end record's numbers saturate; over 4 GiB each entry's sizes
    # and offset move to a zip64 extra field. Both readers must agree, and the check accept.
    entries = torch_entries(BENIGN)
    for entry in entries:
        entry.zip64 = True
    cases = {"saturated.pt": archive(torch_entries(BENIGN), saturated=True),
             "zip64-extras.pt": archive(entries, saturated=True)}  # fmt: skip
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        assert _views(path) == (BENIGN, BENIGN)
        checkpoint = read_checkpoint(path)
        assert checkpoint.tensors["w"].tolist() == [0.0] * 4


@pytest.mark.slow
def test_a_real_archive_of_more_than_65535_entries_passes_the_checks(tmp_path):
    # torch.save writes 6 records besides the storages; 65,530 tensors make 65,536 entries.
    path = tmp_path / "many.pt"
    torch.save([torch.zeros(1) for _ in range(65_530)], path)
    raw = path.read_bytes()
    assert raw[-12:-10] == b"\xff\xff"  # the end record's count, saturated: zip64 holds it
    assert len(check_layout(path, ReaderLimits())) == 65_536
    check = check_torch_file(path, "torch", torch_safe_names(), ReaderLimits(), scan=True)
    assert check.tensors == 65_530
