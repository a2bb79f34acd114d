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
  constructors applied to a tensor (iterating a huge view), sizes that are not written out.

Heights are kept exact cheaply: a container's height is known when it is built, and only a
container mutated after it was placed inside another can make an ancestor deeper than
recorded. Real pickles never do that; when one does, the heights are recomputed over the whole
graph at the end.

Speed matters (the scan runs on every read): a node is a plain list
``[kind, items, height, parented, numel, itemsize]`` and the loop tests the opcodes of
``torch.save``'s pickles most frequent first. A ResNet-50 state_dict (11,000 instructions)
scans in a small fraction of its read time.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import CheckpointError
from .limits import ReaderLimits, limit_error

__all__ = ["ALLOWED_CODECS", "PickleScan", "scan_pickle"]

#: Codecs ``_codecs.encode`` may be called with: pickle protocol 2 writes ``bytes`` as
#: ``_codecs.encode(text, "latin1")``, the only use torch's own files make of it.
ALLOWED_CODECS = frozenset({b"latin1", b"latin-1"})
#: Text longer than this is not kept (only its being text matters).
_KEEP_TEXT = 4096
#: The longest ``module\nname\n`` of a GLOBAL read.
_MAX_GLOBAL = 2048

# A node: [kind, items, height, parented, numel, itemsize] (a list: built fastest).
KIND, ITEMS, HEIGHT, PARENTED, NUMEL, ITEMSIZE = range(6)
#: Node kinds that are plain data: iterating them costs what the file spelled out.
_DATA = frozenset({"tuple", "list", "dict", "set", "bytes", "size"})
_TENSORS = frozenset({"tensor", "storage"})
_CONTAINERS = frozenset({"list", "dict", "set", "object", "tensor", "newtensor"})


class _Long:
    """A text literal too long to keep."""


_LONG = _Long()


@dataclass
class PickleScan:
    """What a scan found (the caller checks storages against their records).

    Attributes:
        end: the offset just past the pickle's STOP.
        refused: globals outside the allowed set, in order of first use.
        storages: storage key -> bytes claimed (the largest claim for the key).
        claimed: bytes claimed beyond storages: views, arrays, constructed tensors.
        tensors: tensors the pickle builds.
        calls: calls made (REDUCE, NEWOBJ, BUILD).
        depth: the deepest container nesting.
    """

    end: int = 0
    refused: list[str] = field(default_factory=list)
    storages: dict[str, int] = field(default_factory=dict)
    claimed: int = 0
    tensors: int = 0
    calls: int = 0
    depth: int = 0


