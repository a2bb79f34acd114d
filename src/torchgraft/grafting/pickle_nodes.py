"""The values of the pickle scan: literals, global names and nodes.

The scan (:mod:`.pickle_scan`) keeps descriptions instead of objects on its stack: literal
values (``bytes`` for text, ``int``, ``float``, ``None``), global names (``str``), and a node
for everything built. A node is a plain list, the fastest object to build::

    [kind, items, height, parented, numel, itemsize]

``kind``: ``tuple``, ``list``, ``dict``, ``set``, ``bytes``, ``size``, ``storage``, ``tensor``,
``newtensor`` (a tensor class called with no argument, to be set by BUILD) or ``object``;
``items``: what it holds (None until a container gets some); ``height``: the nesting of
containers below and including it; ``parented``: placed inside another node (a later change
to it may make an ancestor deeper than recorded); ``numel``/``itemsize``: for storages and
tensors.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONTAINER_KINDS", "DATA_KINDS", "HEIGHT", "ITEMS", "ITEMSIZE", "KIND", "LONG", "NUMEL",
    "PARENTED", "TENSOR_KINDS", "graph_height", "nest_height", "shown",
]  # fmt: skip

KIND, ITEMS, HEIGHT, PARENTED, NUMEL, ITEMSIZE = range(6)
#: Node kinds that are plain data: iterating them costs what the file spelled out.
DATA_KINDS = frozenset({"tuple", "list", "dict", "set", "bytes", "size"})
TENSOR_KINDS = frozenset({"tensor", "storage"})
#: Node kinds that instructions may add items to (APPEND, SETITEM, BUILD).
CONTAINER_KINDS = frozenset({"list", "dict", "set", "object", "tensor", "newtensor"})


class _Long:
    """A text literal too long to keep (only its being text matters)."""


LONG = _Long()


def shown(value: Any) -> str:
    if type(value) is bytes:
        return ascii(value.decode("utf-8", "replace")[:60])
    return f"a {value[KIND]}" if type(value) is list else type(value).__name__


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
