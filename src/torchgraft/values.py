"""Values read from files, checked and shown: the small predicates every record check uses.

A JSON or YAML value from a file can be of any type: ``true`` where a count belongs (a
``bool`` is an ``int`` in Python), ``1e999`` or ``NaN`` where a size belongs, a 10 MB string
where a name belongs. These say exactly what a record's field may be, and :func:`shown`
writes a found value short and escaped for a message.
"""

from __future__ import annotations

import math
from typing import Any

from .text import printable

__all__ = ["finite", "shown", "whole"]


def whole(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """True for an ``int`` (not a ``bool``) within ``[low, high]`` where those are given."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def finite(value: Any) -> bool:
    """True for an ``int`` or ``float`` (not a ``bool``) that is a finite float: ``NaN``,
    infinities and integers too large for a float (``10**400``) are not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def shown(value: Any) -> str:
    """A value read from a file, as a message shows it: short and escaped."""
    if isinstance(value, (bool, int, float)) or value is None:
        return printable(repr(value))[:40]
    if isinstance(value, str):
        return ascii(value[:60]) + ("…" if len(value) > 60 else "")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"
