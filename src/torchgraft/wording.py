"""How a message names an option: the caller's vocabulary, not the library's.

One error can reach a reader three ways: through the Python API (who wrote
``strategy="exact"``), through ``torchgraft graft`` (who typed ``--strategy exact``) or through
a run configuration (who wrote ``graft.strategy: exact``). A hint that tells the reader what to
change must use the words they typed, so library code never spells a flag or an argument
itself; it asks :func:`option`::

    raise GraftError(f"... try {option('strategy', 'auto')}")
    # Python:          ... try strategy="auto"
    # torchgraft graft: ... try --strategy auto
    # torchgraft train: ... try --graft.strategy auto

The Python argument name is the canonical name. The command line's entry point declares its
vocabulary once for the whole command (:func:`speaking_cli`), and a layer that exposes
options under other names renames them for everything it calls (:func:`renamed`: the run
configuration puts ``min_coverage`` under ``graft.``). Both set a context variable, so they
hold for exactly the code run inside the ``with`` block (a thread started there begins with
the Python wording: messages are raised on the calling thread).

:func:`listing` is the other half of speaking to a reader: a few names and a count, for the
one-line ``repr`` of objects that hold hundreds of them.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CLI_FLAGS", "in_cli", "listing", "option", "renamed", "speaking_cli"]

#: Python argument -> command-line flag, for the arguments whose flag is not simply the name
#: with ``-`` for ``_`` (``min_coverage`` -> ``--min-coverage`` needs no entry).
CLI_FLAGS: dict[str, str] = {
    "source_model": "--verify-with",
    "allow_globals": "--allow-global",
    "trust": "--trust-checkpoint",
}


@dataclass(frozen=True)
class _Vocabulary:
    cli: bool = False
    #: canonical name -> this caller's name: a flag (``--x``) under the CLI, else an argument
    #: or config key; names not listed keep their canonical form.
    names: Mapping[str, str] = field(default_factory=dict)


#: None: the Python API's vocabulary (:data:`_PYTHON`).
_VOCABULARY: ContextVar[_Vocabulary | None] = ContextVar("torchgraft_vocabulary", default=None)
_PYTHON = _Vocabulary()


def _current() -> _Vocabulary:
    return _VOCABULARY.get() or _PYTHON


def option(name: str, value: Any = None) -> str:
    """``name`` (the Python argument's name) as the current caller writes it, with ``value``.

    Args:
        name: the Python argument, e.g. ``"min_coverage"``.
        value: the value to show, or None for the option alone. A string is shown quoted in
            Python (``strategy="auto"``) and shell-quoted on the command line; ``True`` on the
            command line is the flag alone (``--allow-partial``); a list repeats the flag. A
            renamed key on the command line is an override: ``--weights.ema true``,
            ``--weights.allow_globals '[a.B, c.D]'``.

    Returns:
        ``strategy="auto"`` / ``strategy`` from Python, ``--strategy auto`` / ``--strategy``
        under the command line, ``graft.strategy="auto"`` or ``--graft.strategy auto`` inside
        a :func:`renamed` block.

    Example:
        >>> option("min_coverage", 0.3)
        'min_coverage=0.3'
        >>> with speaking_cli():
        ...     option("source_model", "timm:resnet50")
        '--verify-with timm:resnet50'
    """
    vocabulary = _current()
    spelled = vocabulary.names.get(name)
    if not vocabulary.cli:
        spelled = spelled or name
        return spelled if value is None else f"{spelled}={_python_literal(value)}"
    if spelled is not None and not spelled.startswith("-"):
        # A renamed key (``graft.min_coverage``) is a dotted override: it always takes a
        # value, written as YAML (``true``, ``[a, b]``), one shell word.
        if value is None:
            return f"--{spelled}"
        return f"--{spelled} {_shell_word(_yaml_literal(value))}"
    flag = spelled or CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    if value is None or value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return " ".join(f"{flag} {_shell_word(v)}" for v in value)
    return f"{flag} {_shell_word(value)}"


def in_cli() -> bool:
    """True inside :func:`speaking_cli` (for the rare sentence that is more than an option)."""
    return _current().cli


@contextmanager
def speaking_cli(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Messages raised inside name command-line flags (``flags`` overrides :data:`CLI_FLAGS`)."""
    token = _VOCABULARY.set(_Vocabulary(cli=True, names=dict(flags or {})))
    try:
        yield
    finally:
        _VOCABULARY.reset(token)


@contextmanager
def renamed(names: Mapping[str, str]) -> Iterator[None]:
    """Inside, ``option(name)`` says ``names[name]`` (e.g. ``graft.min_coverage``) instead.

    The current style is kept: under the command line a renamed key becomes the override
    ``--graft.min_coverage``, from Python it stays ``graft.min_coverage``. Names renamed by an
    enclosing block stay renamed unless ``names`` renames them again.
    """
    current = _current()
    token = _VOCABULARY.set(_Vocabulary(current.cli, {**current.names, **names}))
    try:
        yield
    finally:
        _VOCABULARY.reset(token)


def listing(items: Iterable[Any], limit: int = 3) -> str:
    """The first ``limit`` items, then how many there are: ``a, b, c, … (12 in all)``.

    For the one-line summaries (``repr``) of objects that hold hundreds of names.
    """
    items = [str(item) for item in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … ({len(items)} in all)"


def _python_literal(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    return repr(value)


def _yaml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_literal(v) for v in value) + "]"
    return str(value)


def _shell_word(value: Any) -> str:
    return shlex.quote(str(value))
