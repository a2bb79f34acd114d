"""The pickle scan's fast path: a whole tensor of a torch.save pickle in one step.

After the first tensor, ``torch.save`` writes every tensor as the same instructions, differing
only in numbers, memo indices and the storage key. One regular-expression match (C speed)
takes such a record; :func:`fast_tensor` checks the values it reads from the memo and makes
the record's effects (memo entries, storage claim, the call) exactly as the scan's loop
would. Anything else falls back to the loop, instruction by instruction. The tests compare
scans with and without this path on real pickles (zip and legacy).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from .nodes import ITEMS, PARENTED

if TYPE_CHECKING:
    from .scan import Scanner

__all__ = ["FAST_OPS", "FAST_PATH", "REBUILD_V2", "fast_tensor"]

#: Take whole tensors of torch.save's pickles in one step (:func:`fast_tensor`);
#: False in tests that check the step against the loop.
FAST_PATH = True
REBUILD_V2 = sys.intern("torch._utils._rebuild_tensor_v2")
_GET, _PUT, _INT = rb"(?:h.|j....)", rb"(?:q.|r....)", rb"(?:K.|M..|J....)"
_TUPLE = rb"(?:\)|%s\x85|%s%s\x86|%s%s%s\x87|\((?:%s)+t)" % ((_INT,) * 7)
#: One tensor as torch.save writes it once its globals and strings are memoized:
#: rebuild ( ( "storage" type key PUT location numel [None] t PUT Q offset size [PUT] stride
#: [PUT] False OrderedDict () R PUT t PUT R (the PUT after the last R is left to the loop;
#: None: a legacy file's view_metadata).
FAST_TENSOR = re.compile(
    rb"(?:h.|j....)\(\((?P<storage>%(g)s)(?P<type>%(g)s)"
    rb"X(?P<klen>[\x01-\x14])\x00\x00\x00(?P<key>[0-9]{1,20})(?P<key_put>%(p)s)"
    rb"(?P<location>%(g)s)(?P<numel>%(i)s)(?P<view>N?)t(?P<pid_put>%(p)s)Q"
    rb"(?P<offset>%(i)s)(?P<size>%(t)s)(?P<size_put>%(p)s)?(?P<stride>%(t)s)(?P<stride_put>%(p)s)?"
    rb"\x89(?P<hooks>%(g)s)\)R(?P<hooks_put>%(p)s)t(?P<args_put>%(p)s)R"
    % {b"g": _GET, b"p": _PUT, b"i": _INT, b"t": _TUPLE},
    re.DOTALL,
)
#: Instructions a fast tensor stands for, counted towards max_pickle_ops.
FAST_OPS = 30


_from_bytes = int.from_bytes
#: Bytes taken by BININT1 (K), BININT2 (M) and BININT (J), opcode included.
_INT_WIDTH = {0x4B: 2, 0x4D: 3, 0x4A: 5}


def _int(op: bytes) -> int:
    """The value of a BININT1, BININT2 or BININT instruction (only BININT is signed)."""
    return _from_bytes(op[1:], "little", signed=op[0] == 0x4A)


def _ints_tuple(ops: bytes, empty_tuple: list) -> list:
    """The tuple node that EMPTY_TUPLE, TUPLE1-3 or MARK..TUPLE of integers makes."""
    if ops == b")":
        return empty_tuple
    end = len(ops) - 1  # the TUPLE/TUPLEn opcode
    at = 1 if ops[0] == 0x28 else 0  # MARK
    values = []
    while at < end:
        width = _INT_WIDTH[ops[at]]
        values.append(_from_bytes(ops[at + 1 : at + width], "little", signed=width == 5))
        at += width
    return ["tuple", values, 1, False, 0, 0]


def fast_tensor(scan: Scanner, memo: dict, pos: int, empty_tuple: list) -> tuple[list, int] | None:
    """A whole tensor of a torch.save pickle in one step, or None (then op by op).

    After the first tensor, torch.save writes every tensor as the same instructions,
    differing only in numbers, memo indices and the storage key (:data:`FAST_TENSOR`).
    One regular-expression match finds such a record; the values it reads from the memo
    are checked, and the effects of its instructions (the memo entries, the storage claim,
    the call) are made exactly as the loop and its methods would make them. Anything else
    (an unexpected value, a negative number, a tiny depth limit) falls back to the loop.
    The tests compare scans with and without this path.
    """
    if not FAST_PATH:
        return None
    match = FAST_TENSOR.match(scan.data, pos)
    if match is None:
        return None
    (named, stype, klen, key, key_put, location, numel, view, pid_put, offset, size,
     size_put, stride, stride_put, hooks_type, hooks_put, args_put) = match.groups()  # fmt: skip
    try:  # a GET's or PUT's index is its bytes after the opcode, little-endian
        named = memo[_from_bytes(named[1:], "little")]
        stype = memo[_from_bytes(stype[1:], "little")]
        location = memo[_from_bytes(location[1:], "little")]
        hooks_type = memo[_from_bytes(hooks_type[1:], "little")]
    except KeyError:
        return None
    if (
        named != b"storage"
        or hooks_type != "collections.OrderedDict"
        or type(stype) is not str
        or type(location) is not bytes
        or len(key) != klen[0]
    ):
        return None
    numel, size = _int(numel), _ints_tuple(size, empty_tuple)
    elements = 1
    for n in size[ITEMS]:
        if n < 0:
            return None  # let the loop refuse it, with its message
        elements *= n
    if numel < 0 or scan.limits.max_depth < 4:
        return None
    result = scan.result
    # The key's PUT, then the persistent id, as storage() takes it.
    memo[_from_bytes(key_put[1:], "little")] = key
    # a legacy file's persistent id ends with view_metadata (None)
    fields = (
        [named, stype, key, location, numel, None] if view else [named, stype, key, location, numel]
    )
    pid = ["tuple", fields, 1, True, 0, 0]
    memo[_from_bytes(pid_put[1:], "little")] = pid
    itemsize = scan.itemsizes.get(stype, 1)
    storages, name = result.storages, key.decode("ascii")
    if numel * itemsize > storages.get(name, -1):
        storages[name] = numel * itemsize
    storage = ["storage", [pid], 2, True, numel, itemsize]
    if size_put:
        memo[_from_bytes(size_put[1:], "little")] = size
    stride = _ints_tuple(stride, empty_tuple)
    if stride_put:
        memo[_from_bytes(stride_put[1:], "little")] = stride
    size[PARENTED] = stride[PARENTED] = True
    hooks = ["odict", None, 2, True, 0, 0]  # OrderedDict(), as the loop's REDUCE makes it
    memo[_from_bytes(hooks_put[1:], "little")] = hooks
    args = ["tuple", [storage, _int(offset), size, stride, None, hooks], 3, True, 0, 0]
    memo[_from_bytes(args_put[1:], "little")] = args
    # The call, as call() and tensor_view() make it.
    result.calls += 2
    result.claimed += elements * itemsize
    result.tensors += 1
    return ["tensor", [args], 4, False, elements, itemsize], match.end()