def scan_pickle(
    data: Any, start: int, allowed: frozenset[str], limits: ReaderLimits, origin: str
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

    Raises:
        CheckpointError: a damaged pickle, an instruction torch does not read, a limit
            exceeded, or a call that could cost any amount (each message names the file).
    """
    scanner = _Scanner(data, allowed, limits, origin)
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


class _Scanner:
    def __init__(self, data: Any, allowed: frozenset[str], limits: ReaderLimits, origin: str):
        self.data, self.allowed, self.limits, self.origin = data, allowed, limits, origin
        self.result = PickleScan()
        self.itemsizes = _itemsizes()
        self.pos = 0
        self.dirty = False  # a container grew after being nested: recompute heights at the end

    # ---- messages ----------------------------------------------------------------------

    def damaged(self, reason: str) -> CheckpointError:
        return CheckpointError(
            f"{self.origin}: cannot be read as a torch file: a damaged pickle ({reason})"
        )

    def crafted(self, reason: str) -> CheckpointError:
        return CheckpointError(
            f"{self.origin}: refused: the pickle {reason}; torch.save never writes this, so "
            "the file is damaged or crafted"
        )

    def too_deep(self, height: int) -> CheckpointError:
        return limit_error(
            self.origin, "max_depth", f"containers nested {height:,} deep", self.limits
        )

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
                if value is _REBUILD_V2 and (taken := self.fast_tensor(memo, pos, empty_tuple)):
                    value, pos = taken
                    ops += _FAST_OPS
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
                value = data[pos - n : pos] if n <= _KEEP_TEXT else _LONG
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
                    value = ["dict", None, 2, False, 0, 0]
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
                self.grow(stack[-1], items)
                pos += 1
                continue
            elif op == 0x7D or op == 0x5D or op == 0x8F:  # EMPTY_DICT, EMPTY_LIST, EMPTY_SET
                kind = "dict" if op == 0x7D else "list" if op == 0x5D else "set"
                value = [kind, None, 1, False, 0, 0]  # items: made when some are added
                pos += 1
            elif op == 0x6A:  # LONG_BINGET
                value = memo[unpack_from("<I", data, pos + 1)[0]]
                if value is _REBUILD_V2 and (taken := self.fast_tensor(memo, pos, empty_tuple)):
                    value, pos = taken
                    ops += _FAST_OPS
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
            _graph_height(top) if self.dirty else (top[HEIGHT] if type(top) is list else 0)
        )
        if result.depth > self.limits.max_depth:
            raise self.too_deep(result.depth)
        if result.tensors > self.limits.max_tensors:
            raise limit_error(
                self.origin, "max_tensors", f"{result.tensors:,} tensors", self.limits
            )

    def global_name(self, pos: int) -> tuple[str, int]:
        # torch: module = readline()[:-1].decode("utf-8"), the same for the name, then
        # torch._utils' Python 2 name tables.
        text = bytes(self.data[pos : pos + _MAX_GLOBAL])
        first = text.find(b"\n")
        second = text.find(b"\n", first + 1) if first >= 0 else -1
        if second < 0:
            raise self.damaged("a global name without its end")
        module, name = text[:first].decode("utf-8"), text[first + 1 : second].decode("utf-8")
        names, imports = _name_tables()
        if (module, name) in names:
            module, name = names[(module, name)]
        elif module in imports:
            module = imports[module]
        return sys.intern(f"{module}.{name}"), pos + second + 1  # interned: compared by "is"

    def fast_tensor(self, memo: dict, pos: int, empty_tuple: list) -> tuple[list, int] | None:
        """A whole tensor of a torch.save pickle in one step, or None (then op by op).

        After the first tensor, torch.save writes every tensor as the same instructions,
        differing only in numbers, memo indices and the storage key (:data:`_FAST_TENSOR`).
        One regular-expression match finds such a record; the values it reads from the memo
        are checked, and the effects of its instructions (the memo entries, the storage claim,
        the call) are made exactly as the loop and its methods would make them. Anything else
        (an unexpected value, a negative number, a tiny depth limit) falls back to the loop.
        The tests compare scans with and without this path.
        """
        if not _FAST_PATH:
            return None
        match = _FAST_TENSOR.match(self.data, pos)
        if match is None:
            return None
        (named, stype, klen, key, key_put, location, numel, view, pid_put, offset, size,
         size_put, stride, stride_put, hooks_type, hooks_put, args_put) = match.groups()  # fmt: skip
        try:  # a GET's or PUT's index is its bytes after the opcode, little-endian
            named = memo[from_bytes(named[1:], "little")]
            stype = memo[from_bytes(stype[1:], "little")]
            location = memo[from_bytes(location[1:], "little")]
            hooks_type = memo[from_bytes(hooks_type[1:], "little")]
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
        if numel < 0 or self.limits.max_depth < 4:
            return None
        result = self.result
        # The key's PUT, then the persistent id, as storage() takes it.
        memo[from_bytes(key_put[1:], "little")] = key
        # a legacy file's persistent id ends with view_metadata (None)
        fields = (
            [named, stype, key, location, numel, None]
            if view
            else [named, stype, key, location, numel]
        )
        pid = ["tuple", fields, 1, True, 0, 0]
        memo[from_bytes(pid_put[1:], "little")] = pid
        itemsize = self.itemsizes.get(stype, 1)
        storages, name = result.storages, key.decode("ascii")
        if numel * itemsize > storages.get(name, -1):
            storages[name] = numel * itemsize
        storage = ["storage", [pid], 2, True, numel, itemsize]
        if size_put:
            memo[from_bytes(size_put[1:], "little")] = size
        stride = _ints_tuple(stride, empty_tuple)
        if stride_put:
            memo[from_bytes(stride_put[1:], "little")] = stride
        size[PARENTED] = stride[PARENTED] = True
        hooks = ["dict", None, 2, True, 0, 0]  # OrderedDict(), as the loop's REDUCE makes it
        memo[from_bytes(hooks_put[1:], "little")] = hooks
        args = ["tuple", [storage, _int(offset), size, stride, None, hooks], 3, True, 0, 0]
        memo[from_bytes(args_put[1:], "little")] = args
        # The call, as call() and tensor_view() make it.
        result.calls += 2
        result.claimed += elements * itemsize
        result.tensors += 1
        return ["tensor", [args], 4, False, elements, itemsize], match.end()

    # ---- what instructions build -------------------------------------------------------

    def grow(self, target: Any, items: list) -> None:
        """``target`` gains ``items`` (APPEND(S), SETITEM(S), BUILD's state)."""
        if type(target) is not list or target[KIND] not in _CONTAINERS:
            raise self.damaged("items added to something that is not a container")
        if target[ITEMS] is None:
            target[ITEMS] = list(items)
        else:
            target[ITEMS].extend(items)
        height = _height(items)
        if height > target[HEIGHT]:
            if target[PARENTED]:
                self.dirty = True
            target[HEIGHT] = height
            if height > self.limits.max_depth:
                raise self.too_deep(height)

    def storage(self, pid: Any) -> list:
        """A persistent id: ``("storage", type, key, location, numel[, view_metadata])``."""
        items = pid[ITEMS] if type(pid) is list and pid[KIND] == "tuple" else None
        if not items or len(items) not in (5, 6) or items[0] != b"storage":
            raise self.crafted("loads a persistent object that is not a storage")
        kind, key, numel = items[1], items[2], items[4]
        if type(key) is bytes:
            key = key.decode("utf-8", "surrogatepass")
        if type(key) not in (str, int) or type(numel) is not int or numel < 0:
            raise self.crafted("names a storage without a plain key and size")
        itemsize = self.itemsizes.get(kind, 1) if type(kind) is str else 1
        claimed, key = numel * itemsize, str(key)
        storages = self.result.storages
        if claimed > storages.get(key, -1):
            storages[key] = claimed
        pid[PARENTED] = True
        return ["storage", [pid], pid[HEIGHT] + 1, False, numel, itemsize]

    def build(self, inst: Any, state: Any) -> None:
        self.result.calls += 1
        if type(inst) is list and inst[KIND] in ("tensor", "newtensor"):
            items = state[ITEMS] if type(state) is list and state[KIND] == "tuple" else ()
            if len(items) >= 3 and type(items[0]) is list and items[0][KIND] == "storage":
                # Tensor.set_(storage, offset, size, stride): a view of the stated size
                numel = self.numel(items[2])
                self.result.claimed += numel * items[0][ITEMSIZE]
                if inst[KIND] == "newtensor":
                    self.result.tensors += 1
                inst[KIND], inst[NUMEL], inst[ITEMSIZE] = "tensor", numel, items[0][ITEMSIZE]
        self.grow(inst, [state])

    def call(self, func: Any, args: Any) -> list:
        """REDUCE (``func(*args)``) or NEWOBJ (``func.__new__(func, *args)``)."""
        self.result.calls += 1
        if type(func) is not str:
            raise self.crafted("calls something that is not a named global")
        if type(args) is not list or args[KIND] != "tuple":
            raise self.crafted(f"calls {func} with arguments that are not a tuple")
        rule = _RULES.get(func)
        if rule is None and func in _constructors():
            rule = _Scanner.construct
        node = (
            [_KINDS.get(func, "object"), [], 1, False, 0, 0]
            if rule is None
            else rule(self, func, args[ITEMS])
        )
        node[ITEMS].append(args)
        args[PARENTED] = True
        if args[HEIGHT] >= node[HEIGHT]:
            node[HEIGHT] = args[HEIGHT] + 1
            if node[HEIGHT] > self.limits.max_depth:
                raise self.too_deep(node[HEIGHT])
        return node

    # ---- call rules --------------------------------------------------------------------

    def numel(self, size: Any) -> int:
        if type(size) is not list or size[KIND] not in ("tuple", "size"):
            raise self.crafted("gives a tensor a size that is not a tuple of numbers")
        numel = 1
        for n in size[ITEMS]:
            if type(n) is not int or n < 0:
                raise self.crafted("gives a tensor a size that is not written out as numbers")
            numel *= n
        return numel

    def tensor_view(self, func: str, args: list) -> list:
        # _rebuild_tensor(_v2, _v3)(storage, offset, size, stride, ...) and _rebuild_qtensor:
        # a view of ``size`` elements of the storage's (or v3's explicit) dtype.
        if len(args) < 4:
            raise self.crafted(f"calls {func} with too few arguments")
        numel = self.numel(args[2])
        storage = args[0]
        itemsize = storage[ITEMSIZE] if type(storage) is list and storage[KIND] == "storage" else 16
        if func.endswith("_v3") and len(args) > 6 and type(args[6]) is str:
            itemsize = max(itemsize, self.itemsizes.get(args[6], 16))
        self.result.claimed += numel * itemsize
        self.result.tensors += 1
        return ["tensor", [], 1, False, numel, itemsize]

    def tensor_other(self, func: str, args: list) -> list:
        # Tensors without storage of their own size: meta, sparse, nested, wrapper subclass.
        self.result.tensors += 1
        return ["tensor", [], 1, False, 0, 0]

    def parameter(self, func: str, args: list) -> list:
        data = args[0] if args else None
        if type(data) is list and data[KIND] == "tensor":
            return ["tensor", [], 1, False, data[NUMEL], data[ITEMSIZE]]
        return ["tensor", [], 1, False, 0, 0]

    def device_copy(self, func: str, args: list) -> list:
        # _rebuild_device_tensor_from_cpu_tensor(data, dtype, ...): data.to(dtype) copies it.
        data = args[0] if args else None
        numel = data[NUMEL] if type(data) is list and data[KIND] == "tensor" else 0
        dtype = args[1] if len(args) > 1 else None
        self.result.claimed += numel * (self.itemsizes.get(dtype, 16) if type(dtype) is str else 16)
        return ["tensor", [], 1, False, numel, 0]

    def from_type(self, func: str, args: list) -> list:
        # _rebuild_from_type_v2(func, new_type, args, state): func(*args), then the state.
        if len(args) != 4 or type(args[0]) is not str:
            raise self.crafted(f"calls {func} without a named function to rebuild with")
        inner = self.call(args[0], args[2])
        return [inner[KIND], [inner], inner[HEIGHT] + 1, False, inner[NUMEL], inner[ITEMSIZE]]

    def collection(self, func: str, args: list) -> list:
        # set(x), Counter(x), OrderedDict(x): iterating a tensor would make one Python object
        # per element of a view of any size.
        for arg in args:
            if type(arg) is list and arg[KIND] not in _DATA:
                raise self.crafted(f"calls {func} on a {arg[KIND]}")
        return [_KINDS.get(func, "object"), [], 1, False, 0, 0]

    def plain_values(self, func: str, args: list) -> list:
        if any(type(arg) is list for arg in args):
            raise self.crafted(f"calls {func} with a container argument")
        return ["object", [], 1, False, 0, 0]

    def size(self, func: str, args: list) -> list:
        if len(args) > 1 or (args and not (type(args[0]) is list and args[0][KIND] in _DATA)):
            raise self.crafted(f"calls {func} on something that is not a tuple of numbers")
        return ["size", list(args[0][ITEMS]) if args else [], 1, False, 0, 0]

    def encode(self, func: str, args: list) -> list:
        # pickle protocol 2 writes bytes as _codecs.encode(text, "latin1"); any other codec
        # comes from the file (punycode is quadratic: a 27 KB file could run for minutes).
        if len(args) not in (2, 3) or not (type(args[0]) is bytes or args[0] is _LONG):
            raise self.crafted(f"calls {func} with other arguments than text and a codec")
        if args[1] not in ALLOWED_CODECS or (len(args) == 3 and args[2] != b"strict"):
            raise self.crafted(f"calls {func} with codec {_shown(args[1])}, not latin1")
        return ["bytes", [], 1, False, 0, 0]

    def bytearray_(self, func: str, args: list) -> list:
        if len(args) == 1 and type(args[0]) is int:
            if args[0] < 0:
                raise self.crafted(f"calls {func} with a negative size")
            self.result.claimed += args[0]  # bytearray(n): n zero bytes, written
        elif len(args) >= 2:
            return self.encode(func, args)
        elif args and type(args[0]) is list and args[0][KIND] not in _DATA:
            raise self.crafted(f"calls {func} on a {args[0][KIND]}")
        return ["bytes", [], 1, False, 0, 0]

    def construct(self, func: str, args: list) -> list:
        # torch.Tensor(*sizes), torch.FloatTensor(...), UntypedStorage(n): sizes allocate.
        if not args:
            return ["newtensor", [], 1, False, 0, 0]
        first = args[0]
        if all(type(arg) is int for arg in args):
            self.result.claimed += self.numel(["tuple", list(args), 1, False, 0, 0]) * 16
        elif len(args) == 1 and type(first) is list and first[KIND] == "size":
            self.result.claimed += self.numel(first) * 16
        elif len(args) == 1 and type(first) is list and first[KIND] in _DATA | _TENSORS:
            pass  # data written out in the file, or a view of a storage already counted
        else:
            raise self.crafted(f"calls {func} with arguments that are not sizes or data")
        self.result.tensors += 1
        return ["tensor", [], 1, False, 0, 0]


def _shown(value: Any) -> str:
    if type(value) is bytes:
        return ascii(value.decode("utf-8", "replace")[:60])
    return f"a {value[KIND]}" if type(value) is list else type(value).__name__


def _height(items: list) -> int:
    height = 0
    for item in items:
        if type(item) is list:
            item[PARENTED] = True
            if item[HEIGHT] > height:
                height = item[HEIGHT]
    return height + 1


def _graph_height(top: Any) -> int:
    """The true nesting height below ``top``, walked without recursion (cycles count once)."""
    if type(top) is not list:
        return 0
    heights: dict[int, int] = {}
    on_path: set[int] = set()
    todo: list[tuple[list, bool]] = [(top, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            heights[key] = 1 + max(
                (heights.get(id(c), 0) for c in node[ITEMS] or () if type(c) is list), default=0
            )
            continue
        if key in heights or key in on_path:
            continue
        on_path.add(key)
        todo.append((node, True))
        todo.extend(
            (c, False) for c in node[ITEMS] or () if type(c) is list and id(c) not in heights
        )
    return heights[id(top)]


#: Take whole tensors of torch.save's pickles in one step (:meth:`_Scanner.fast_tensor`);
#: False in tests that check the step against the loop.
_FAST_PATH = True
_REBUILD_V2 = sys.intern("torch._utils._rebuild_tensor_v2")
_GET, _PUT, _INT = rb"(?:h.|j....)", rb"(?:q.|r....)", rb"(?:K.|M..|J....)"
_TUPLE = rb"(?:\)|%s\x85|%s%s\x86|%s%s%s\x87|\((?:%s)+t)" % ((_INT,) * 7)
#: One tensor as torch.save writes it once its globals and strings are memoized:
#: rebuild ( ( "storage" type key PUT location numel [None] t PUT Q offset size [PUT] stride
#: [PUT] False OrderedDict () R PUT t PUT R (the PUT after the last R is left to the loop;
#: None: a legacy file's view_metadata).
_FAST_TENSOR = re.compile(
    rb"(?:h.|j....)\(\((?P<storage>%(g)s)(?P<type>%(g)s)"
    rb"X(?P<klen>[\x01-\x14])\x00\x00\x00(?P<key>[0-9]{1,20})(?P<key_put>%(p)s)"
    rb"(?P<location>%(g)s)(?P<numel>%(i)s)(?P<view>N?)t(?P<pid_put>%(p)s)Q"
    rb"(?P<offset>%(i)s)(?P<size>%(t)s)(?P<size_put>%(p)s)?(?P<stride>%(t)s)(?P<stride_put>%(p)s)?"
    rb"\x89(?P<hooks>%(g)s)\)R(?P<hooks_put>%(p)s)t(?P<args_put>%(p)s)R"
    % {b"g": _GET, b"p": _PUT, b"i": _INT, b"t": _TUPLE},
    re.DOTALL,
)
#: Instructions a fast tensor stands for, counted towards max_pickle_ops.
_FAST_OPS = 30


from_bytes = int.from_bytes
#: Bytes taken by BININT1 (K), BININT2 (M) and BININT (J), opcode included.
_INT_WIDTH = {0x4B: 2, 0x4D: 3, 0x4A: 5}


def _int(op: bytes) -> int:
    """The value of a BININT1, BININT2 or BININT instruction (only BININT is signed)."""
    return from_bytes(op[1:], "little", signed=op[0] == 0x4A)


def _ints_tuple(ops: bytes, empty_tuple: list) -> list:
    """The tuple node that EMPTY_TUPLE, TUPLE1-3 or MARK..TUPLE of integers makes."""
    if ops == b")":
        return empty_tuple
    end = len(ops) - 1  # the TUPLE/TUPLEn opcode
    at = 1 if ops[0] == 0x28 else 0  # MARK
    values = []
    while at < end:
        width = _INT_WIDTH[ops[at]]
        values.append(from_bytes(ops[at + 1 : at + width], "little", signed=width == 5))
        at += width
    return ["tuple", values, 1, False, 0, 0]


_REBUILD = "torch._utils."
_RULES: dict[str, Callable[[_Scanner, str, list], list]] = {
    **dict.fromkeys(
        [f"{_REBUILD}_rebuild_tensor", f"{_REBUILD}_rebuild_tensor_v2",
         f"{_REBUILD}_rebuild_tensor_v3", f"{_REBUILD}_rebuild_qtensor"],
        _Scanner.tensor_view,
    ),
    **dict.fromkeys(
        [f"{_REBUILD}_rebuild_meta_tensor_no_storage", f"{_REBUILD}_rebuild_sparse_tensor",
         f"{_REBUILD}_rebuild_nested_tensor", f"{_REBUILD}_rebuild_wrapper_subclass"],
        _Scanner.tensor_other,
    ),
    **dict.fromkeys(
        [f"{_REBUILD}_rebuild_parameter", f"{_REBUILD}_rebuild_parameter_with_state",
         "torch.nn.parameter.Parameter"],
        _Scanner.parameter,
    ),
    **dict.fromkeys(
        [f"{_REBUILD}_rebuild_device_tensor_from_cpu_tensor",
         f"{_REBUILD}_rebuild_device_tensor_from_numpy"],
        _Scanner.device_copy,
    ),
    "torch._tensor._rebuild_from_type_v2": _Scanner.from_type,
    **dict.fromkeys(
        ["collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset"],
        _Scanner.collection,
    ),
    **dict.fromkeys(
        ["builtins.complex", "builtins.int", "builtins.float", "builtins.bool", "builtins.slice",
         "torch.device", "torch.serialization._get_layout"],
        _Scanner.plain_values,
    ),
    "torch.Size": _Scanner.size,
    "_codecs.encode": _Scanner.encode,
    "builtins.bytearray": _Scanner.bytearray_,
}  # fmt: skip
#: What a call to these globals returns, for the rules on later instructions.
_KINDS = {
    "collections.OrderedDict": "dict",
    "collections.Counter": "dict",
    "builtins.set": "set",
    "builtins.frozenset": "set",
}


@lru_cache(maxsize=1)
def _name_tables() -> tuple[dict, dict]:
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    return NAME_MAPPING, IMPORT_MAPPING


@lru_cache(maxsize=1)
def _itemsizes() -> dict[str, int]:
    """Bytes per element of each dtype and storage type global torch allows."""
    import torch
    from torch import _weights_only_unpickler as unpickler

    sizes = {}
    for name, obj in unpickler._get_allowed_globals().items():
        if isinstance(obj, torch.dtype):
            sizes[name] = obj.itemsize
        elif isinstance(getattr(obj, "dtype", None), torch.dtype):  # legacy storage types
            sizes[name] = obj.dtype.itemsize
    return sizes


@lru_cache(maxsize=1)
def _constructors() -> frozenset[str]:
    """Tensor and storage classes: calling them with sizes allocates."""
    import torch
    from torch import _weights_only_unpickler as unpickler

    found = set()
    for name, obj in unpickler._get_allowed_globals().items():
        if obj in torch._tensor_classes or (  # torch.FloatTensor & co. are not subclasses
            isinstance(obj, type)
            and issubclass(
                obj, (torch.Tensor, torch.storage.UntypedStorage, torch.storage.TypedStorage)
            )
        ):
            found.add(name)
    return frozenset(found - set(_RULES))
