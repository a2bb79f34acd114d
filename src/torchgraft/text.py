"""Names from files are data: make them safe to print before they reach a terminal.

A checkpoint's tensor names, a pickle's global names, a path or a plan's keys come from
outside; printed as they are, ``\\x1b[2J`` clears the screen, ``\\x1b]0;…\\x07`` retitles the
window, ``\\r`` or ``\\n`` forges a line ("ALL CHECKS PASSED"), and ``[bold red]`` or ``[/]`` is
rich console markup (``[/]`` with nothing open raises). Two rules keep them inert:

* :func:`printable` — every character ``str.isprintable`` rejects is written as its Python
  escape (ESC as ``\\x1b``, a newline as ``\\n``, a right-to-left override as ``\\u202e``);
  letters of every script, spaces and punctuation stay as they are. Use it on one name, or on
  one line of a message, *before* joining lines.
* :func:`printable_lines` — the same for a text that is several lines on purpose (a report, a
  multi-line error): each ``\\n``-separated line is escaped, the line breaks are kept. A name
  holding a newline can still split its line here, so a renderer should escape each name (or
  each line) itself before joining; this is the safety net where the text arrives whole.

Neither one adds rich markup escapes: text printed through rich must go as
:class:`rich.text.Text` or with ``markup=False`` (``cli/output.py`` does both).
"""

from __future__ import annotations

__all__ = ["printable", "printable_lines"]


def printable(text: object) -> str:
    """``str(text)`` with every non-printable character written as its Python escape.

    Args:
        text: a tensor name, a path, a reason — anything that came from outside.

    Returns:
        The text, safe to print on one line of a terminal or a text file.

    Example:
        >>> printable("conv\\x1b[2J.weight")
        'conv\\\\x1b[2J.weight'
    """
    text = str(text)
    if text.isprintable():
        return text
    # repr's escapes are exactly those of the characters str.isprintable rejects.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def printable_lines(text: object) -> str:
    """Each ``\\n``-separated line of ``str(text)`` through :func:`printable`; the ``\\n`` kept.

    Splits on ``\\n`` only (not ``str.splitlines``), so ``\\r``, ``\\x0b``, ``\\x1c``, ``\\u2028``
    and the other characters splitlines also breaks at are escaped, not kept.
    """
    return "\n".join(printable(line) for line in str(text).split("\n"))
