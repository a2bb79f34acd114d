"""Objects unpickled from a file, made plain before anything calls their methods.

A pickle can give an object attributes that shadow its methods: torch's unpickler updates
an ``OrderedDict``'s ``__dict__`` from the file (``BUILD``) and sets attributes on tensors
(``_rebuild_from_type_v2``, ``_rebuild_parameter_with_state``), so ``state.get`` or
``tensor.numel`` can be whatever the file says. :func:`plain` rebuilds what was read using
type-level operations only (``dict.items(d)``, ``Tensor.detach(t)``, data descriptors such
as ``t.is_nested`` that an instance cannot shadow):

- dicts (``dict``, ``OrderedDict``, ``Counter``) become plain ``dict``\\ s, in their order,
  shared and cyclic ones kept shared and cyclic, walked without recursion;
- a tensor with attributes of its own, or of a subclass, becomes a plain tensor viewing the
  same data; one that has no dense data to read (nested, sparse, meta) becomes an
  :class:`UnusableTensor` that says what it was, so that it is set aside and listed;
- everything else is kept as it is (it is only ever described by its type and length).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import torch

__all__ = ["UnusableTensor", "plain"]

_DICTS = (dict, OrderedDict, Counter)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


class UnusableTensor:
    """A tensor read from a file that holds no dense weights (nested, sparse, meta)."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


def plain(obj: Any) -> Any:
    """``obj`` with its dicts and tensors rebuilt from type-level calls (see the module)."""
    if type(obj) not in _DICTS:
        return _leaf(obj)
    copies: dict[int, dict] = {id(obj): {}}
    todo = [(obj, copies[id(obj)])]
    while todo:
        source, target = todo.pop()
        for key, value in dict.items(source):
            if type(value) in _DICTS:
                copy = copies.get(id(value))
                if copy is None:  # the originals stay alive in ``obj``: ids are not reused
                    copy = copies[id(value)] = {}
                    todo.append((value, copy))
                target[key] = copy
            else:
                target[key] = _leaf(value)
    return copies[id(obj)]


def _leaf(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_nested:
        return UnusableTensor("nested tensor")
    if value.layout != torch.strided:
        return UnusableTensor(f"{str(value.layout).replace('torch.', '')} tensor")
    if value.is_meta:
        return UnusableTensor("meta tensor (no data)")
    if type(value) in _PLAIN_TENSORS and not value.__dict__:
        return value  # the common case: nothing of the file's own on it
    # Attributes from the file, or a subclass: a plain view of the same data, made without
    # calling anything the subclass or the file defines.
    with torch._C.DisableTorchFunctionSubclass():
        return torch.Tensor.detach(value)
