"""What the pickle scan does at a call: one rule per global torch lets a pickle call.

A call (REDUCE, NEWOBJ) of ``func`` with an argument tuple is where a small file can cost a
lot: a size becomes an allocation, a codec name chooses an algorithm, an iterable is walked.
Each rule here gets the scanner (:mod:`.scan`), the global's name and the arguments
(as nodes and literals, :mod:`.nodes`), records what the call claims or builds, refuses
what it must, and returns the node of the call's result (``[]`` items: the caller adds the
argument tuple). Globals with no rule (ones the caller allowed) return an ``object`` node.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .nodes import (
    DATA_KINDS,
    HEIGHT,
    ITEMS,
    ITEMSIZE,
    KIND,
    LONG,
    NUMEL,
    TENSOR_KINDS,
    shown,
)

if TYPE_CHECKING:
    from .scan import Scanner

__all__ = [
    "ALLOWED_CODECS",
    "KINDS",
    "RULES",
    "construct",
    "constructors",
    "itemsizes",
    "size_numel",
]

#: Codecs ``_codecs.encode`` may be called with: pickle protocol 2 writes ``bytes`` as
#: ``_codecs.encode(text, "latin1")``, the only use torch's own files make of it.
ALLOWED_CODECS = frozenset({b"latin1", b"latin-1"})


def size_numel(scan: Scanner, size: Any) -> int:
    """The number of elements of a size tuple written out as non-negative numbers."""
    if type(size) is not list or size[KIND] not in ("tuple", "size"):
        raise scan.crafted("gives a tensor a size that is not a tuple of numbers")
    numel = 1
    for n in size[ITEMS]:
        if type(n) is not int or n < 0:
            raise scan.crafted("gives a tensor a size that is not written out as numbers")
        numel *= n
    return numel


def tensor_view(scan: Scanner, func: str, args: list) -> list:
    # _rebuild_tensor(_v2, _v3)(storage, offset, size, stride, ...) and _rebuild_qtensor:
    # a view of ``size`` elements of the storage's (or v3's explicit) dtype.
    if len(args) < 4:
        raise scan.crafted(f"calls {func} with too few arguments")
    numel = size_numel(scan, args[2])
    storage = args[0]
    itemsize = storage[ITEMSIZE] if type(storage) is list and storage[KIND] == "storage" else 16
    if func.endswith("_v3") and len(args) > 6 and type(args[6]) is str:
        itemsize = max(itemsize, scan.itemsizes.get(args[6], 16))
    scan.result.claimed += numel * itemsize
    scan.result.tensors += 1
    return ["tensor", [], 1, False, numel, itemsize]


def tensor_other(scan: Scanner, func: str, args: list) -> list:
    # Tensors without storage of their own size: meta, sparse, nested, wrapper subclass.
    scan.result.tensors += 1
    return ["tensor", [], 1, False, 0, 0]


def parameter(scan: Scanner, func: str, args: list) -> list:
    data = args[0] if args else None
    if type(data) is list and data[KIND] == "tensor":
        return ["tensor", [], 1, False, data[NUMEL], data[ITEMSIZE]]
    return ["tensor", [], 1, False, 0, 0]


def device_copy(scan: Scanner, func: str, args: list) -> list:
    # _rebuild_device_tensor_from_cpu_tensor(data, dtype, ...): data.to(dtype) copies it.
    data = args[0] if args else None
    numel = data[NUMEL] if type(data) is list and data[KIND] == "tensor" else 0
    dtype = args[1] if len(args) > 1 else None
    scan.result.claimed += numel * (scan.itemsizes.get(dtype, 16) if type(dtype) is str else 16)
    return ["tensor", [], 1, False, numel, 0]


def from_type(scan: Scanner, func: str, args: list) -> list:
    # _rebuild_from_type_v2(func, new_type, args, state): func(*args), then the state.
    if len(args) != 4 or type(args[0]) is not str:
        raise scan.crafted(f"calls {func} without a named function to rebuild with")
    inner = scan.call(args[0], args[2])
    return [inner[KIND], [inner], inner[HEIGHT] + 1, False, inner[NUMEL], inner[ITEMSIZE]]


def collection(scan: Scanner, func: str, args: list) -> list:
    # set(x), Counter(x), OrderedDict(x): iterating a tensor would make one Python object
    # per element of a view of any size.
    for arg in args:
        if type(arg) is list and arg[KIND] not in DATA_KINDS:
            raise scan.crafted(f"calls {func} on a {arg[KIND]}")
    return [KINDS.get(func, "object"), [], 1, False, 0, 0]


def plain_values(scan: Scanner, func: str, args: list) -> list:
    if any(type(arg) is list for arg in args):
        raise scan.crafted(f"calls {func} with a container argument")
    return ["value", [], 1, False, 0, 0]


def size(scan: Scanner, func: str, args: list) -> list:
    if len(args) > 1 or (args and not (type(args[0]) is list and args[0][KIND] in DATA_KINDS)):
        raise scan.crafted(f"calls {func} on something that is not a tuple of numbers")
    return ["size", list(args[0][ITEMS]) if args else [], 1, False, 0, 0]


def encode(scan: Scanner, func: str, args: list) -> list:
    # pickle protocol 2 writes bytes as _codecs.encode(text, "latin1"); any other codec
    # comes from the file (punycode is quadratic: a 27 KB file could run for minutes).
    if len(args) not in (2, 3) or not (type(args[0]) is bytes or args[0] is LONG):
        raise scan.crafted(f"calls {func} with other arguments than text and a codec")
    if args[1] not in ALLOWED_CODECS or (len(args) == 3 and args[2] != b"strict"):
        raise scan.crafted(f"calls {func} with codec {shown(args[1])}, not latin1")
    return ["bytes", [], 1, False, 0, 0]


def bytearray_(scan: Scanner, func: str, args: list) -> list:
    if len(args) == 1 and type(args[0]) is int:
        if args[0] < 0:
            raise scan.crafted(f"calls {func} with a negative size")
        scan.result.claimed += args[0]  # bytearray(n): n zero bytes, written
    elif len(args) >= 2:
        return encode(scan, func, args)
    elif args and type(args[0]) is list and args[0][KIND] not in DATA_KINDS:
        raise scan.crafted(f"calls {func} on a {args[0][KIND]}")
    return ["bytes", [], 1, False, 0, 0]


def construct(scan: Scanner, func: str, args: list) -> list:
    # torch.Tensor(*sizes), torch.FloatTensor(...), UntypedStorage(n): sizes allocate.
    if not args:
        return ["newtensor", [], 1, False, 0, 0]
    first = args[0]
    if all(type(arg) is int for arg in args):
        scan.result.claimed += size_numel(scan, ["tuple", list(args), 1, False, 0, 0]) * 16
    elif len(args) == 1 and type(first) is list and first[KIND] == "size":
        scan.result.claimed += size_numel(scan, first) * 16
    elif len(args) == 1 and type(first) is list and first[KIND] in DATA_KINDS | TENSOR_KINDS:
        pass  # data written out in the file, or a view of a storage already counted
    else:
        raise scan.crafted(f"calls {func} with arguments that are not sizes or data")
    scan.result.tensors += 1
    return ["tensor", [], 1, False, 0, 0]


_TORCH_UTILS = "torch._utils."
RULES: dict[str, Callable[[Scanner, str, list], list]] = {
    **dict.fromkeys(
        [f"{_TORCH_UTILS}_rebuild_tensor", f"{_TORCH_UTILS}_rebuild_tensor_v2",
         f"{_TORCH_UTILS}_rebuild_tensor_v3", f"{_TORCH_UTILS}_rebuild_qtensor"],
        tensor_view,
    ),
    **dict.fromkeys(
        [f"{_TORCH_UTILS}_rebuild_meta_tensor_no_storage", f"{_TORCH_UTILS}_rebuild_sparse_tensor",
         f"{_TORCH_UTILS}_rebuild_nested_tensor", f"{_TORCH_UTILS}_rebuild_wrapper_subclass"],
        tensor_other,
    ),
    **dict.fromkeys(
        [f"{_TORCH_UTILS}_rebuild_parameter", f"{_TORCH_UTILS}_rebuild_parameter_with_state",
         "torch.nn.parameter.Parameter"],
        parameter,
    ),
    **dict.fromkeys(
        [f"{_TORCH_UTILS}_rebuild_device_tensor_from_cpu_tensor",
         f"{_TORCH_UTILS}_rebuild_device_tensor_from_numpy"],
        device_copy,
    ),
    "torch._tensor._rebuild_from_type_v2": from_type,
    **dict.fromkeys(
        ["collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset"],
        collection,
    ),
    **dict.fromkeys(
        ["builtins.complex", "builtins.int", "builtins.float", "builtins.bool", "builtins.slice",
         "torch.device", "torch.serialization._get_layout"],
        plain_values,
    ),
    "torch.Size": size,
    "_codecs.encode": encode,
    "builtins.bytearray": bytearray_,
}  # fmt: skip
#: What a call to these globals returns, for the rules on later instructions.
KINDS = {
    "collections.OrderedDict": "odict",
    "collections.Counter": "odict",
    "builtins.set": "set",
    "builtins.frozenset": "set",
}


@lru_cache(maxsize=1)
def itemsizes() -> dict[str, int]:
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
def constructors() -> frozenset[str]:
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
    return frozenset(found - set(RULES))
