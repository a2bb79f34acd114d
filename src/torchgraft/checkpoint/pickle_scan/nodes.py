"""The values of the pickle scan: literals, global names and nodes.

The scan (:mod:`.scan`) keeps descriptions instead of objects on its stack: literal
values (``bytes`` for text, ``int``, ``float``, ``None``), global names (``str``), and a node
for everything built. A node is a plain list, the fastest object to build::

    [kind, items, height, parented, numel, itemsize]

``kind``: ``tuple``, ``list``, ``dict`` (a plain dict), ``odict`` (a dict made by calling
``OrderedDict`` or ``Counter``: BUILD may set its attributes), ``set``, ``bytes``, ``size``,
``storage``, ``tensor``, ``newtensor`` (a tensor class called with no argument, to be set by
BUILD), ``value`` (a plain value made by a call: a number, a device, a slice), ``object`` (made
by a global the caller allowed) or ``listobject`` (an instance of an allowed list subclass);
``items``: what it holds (None until a container gets some); ``height``: the nesting of
containers below and including it; ``parented``: placed inside another node (a later change
to it may make an ancestor deeper than recorded); ``numel``/``itemsize``: for storages and
tensors.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DATA_KINDS", "FILLS", "HEIGHT", "ITEMS", "ITEMSIZE", "KIND", "LONG", "NUMEL", "PARENTED",
    "TENSOR_KINDS", "graph_height", "misfilled", "nest_height", "shown",
]  # fmt: skip

KIND, ITEMS, HEIGHT, PARENTED, NUMEL, ITEMSIZE = range(6)
#: Node kinds that are plain data: iterating them costs what the file spelled out.
DATA_KINDS = frozenset({"tuple", "list", "dict", "odict", "set", "bytes", "size"})
TENSOR_KINDS = frozenset({"tensor", "storage"})
# What the instructions that fill an object may fill, as torch >= 2.10 checks it (older torch
# runs ``target[key] = value``, ``target.append(item)`` on whatever is there: on a tensor,
# CVE-2026-24747). SETITEM(S): dict, OrderedDict, Counter. APPEND(S): lists, and instances of
# list subclasses the caller allowed. BUILD: tensors (``Tensor.set_``, ``Parameter``),
# OrderedDict and Counter (their attributes), and objects of allowed classes.
_BY_KEY = ("only dicts take items by key", frozenset({"dict", "odict"}))
_APPENDED = ("only lists take appended items", frozenset({"list", "listobject"}))
_STATE = (
    "only tensors, OrderedDicts and allowed classes take a state",
    frozenset({"tensor", "newtensor", "odict", "object", "listobject"}),
)
#: Opcode -> name, the rule in words, and the node kinds it may fill.
FILLS = {
    0x73: ("SETITEM", *_BY_KEY), 0x75: ("SETITEMS", *_BY_KEY),
    0x61: ("APPEND", *_APPENDED), 0x65: ("APPENDS", *_APPENDED), 0x62: ("BUILD", *_STATE),
}  # fmt: skip
#: Node kinds in messages, where "a <kind>" is not the words.
_KIND_WORDS = {
    "odict": "an OrderedDict", "newtensor": "a tensor", "value": "a plain value",
    "object": "an object of an allowed global", "listobject": "an allowed list subclass",
}  # fmt: skip


class _Long:
    """A text literal too long to keep (only its being text matters)."""


LONG = _Long()


def shown(value: Any) -> str:
    if type(value) is bytes:
        return ascii(value.decode("utf-8", "replace")[:60])
    return f"a {value[KIND]}" if type(value) is list else type(value).__name__


def misfilled(op: int, target: Any) -> str | None:
    """Why instruction ``op`` (a key of :data:`FILLS`) may not fill ``target``, or None."""
    name, rule, kinds = FILLS[op]
    if type(target) is list and target[KIND] in kinds:
        return None
    if type(target) is list:
        what = _KIND_WORDS.get(target[KIND], f"a {target[KIND]}")
    else:  # a literal, or a global's name
        what = "a global's name" if type(target) is str else f"a literal {type(target).__name__}"
    return f"applies {name} to {what} ({rule})"


def nest_height(items: list) -> int:
    height = 0
    for item in items:
        if type(item) is list:
            item[PARENTED] = True
            if item[HEIGHT] > height:
                height = item[HEIGHT]
    return height + 1


def graph_height(top: Any) -> int:
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
