"""A static scan of a torch pickle, done before torch's unpickler runs any of it.

Defence in depth, as picklescan and fickling do it: the pickle's instructions are decoded and
followed *symbolically*, never executed. The scan reads exactly the instructions torch's
``weights_only`` unpickler reads, decoded the same way (``torch/_weights_only_unpickler.py``:
the same opcodes, the same ``GLOBAL`` name mapping), so what it checks is what torch would run.
Any other instruction is refused, as torch would refuse it.

The scan keeps a stack of *descriptions* instead of objects: literal values (``bytes`` for
text, ``int``, ``None``), global names (``str``), and nodes for everything built (tuples,
lists, dicts, storages, tensors, results of calls), each with the height of the containers
nested below it. With that it finds, before anything is allocated or called:

- every global outside the allowed set (all of them, for one refusal message);
- containers nested deeper than ``max_depth`` (a tuple nested a million times used as a dict
  key crashes CPython while hashing it);
- more than ``max_pickle_ops`` instructions, or ``max_tensors`` tensors;
- the bytes the pickle makes torch allocate or view: storage sizes (checked by the caller
  against the records that hold them), tensor views (a stride-0 view claims its full size,
  since a conversion materialises it), ``bytearray(n)``, tensor constructors;
- calls whose arguments would let a small file cost a lot: ``_codecs.encode`` with a codec
  other than ``latin1`` (the quadratic ``punycode``, chosen by the file), collection
  constructors applied to a tensor (iterating a huge view), sizes that are not written out;
- instructions that fill an object applied to the wrong kind of object: SETITEM(S) to
  anything but a dict (an ``OrderedDict``, a ``Counter``), APPEND(S) to anything but a list,
  BUILD to anything but a tensor, an ``OrderedDict`` or an object of an allowed class. torch
  2.10 and later refuse these too; older torch runs ``tensor[key] = value`` (CVE-2026-24747),
  so the scan must not rely on the unpickler behind it.

Heights are kept exact cheaply: a container's height is known when it is built, and only a
container mutated after it was placed inside another can make an ancestor deeper than
recorded. Real pickles never do that; when one does, the heights are recomputed over the whole
graph at the end.

Speed matters (the scan runs on every read): nodes are plain lists (:mod:`.nodes`),
the loop tests the opcodes of ``torch.save``'s pickles most frequent first, and tensors as
``torch.save`` writes them are taken whole (:mod:`.fast`). This module is the loop; the
scan's state and what the instructions that make or fill objects do are in :mod:`.state`,
and what calls may do is decided in :mod:`.calls`.
"""

from __future__ import annotations

import struct
from typing import Any

from ...errors import CheckpointError
from ..limits import ReaderLimits, limit_error
from .fast import FAST_OPS, REBUILD_V2, fast_tensor
from .nodes import HEIGHT, LONG, graph_height
from .state import PickleScan, ScanState

__all__ = ["PickleScan", "Scanner", "scan_pickle"]

#: Text longer than this is not kept (only its being text matters).
_KEEP_TEXT = 4096


def scan_pickle(
    data: Any,
    start: int,
    allowed: frozenset[str],
    limits: ReaderLimits,
    origin: str,
    list_types: frozenset[str] = frozenset(),
) -> PickleScan:
    """Scan the pickle starting at ``data[start]``.

    Args:
        data: the bytes holding the pickle (``bytes`` or an ``mmap``), possibly followed by
            other data; the scan reads at most ``limits.max_metadata_bytes`` of it.
        start: where the pickle starts.
        allowed: the global names torch will accept (its safe list plus the caller's).
        limits: ``max_depth``, ``max_pickle_ops``, ``max_tensors`` and
            ``max_metadata_bytes`` are enforced here; claimed bytes are returned for the
            caller to check.
        origin: the file, for messages.
        list_types: the allowed globals that are list subclasses (torch appends to their
            instances).

    Raises:
        CheckpointError: a damaged pickle, an instruction torch does not read, a limit
            exceeded, or a call that could cost any amount (each message names the file).
    """
    scanner = Scanner(data, allowed, limits, origin, list_types)
    try:
        scanner.run(start)
    except CheckpointError:
        raise
    except (IndexError, struct.error):
        # Reading past the data (struct, bytes, mmap) or popping an empty stack (list).
        raise scanner.damaged("it ends early or uses values it never made") from None
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise scanner.damaged(f"{type(exc).__name__} near byte {scanner.pos - start}") from None
    return scanner.result


