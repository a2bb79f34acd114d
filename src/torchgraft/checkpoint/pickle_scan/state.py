"""The pickle scan's state, and what the instructions that make or fill objects do to it.

:class:`ScanState` holds the data, the limits, what the scan found so far (a
:class:`PickleScan`) and the messages it refuses with. Its methods are the effects of the
instructions that do more than move values: GLOBAL's name (decoded as torch decodes it),
BINPERSID's storage, REDUCE and NEWOBJ's call (whose rules are in :mod:`.calls`), BUILD, and
SETITEM(S) and APPEND(S) filling a container. Each takes descriptions (:mod:`.nodes`),
refuses what torch must not be made to run, records what the instruction claims, and returns
the name or node it makes, if any.

The instruction loop that calls them is :class:`~.scan.Scanner`, a subclass: a method found on
a base class costs the loop the same lookup as one of its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ...errors import CheckpointError
from ...wording import option
from ..limits import ReaderLimits, limit_error
from .calls import KINDS, RULES, construct, constructors, itemsizes, size_numel
from .nodes import HEIGHT, ITEMS, ITEMSIZE, KIND, NUMEL, PARENTED, misfilled, nest_height

__all__ = ["PickleScan", "ScanState"]

#: The longest ``module\nname\n`` of a GLOBAL read.
_MAX_GLOBAL = 2048


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


class ScanState:
    """The scan's state: the data, what it found so far, and its methods for the
    instructions that make or fill objects."""

    def __init__(
        self,
        data: Any,
        allowed: frozenset[str],
        limits: ReaderLimits,
        origin: str,
        list_types: frozenset[str] = frozenset(),
    ):
        self.data, self.allowed, self.limits, self.origin = data, allowed, limits, origin
        self.list_types = list_types
        self.result = PickleScan()
        self.itemsizes = itemsizes()
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

    # ---- what instructions build -------------------------------------------------------

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

    def fill(self, op: int, target: Any) -> None:
        """Refuse instruction ``op`` (SETITEM(S), APPEND(S), BUILD) on the wrong kind of object."""
        why = misfilled(op, target)
        if why is not None:
            raise CheckpointError(
                f"{self.origin}: refused: the pickle {why}: torch before 2.10 runs this "
                "(CVE-2026-24747), later torch refuses it. torch.save never writes it for "
                "tensors, lists and dicts: the file is damaged or crafted, or holds objects "
                f"only {option('trust', True)} loads (which runs code from the file)"
            )

    def grow(self, target: list, items: list) -> None:
        """``target`` gains ``items`` (APPEND(S), SETITEM(S), BUILD's state)."""
        if target[ITEMS] is None:
            target[ITEMS] = list(items)
        else:
            target[ITEMS].extend(items)
        height = nest_height(items)
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
                numel = size_numel(self, items[2])
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
        rule = RULES.get(func)
        if rule is None and func in constructors():
            rule = construct
        if rule is not None:
            node = rule(self, func, args[ITEMS])
        elif func in self.list_types:  # an allowed list subclass: torch appends to it
            node = ["listobject", [], 1, False, 0, 0]
        else:
            node = [KINDS.get(func, "object"), [], 1, False, 0, 0]
        node[ITEMS].append(args)
        args[PARENTED] = True
        if args[HEIGHT] >= node[HEIGHT]:
            node[HEIGHT] = args[HEIGHT] + 1
            if node[HEIGHT] > self.limits.max_depth:
                raise self.too_deep(node[HEIGHT])
        return node


@lru_cache(maxsize=1)
def _name_tables() -> tuple[dict, dict]:
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    return NAME_MAPPING, IMPORT_MAPPING
