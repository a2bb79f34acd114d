"""Instructions that fill an object (SETITEM(S), APPEND(S), BUILD) are refused by the scan when
the object is not the kind they are for (issue 17, item 6).

torch before 2.10 runs ``tensor[key] = value`` for a SETITEM on a tensor while unpickling
(CVE-2026-24747), and ``pyproject`` admits torch 2.6: the scan must refuse these itself, not
rely on the unpickler behind it. Each refusal is shown to come from the scan, with
``torch.load`` replaced by a function that fails the test if it is reached; real files with
every kind of container torch.save writes still read.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from collections import Counter, OrderedDict

import pytest
import torch
from reader_forge import (
    APPEND,
    APPENDS,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    MARK,
    PROTO2,
    REDUCE,
    SETITEM,
    SETITEMS,
    STOP,
    TUPLE1,
    a_tensor,
    get,
    glob,
    integer,
    legacy,
    put,
    storage,
    tensor,
    text,
    torch_zip,
)
from torch import nn

from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.errors import CheckpointError

TORCH_CHECKS_TARGETS = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 10)
EMPTY_SET = b"\x8f"


def _filled(target: bytes, fill: bytes) -> bytes:
    """``{"w": target}``, where ``fill`` acts on ``target`` before it is stored."""
    return PROTO2 + EMPTY_DICT + text("w") + target + fill + SETITEM + STOP


#: SETITEM(S) and APPEND(S) on a tensor: what torch < 2.10 runs as tensor[0] = 7 and so on.
ON_A_TENSOR = {
    "SETITEM": _filled(a_tensor(), integer(0) + integer(7) + SETITEM),
    "SETITEMS": _filled(a_tensor(), MARK + integer(0) + integer(7) + SETITEMS),
    "APPEND": _filled(a_tensor(), integer(7) + APPEND),
    "APPENDS": _filled(a_tensor(), MARK + integer(7) + integer(8) + APPENDS),
    # the tensor stored first, then fetched back from the memo and filled
    "SETITEM-memo": (
        PROTO2 + EMPTY_DICT + text("w") + a_tensor() + put(9) + SETITEM
        + get(9) + integer(0) + integer(7) + SETITEM + STOP
    ),
    "APPENDS-memo": (
        PROTO2 + EMPTY_DICT + text("w") + a_tensor() + put(9) + SETITEM
        + get(9) + MARK + integer(7) + APPENDS + STOP
    ),
}  # fmt: skip


@pytest.fixture
def no_torch_load(monkeypatch):
    """``torch.load`` replaced by a failure: a refusal then can only come from the scan."""
    real = torch.load

    def reached(*args, **kwargs):
        pytest.fail("torch.load was reached: the scan let the file through")

    monkeypatch.setattr(torch, "load", reached)
    return real


@pytest.mark.parametrize("case", list(ON_A_TENSOR))
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_filling_a_tensor_is_refused_by_the_scan(tmp_path, case, layout, no_torch_load):
    pkl = ON_A_TENSOR[case]
    if layout == "zip":
        path = torch_zip(tmp_path / "fill.pt", pkl)
    else:  # a legacy file's persistent ids carry a view_metadata (None)
        legacy_tensor = tensor(storage("0", 4, extra=b"N"), (4,), (1,))
        path = legacy(tmp_path / "fill.pt", pkl.replace(a_tensor(), legacy_tensor))
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    opcode = case.split("-")[0]
    assert str(path) in message
    assert f"the pickle applies {opcode} to a tensor" in message
    assert "CVE-2026-24747" in message
    if TORCH_CHECKS_TARGETS and layout == "zip":  # torch >= 2.10 stops it too, on its own
        with pytest.raises(pickle.UnpicklingError, match="Can only"):
            no_torch_load(path, weights_only=True)


WRONG_TARGETS = {
    "APPEND to a dict": (EMPTY_DICT, integer(7) + APPEND),
    "SETITEM to a list": (EMPTY_LIST, integer(0) + integer(7) + SETITEM),
    "APPEND to a set": (EMPTY_SET, integer(7) + APPEND),
    "SETITEM to a storage": (storage("0", 4), integer(0) + integer(7) + SETITEM),
    "SETITEM to a plain value": (
        glob("torch", "device") + text("cpu") + TUPLE1 + REDUCE,
        integer(0) + integer(7) + SETITEM,
    ),
    "APPEND to a literal int": (integer(3), integer(7) + APPEND),
    "BUILD to a dict": (EMPTY_DICT, EMPTY_DICT + BUILD),
    "BUILD to a list": (EMPTY_LIST, EMPTY_DICT + BUILD),
    "BUILD to a tuple": (EMPTY_TUPLE, EMPTY_DICT + BUILD),
}


@pytest.mark.parametrize("case", list(WRONG_TARGETS))
def test_filling_anything_but_its_kind_of_container_is_refused(tmp_path, case, no_torch_load):
    target, fill = WRONG_TARGETS[case]
    path = torch_zip(tmp_path / "fill.pt", _filled(target, fill))
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    opcode, _, kind = case.partition(" to ")
    assert str(path) in str(refused.value)
    assert f"the pickle applies {opcode} to {kind}" in str(refused.value)


# ---- what torch.save writes still reads -----------------------------------------------------


def _real_objects() -> dict[str, object]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  torch.optim.Adam(model.parameters())]  # fmt: skip
    for optimizer in optimizers:
        optimizer.step()
    hooked = nn.Parameter(torch.ones(2))
    hooked.register_hook(lambda grad: grad)
    tagged = torch.arange(3.0)
    tagged.note = "an attribute: _rebuild_from_type_v2"
    return {
        "state_dict": model.state_dict(),  # an OrderedDict with _metadata: BUILD
        "ordered": OrderedDict(a=torch.ones(1), b=OrderedDict(c=torch.zeros(2))),
        "nested": {"w": torch.ones(1), "a": {"b": [torch.ones(1), (torch.zeros(2), {"c": torch.ones(3)})]},
                   "lists": [[1, 2], [torch.ones(1)]]},
        "parameters": {"p": nn.Parameter(torch.ones(3)), "frozen": nn.Parameter(
            torch.ones(2), requires_grad=False), "hooked": hooked, "grad": torch.ones(2,
            requires_grad=True), "tagged": tagged},
        "optimizers": {"w": torch.ones(1), "sgd": optimizers[0].state_dict(),
                       "adam": optimizers[1].state_dict()},
        "lightning": {"epoch": 3, "pytorch-lightning_version": "2.4.0",
                      "state_dict": model.state_dict(),
                      "optimizer_states": [optimizers[1].state_dict()],
                      "hyper_parameters": {"counts": Counter("aab"), "tags": {"a", "b"},
                                           "shape": torch.Size([3]), "blob": bytearray(b"x")}},
    }  # fmt: skip


def _opcodes(raw: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {op.name for op, _, _ in pickletools.genops(data)}


def test_real_files_with_every_container_operation_still_read(tmp_path):
    seen = set()
    for name, obj in _real_objects().items():
        for legacy_format in (False, True):
            path = tmp_path / f"{name}{'-legacy' if legacy_format else ''}.pt"
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
            checkpoint = read_checkpoint(path)
            assert checkpoint.tensors, path
            if not legacy_format:
                seen |= _opcodes(path.read_bytes())
    # The files above use every instruction the rule is about, on the kinds they are for.
    assert {"SETITEM", "SETITEMS", "APPEND", "APPENDS", "BUILD"} <= seen


def test_an_allowed_list_subclass_takes_appends_and_an_allowed_dict_subclass_no_setitems(
    tmp_path, monkeypatch
):
    # torch (>= 2.10) appends to instances of list subclasses the caller allowed, and sets
    # items only on dict, OrderedDict and Counter: the scan draws the same line.
    (tmp_path / "tg_containers.py").write_text(
        "class Tags(list):\n    pass\n\n\nclass Table(dict):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tg_containers

    torch.save({"w": torch.ones(1), "tags": tg_containers.Tags([1, 2])}, tmp_path / "tags.pt")
    torch.save({"w": torch.ones(1), "table": tg_containers.Table(a=1)}, tmp_path / "table.pt")
    checkpoint = read_checkpoint(tmp_path / "tags.pt", allow_globals=["tg_containers.Tags"])
    assert checkpoint.set_aside == {"tags": "Tags of 2"}
    with pytest.raises(CheckpointError, match="applies SETITEM to an object of an allowed global"):
        read_checkpoint(tmp_path / "table.pt", allow_globals=["tg_containers.Table"])
    if TORCH_CHECKS_TARGETS:
        with (
            torch.serialization.safe_globals([tg_containers.Table]),
            pytest.raises(pickle.UnpicklingError, match="Can only SETITEM"),
        ):
            torch.load(tmp_path / "table.pt", weights_only=True)
    sys.modules.pop("tg_containers", None)