class Scanner(ScanState):
    """The scan's instruction loop, over the state and the effects of
    :class:`~.state.ScanState`."""

    def over(self, ops: int, pos: int, limit: int, start: int, marks: int) -> None:
        """Raise for the bound the loop just crossed."""
        self.pos = pos
        if marks > self.limits.max_depth:
            raise self.too_deep(marks)
        if ops > self.limits.max_pickle_ops:
            raise limit_error(
                self.origin, "max_pickle_ops",
                f"more than {self.limits.max_pickle_ops:,} pickle instructions", self.limits,
            )  # fmt: skip
        if limit < len(self.data):
            raise limit_error(
                self.origin, "max_metadata_bytes",
                f"a pickle that does not end within {limit - start:,} bytes", self.limits,
            )  # fmt: skip
        raise self.damaged("it ends before its STOP instruction")

    # ---- the instruction loop ----------------------------------------------------------

    def run(self, start: int) -> None:
        # One branch per opcode, as in torch's unpickler, the most frequent first. A branch
        # that makes a value sets ``value`` and falls through to the push below, which also
        # takes the PUT that follows almost every value in torch.save's pickles: one turn of
        # the loop fewer for a quarter of the instructions.
        data, max_depth, max_ops = self.data, self.limits.max_depth, self.limits.max_pickle_ops
        # Instructions that make or remember an object are counted (the scan's memory and
        # time, and the unpickler's, follow them); the rest can only repeat within ``limit``.
        limit, ops = min(len(data), start + self.limits.max_metadata_bytes), 0
        memo: dict[int, Any] = {}
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        push = stack.append
        unpack_from = struct.unpack_from
        empty_tuple = ["tuple", [], 1, False, 0, 0]  # shared: a tuple never changes
        pos = start
        while True:
            op = data[pos]
            if op == 0x68:  # BINGET
                value = memo[data[pos + 1]]
                if value is REBUILD_V2 and (taken := fast_tensor(self, memo, pos, empty_tuple)):
                    value, pos = taken
                    ops += FAST_OPS
                else:
                    pos += 2
            elif op == 0x4B:  # BININT1
                value = data[pos + 1]
                pos += 2
            elif op == 0x58:  # BINUNICODE
                n = unpack_from("<I", data, pos + 1)[0]
                pos += 5 + n
                if pos > len(data):
                    raise IndexError("a string runs past the end")
                value = data[pos - n : pos] if n <= _KEEP_TEXT else LONG
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
                push = stack.append
                pos += 1
                ops += 1
                if ops > max_ops or pos > limit or len(metastack) > max_depth:
                    self.over(ops, pos, limit, start, len(metastack))
                continue
            elif op == 0x74 or 0x85 <= op <= 0x87:  # TUPLE, TUPLE1, TUPLE2, TUPLE3
                if op == 0x74:
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                else:
                    n = op - 0x84
                    if len(stack) < n:
                        raise IndexError("a tuple of missing items")
                    items = stack[-n:]
                    del stack[-n:]
                height = 0
                for item in items:
                    if type(item) is list:
                        item[3] = True  # parented
                        if item[2] > height:
                            height = item[2]
                if height >= max_depth:
                    self.pos = pos
                    raise self.too_deep(height + 1)
                value = ["tuple", items, height + 1, False, 0, 0]
                pos += 1
            elif op == 0x52 or op == 0x81:  # REDUCE, NEWOBJ
                self.pos = pos
                args = stack.pop()
                func = stack.pop()
                if args is empty_tuple and func == "collections.OrderedDict":
                    self.result.calls += 1  # the empty hooks dict of every tensor
                    value = ["odict", None, 2, False, 0, 0]
                else:
                    value = self.call(func, args)
                pos += 1
            elif op == 0x72:  # LONG_BINPUT
                memo[unpack_from("<I", data, pos + 1)[0]] = stack[-1]
                pos += 5
                ops += 1
                if ops > max_ops or pos > limit:
                    self.over(ops, pos, limit, start, 0)
                continue
            elif op == 0x4D:  # BININT2
                value = unpack_from("<H", data, pos + 1)[0]
                pos += 3
            elif op == 0x29:  # EMPTY_TUPLE
                value = empty_tuple
                pos += 1
            elif op == 0x51:  # BINPERSID
                self.pos = pos
                value = self.storage(stack.pop())
                pos += 1
            elif op == 0x89 or op == 0x88 or op == 0x4E:  # NEWFALSE, NEWTRUE, NONE
                value = None
                pos += 1
            elif op == 0x71:  # BINPUT
                memo[data[pos + 1]] = stack[-1]
                pos += 2
                continue
            elif op == 0x73 or op == 0x75 or op == 0x61 or op == 0x65:  # SETITEM(S), APPEND(S)
                if op == 0x75 or op == 0x65:
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                else:
                    n = 2 if op == 0x73 else 1
                    if len(stack) < n + 1:
                        raise IndexError("an item added to nothing")
                    items = stack[-n:]
                    del stack[-n:]
                self.pos = pos
                self.fill(op, stack[-1])
                self.grow(stack[-1], items)
                pos += 1
                continue
            elif op == 0x7D or op == 0x5D or op == 0x8F:  # EMPTY_DICT, EMPTY_LIST, EMPTY_SET
                kind = "dict" if op == 0x7D else "list" if op == 0x5D else "set"
                value = [kind, None, 1, False, 0, 0]  # items: made when some are added
                pos += 1
            elif op == 0x6A:  # LONG_BINGET
                value = memo[unpack_from("<I", data, pos + 1)[0]]
                if value is REBUILD_V2 and (taken := fast_tensor(self, memo, pos, empty_tuple)):
                    value, pos = taken
                    ops += FAST_OPS
                else:
                    pos += 5
            elif op == 0x4A:  # BININT
                value = unpack_from("<i", data, pos + 1)[0]
                pos += 5
            elif op == 0x63:  # GLOBAL
                self.pos = pos
                value, pos = self.global_name(pos + 1)
                if value not in self.allowed and value not in self.result.refused:
                    self.result.refused.append(value)
            elif op == 0x8A:  # LONG1
                n = data[pos + 1]
                pos += 2 + n
                if pos > len(data):
                    raise IndexError("a number runs past the end")
                value = int.from_bytes(data[pos - n : pos], "little", signed=True)
            elif op == 0x47:  # BINFLOAT
                unpack_from(">d", data, pos + 1)
                value = 0.0
                pos += 9
            elif op == 0x55:  # SHORT_BINSTRING
                n = data[pos + 1]
                pos += 2 + n
                if pos > len(data):
                    raise IndexError("a string runs past the end")
                value = data[pos - n : pos]
            elif op == 0x62:  # BUILD
                self.pos = pos
                state = stack.pop()
                self.fill(op, stack[-1])
                self.build(stack[-1], state)
                pos += 1
                continue
            elif op == 0x80:  # PROTO
                pos += 2
                if pos > limit:
                    self.over(ops, pos, limit, start, 0)
                continue
            elif op == 0x2E:  # STOP
                top = stack.pop()
                pos += 1
                break
            else:
                self.pos = pos
                raise self.damaged(
                    f"instruction 0x{op:02x} at byte {pos - start}, which torch's safe loader "
                    "does not read"
                )
            push(value)
            ops += 1
            if ops > max_ops or pos > limit:
                self.over(ops, pos, limit, start, 0)
            op = data[pos]
            if op == 0x71:  # BINPUT
                memo[data[pos + 1]] = value
                pos += 2
            elif op == 0x72:  # LONG_BINPUT
                memo[unpack_from("<I", data, pos + 1)[0]] = value
                pos += 5
        self.pos = self.result.end = pos
        self.finish(top)

    def finish(self, top: Any) -> None:
        result = self.result
        result.depth = (
            graph_height(top) if self.dirty else (top[HEIGHT] if type(top) is list else 0)
        )
        if result.depth > self.limits.max_depth:
            raise self.too_deep(result.depth)
        if result.tensors > self.limits.max_tensors:
            raise limit_error(
                self.origin, "max_tensors", f"{result.tensors:,} tensors", self.limits
            )
