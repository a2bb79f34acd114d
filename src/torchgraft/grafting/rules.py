"""Rename rules as data: templates or regular expressions, first match wins, reversible.

A rules document (YAML or a list of dicts)::

    - from: "_blocks.{i}._depthwise_conv.{role}"   # template: {name} matches one component,
      to:   "blocks.{i}.conv_dw.{role}"            # {name*} any number of components
    - pattern: '^module\\.'                          # regex with a replacement
      replace: ''
      inverse: {pattern: '^', replace: 'module.'}  # optional, makes a regex rule reversible

Templates are always reversible (``to`` becomes ``from``); a regex rule is reversible only
with an ``inverse``. Reversal lets a grafted model be exported back to the source naming.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.documents import DocumentLimits, read_yaml
from ..errors import GraftError

__all__ = ["RenameRule", "RenameRules", "load_rules"]

#: A rules file is a short list of rules.
RULES_LIMITS = DocumentLimits(max_bytes=1 << 20, max_depth=8)
_PLACEHOLDER = re.compile(r"\{(\w+)(\*?)\}")


@dataclass(frozen=True)
class RenameRule:
    """One rule: a compiled pattern, a replacement, and optionally its inverse."""

    pattern: re.Pattern[str]
    replacement: str
    inverse: RenameRule | None = None
    text: str = ""
    template: bool = False

    def apply(self, key: str) -> str | None:
        """The renamed key, or None if the rule does not match ``key``."""
        if not self.pattern.search(key):
            return None
        return self.pattern.sub(self.replacement, key, count=1)


class RenameRules:
    """An ordered list of rules; :meth:`apply` uses the first that matches a key."""

    def __init__(self, rules: Sequence[RenameRule]):
        self.rules = list(rules)

    def apply(self, key: str) -> str:
        for rule in self.rules:
            renamed = rule.apply(key)
            if renamed is not None:
                return renamed
        return key

    def reversed(self) -> RenameRules:
        """Rules that map renamed keys back to the original naming.

        Raises:
            GraftError: a regex rule without an ``inverse``.
        """
        inverted = []
        for rule in self.rules:
            if rule.inverse is None and rule.template:
                raise GraftError(
                    f"rename template '{rule.text}' drops a placeholder, so it cannot be "
                    "reversed; keep every placeholder of 'from' in 'to'"
                )
            if rule.inverse is None:
                raise GraftError(
                    f"rename rule '{rule.text}' is a regex without an 'inverse'; it cannot be "
                    "reversed. Write it as a from/to template or add inverse: {pattern, replace}"
                )
            inverted.append(rule.inverse)
        return RenameRules(inverted)

    def __len__(self) -> int:
        return len(self.rules)

    @classmethod
    def from_data(cls, data: Any) -> RenameRules:
        """Rules from a list of dicts, ``{"rules": [...]}``, or a ``{from: to}`` mapping.

        Raises:
            GraftError: naming the entry that is not a valid rule.
        """
        if isinstance(data, RenameRules):
            return data
        if isinstance(data, Mapping) and "rules" in data:
            data = data["rules"]
        if isinstance(data, Mapping):
            data = [{"from": k, "to": v} for k, v in data.items()]
        if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
            raise GraftError("rename rules must be a list of {from, to} or {pattern, replace}")
        return cls([_parse_rule(entry, index) for index, entry in enumerate(data)])


def load_rules(path: str | Path) -> RenameRules:
    """Read rules from a YAML or JSON file.

    Raises:
        GraftError: unreadable file or invalid rules (the message names the file).
    """
    path = Path(path)
    try:
        data = read_yaml(path, GraftError, RULES_LIMITS)  # bounded: size, nesting, aliases
    except GraftError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise GraftError(f"{path}: cannot read rename rules: {reason}") from None
    try:
        return RenameRules.from_data(data)
    except GraftError as exc:
        raise GraftError(f"{path}: {exc}") from None


def _parse_rule(entry: Any, index: int) -> RenameRule:
    if not isinstance(entry, Mapping):
        raise GraftError(f"rule #{index} is a {type(entry).__name__}, not a mapping")
    if "from" in entry and "to" in entry:
        forward = _template_rule(str(entry["from"]), str(entry["to"]), index)
        try:
            backward = _template_rule(str(entry["to"]), str(entry["from"]), index)
        except GraftError:
            backward = None  # a template that drops a placeholder works forward only
        return RenameRule(forward.pattern, forward.replacement, backward, forward.text, True)
    if "pattern" in entry:
        inverse = None
        if entry.get("inverse") is not None:
            inverse = _parse_rule(entry["inverse"], index)
        return RenameRule(
            _compile(str(entry["pattern"]), index),
            str(entry.get("replace", "")),
            inverse,
            str(entry["pattern"]),
        )
    raise GraftError(
        f"rule #{index} needs 'from' and 'to', or 'pattern' and 'replace': {dict(entry)}"
    )


def _template_rule(source: str, target: str, index: int) -> RenameRule:
    names: list[str] = []
    parts: list[str] = []
    position = 0
    for found in _PLACEHOLDER.finditer(source):
        parts.append(re.escape(source[position : found.start()]))
        name, star = found.group(1), found.group(2)
        if name in names:
            raise GraftError(f"rule #{index}: placeholder {{{name}}} appears twice in '{source}'")
        names.append(name)
        parts.append(f"(?P<{name}>.+?)" if star else f"(?P<{name}>[^.]+)")
        position = found.end()
    parts.append(re.escape(source[position:]))
    pattern = _compile("^" + "".join(parts) + "$", index)
    unknown = {m.group(1) for m in _PLACEHOLDER.finditer(target)} - set(names)
    if unknown:
        raise GraftError(
            f"rule #{index}: '{target}' uses {sorted(unknown)} that '{source}' does not define"
        )
    replacement = _PLACEHOLDER.sub(lambda m: f"\\g<{m.group(1)}>", target.replace("\\", "\\\\"))
    return RenameRule(pattern, replacement, None, f"{source} -> {target}")


def _compile(pattern: str, index: int) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise GraftError(f"rule #{index}: invalid regular expression '{pattern}': {exc}") from None
