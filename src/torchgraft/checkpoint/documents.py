"""JSON and YAML documents from files, read within bounds: size, nesting, expansion.

Configs, run records (``model.json``, ``state/last.json``, ``graft.json`` …), graft plans and
rules, export sidecars: every document torchgraft reads comes through here, because every one
of them may come from someone else. What a crafted document can ask for, and what stops it:

* **endless or huge files** (``--config /dev/zero``, a FIFO): :mod:`.regular_files` opens
  regular files only, without blocking, and reads at most ``max_bytes``;
* **deep nesting** (``[[[[…]]]]``): Python's parsers and every validator after them recurse,
  and a ``RecursionError`` is no answer; JSON is parsed (its C parser fails cleanly on deep
  input) and then measured without recursion; YAML is measured on the parser's event stream,
  before anything is composed;
* **alias bombs** (YAML ``&a [*b, *b, …]``, 1.8 KB that expand to billions of nodes): the
  event stream is counted as it would expand — an alias counts the whole node it names — and a
  document over ``max_nodes`` is refused before it is built. A validator or printer walking the
  shared references would otherwise expand them (minutes, gigabytes, or a panic in a library);
* **code**: YAML is read with the safe loader only (no ``!!python/…`` tags).

Each refusal is the caller's typed error (a :class:`~torchgraft.errors.ConfigError` for a
config, a :class:`~torchgraft.errors.CheckpointError` for a run's file …) naming the file and
the bound, raised before a value of the document is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import yaml

from ..text import printable
from .regular_files import FileProblem, read_regular

__all__ = [
    "UNBUILDABLE",
    "DocumentLimits",
    "check_yaml_bounds",
    "parse_json",
    "parse_yaml",
    "read_document_bytes",
    "read_json",
    "read_yaml",
]

_MIB = 1 << 20


@dataclass(frozen=True)
class DocumentLimits:
    """Bounds on one document.

    Attributes:
        max_bytes: size of the file (a run's records and configs are kilobytes).
        max_depth: nesting of lists and mappings (torchgraft's own documents nest < 10 deep).
        max_nodes: values once YAML aliases are expanded (a config has hundreds).
    """

    max_bytes: int = 16 * _MIB
    max_depth: int = 64
    max_nodes: int = 1_000_000


DEFAULT_LIMITS = DocumentLimits()


def read_document_bytes(
    path: str | os.PathLike, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> bytes:
    """The bytes of a document file (a regular file within ``limits.max_bytes``).

    Raises:
        error: naming the file and what is wrong with it.
    """
    try:
        return read_regular(path, limits.max_bytes)
    except FileProblem as problem:
        raise error(f"{printable(str(path))}: {problem}") from None


def read_json(
    path: str | os.PathLike, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> Any:
    """The JSON document in ``path``, within ``limits``.

    Raises:
        error: the file cannot be read, is not JSON (UTF-8), or is over a bound.
    """
    return parse_json(read_document_bytes(path, error, limits), str(path), error, limits)


def read_yaml(
    path: str | os.PathLike, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> Any:
    """The YAML document in ``path`` (safe loader), within ``limits``; None when empty.

    Raises:
        error: the file cannot be read, is not YAML, or is over a bound.
    """
    raw = read_document_bytes(path, error, limits)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{printable(str(path))}: not UTF-8 text ({exc.reason})") from None
    return parse_yaml(text, str(path), error, limits)


def parse_json(
    text: str | bytes, origin: str, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> Any:
    """``text`` as JSON, nested at most ``limits.max_depth`` deep.

    Args:
        origin: what the message calls the document (a path, ``--plan``).
    """
    where = printable(origin)
    if len(text) > limits.max_bytes:
        raise error(f"{where}: longer than the {limits.max_bytes:,} bytes such a document may have")
    try:
        document = json.loads(text)
    except RecursionError:
        raise _too_deep(where, limits, error) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{where}: not valid JSON ({printable(str(exc))[:120]})") from None
    if _depth(document, limits.max_depth) > limits.max_depth:
        raise _too_deep(where, limits, error)
    return document


def parse_yaml(
    text: str, origin: str, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> Any:
    """``text`` as YAML (safe loader), measured on its events before it is composed.

    Raises:
        error: not YAML, nested deeper than ``limits.max_depth``, or more than
            ``limits.max_nodes`` values once aliases are expanded.
    """
    where = printable(origin)
    if len(text) > limits.max_bytes:
        raise error(f"{where}: longer than the {limits.max_bytes:,} bytes such a document may have")
    try:
        check_yaml_bounds(text, where, error, limits)
    except yaml.YAMLError as exc:
        raise _not_yaml(where, exc, error) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _not_yaml(where, exc, error) from None
    except RecursionError:  # measured above; kept so that no parser depth ever escapes
        raise _too_deep(where, limits, error) from None
    except UNBUILDABLE as exc:
        raise error(
            f"{where}: not valid YAML (a value YAML cannot build: {type(exc).__name__}: "
            f"{printable(str(exc))[:80]})"
        ) from None


def _not_yaml(where: str, exc: yaml.YAMLError, error: type[Exception]) -> Exception:
    first = (printable(str(exc)).splitlines() or [type(exc).__name__])[0]
    return error(f"{where}: not valid YAML ({first})")


#: What PyYAML's constructors raise for text the parser accepted but no value can be made of
#: (``!!int`` on nothing: IndexError; ``2001-02-30`` or an integer of 5,000 digits:
#: ValueError; ``!!bool x``: KeyError; ``!!timestamp x``: AttributeError).
UNBUILDABLE = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError)


def check_yaml_bounds(
    text: str, where: str, error: type[Exception], limits: DocumentLimits = DEFAULT_LIMITS
) -> None:
    """Depth and expanded node count from the event stream (nothing is composed).

    Raises:
        error: over ``limits.max_depth`` or ``limits.max_nodes``.
        yaml.YAMLError: ``text`` is not YAML (callers that accept plain words catch it).

    ``expanded`` grows by one per scalar or collection and by an anchor's whole size per
    alias; an anchored collection's size is what ``expanded`` grew by between its start and
    its end. A bomb is refused after reading only as many events as it takes to pass the
    bound.
    """
    sizes: dict[str, int] = {}
    open_at: list[tuple[str | None, int]] = []  # (anchor, expanded before its start)
    expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in open_at):
                # ``a: &x {b: *x}`` builds a value that contains itself: every consumer of
                # it (validation, printing) recurses forever
                raise error(
                    f"{where}: refused: the alias *{printable(event.anchor)} is inside the value "
                    "it names (a document that contains itself)"
                )
            expanded += sizes.get(event.anchor, 1)  # an unknown anchor: yaml raises later
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            open_at.append((event.anchor, expanded))
            expanded += 1
            if len(open_at) > limits.max_depth:
                raise _too_deep(where, limits, error)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = open_at.pop()
            if anchor:
                sizes[anchor] = expanded - before
        if expanded > limits.max_nodes:
            raise error(
                f"{where}: refused: its aliases expand to more than {limits.max_nodes:,} values "
                "(a YAML alias bomb, or a document far larger than any config); write the "
                "values out instead of repeating aliases"
            )


def _depth(document: Any, bound: int) -> int:
    """Nesting depth of lists and dicts, measured without recursion (stops past ``bound``)."""
    deepest, stack = 0, [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > bound:
                return deepest
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth) for child in children)
    return deepest


def _too_deep(where: str, limits: DocumentLimits, error: type[Exception]) -> Exception:
    return error(
        f"{where}: refused: nested more than {limits.max_depth} levels deep (no torchgraft "
        "document nests more than a few levels; a crafted or damaged file)"
    )
