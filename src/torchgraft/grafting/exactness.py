"""Exact, or loud: the check every graft passes before anything is written.

A graft is *exact* when every target key outside the new head loads, on evidence that
proves its pairing (full confidence, see :data:`~.correspondence.EVIDENCE`). Anything else
is refused with :class:`~torchgraft.errors.InexactGraftError`, listing the keys grouped by
module and the ways out — unless the caller accepts it on purpose:

* ``allow_partial``: True, or glob patterns of target keys that may stay unloaded;
* ``allow_uncertain``: True to load pairings that only order suggested. Each acceptance
  raises a :class:`~torchgraft.errors.GraftWarning` and is written into the report.

Integer counters (``num_batches_tracked``) are not checked: they do not change what the
model computes. The head is exempt: a new head has nothing to load, an adapted one is
reported as adapted.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Collection, Sequence

from ..errors import GraftWarning, InexactGraftError
from ..wording import in_cli, option
from .correspondence import EVIDENCE
from .graft_plan import GraftPlan, KeyPlan, group_keys

__all__ = ["AllowPartial", "check_exact"]

#: ``allow_partial``: False, True, or glob patterns of target keys allowed to stay unloaded.
AllowPartial = bool | str | Sequence[str]

#: Most module lines listed per section of a refusal.
SHOWN = 8


def check_exact(
    plan: GraftPlan,
    head_keys: Collection[str],
    *,
    allow_partial: AllowPartial = False,
    allow_uncertain: bool = False,
) -> list[str]:
    """Refuse an inexact ``plan`` unless accepted; returns notes on what was accepted.

    Raises:
        InexactGraftError: keys outside ``head_keys`` unloaded (and not allowed by
            ``allow_partial``) or loaded below full confidence (without ``allow_uncertain``).
    """
    checked = [e for e in plan.entries if e.target not in head_keys and not _counter(e)]
    patterns = _patterns(allow_partial)
    unloaded = [e for e in checked if not e.action.loads]
    refused_unloaded = [e for e in unloaded if not _allowed(e.target, patterns)]
    uncertain = [e for e in checked if e.action.loads and not e.certain]
    refused_uncertain = [] if allow_uncertain else uncertain
    if refused_unloaded or refused_uncertain:
        raise InexactGraftError(_refusal(plan, refused_unloaded, refused_uncertain))
    notes = []
    if unloaded:
        notes.append(
            f"accepted as partial ({option('allow_partial')}): {len(unloaded)} target keys keep "
            "their own "
            f"values: {', '.join(group_keys(e.target for e in unloaded)[:SHOWN])}"
        )
    if uncertain:
        message = (
            f"accepted unproven pairings ({option('allow_uncertain')}): {len(uncertain)} target "
            f"keys loaded on {_kinds(uncertain)}; verify the graft ({option('source_model')}) "
            "before trusting it"
        )
        warnings.warn(message, GraftWarning, stacklevel=3)
        notes.append(message)
    return notes


def _counter(entry: KeyPlan) -> bool:
    return entry.target.rpartition(".")[2] == "num_batches_tracked"


def _patterns(allow_partial: AllowPartial) -> list[str] | None:
    """None: everything allowed; [] nothing."""
    if allow_partial is True:
        return None
    if allow_partial is False or allow_partial is None:
        return []
    return [allow_partial] if isinstance(allow_partial, str) else list(allow_partial)


def _allowed(key: str, patterns: list[str] | None) -> bool:
    if patterns is None:
        return True
    module = key.rpartition(".")[0]
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(module, p) for p in patterns)


def _kinds(entries: list[KeyPlan]) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.evidence or "?"] = counts.get(entry.evidence or "?", 0) + 1
    return ", ".join(
        f"{kind} ({EVIDENCE.get(kind, 0.0)}): {count}" for kind, count in counts.items()
    )


def _refusal(plan: GraftPlan, unloaded: list[KeyPlan], uncertain: list[KeyPlan]) -> str:
    lines = [
        f"refusing to graft {plan.source or 'the source'}: the result would not be exact, "
        "and nothing was loaded"
    ]
    if unloaded:
        lines.append(f"left unloaded — {len(unloaded)} target keys outside the new head:")
        lines += _listing(unloaded, lambda e: e.detail or e.action.value)
    if uncertain:
        lines.append(
            f"paired on evidence that does not prove the pairing — {len(uncertain)} keys "
            f"({_kinds(uncertain)}):"
        )
        lines += _listing(uncertain, lambda e: f"← {e.source.rpartition('.')[0]} [{e.evidence}]")
    if in_cli():
        edited = "an edited plan (--plan-out PLAN.yaml, edit, --plan PLAN.yaml)"
    else:
        edited = "an edited plan (plan_graft(...).to_dict(), edited, then plan=)"
    lines.append(
        f"ways out: give the source architecture ({option('source_model', 'SPEC')}) so order "
        f"is settled by running it; rename rules ({option('strategy', 'rules')} "
        f"{option('rules', 'RULES.yaml')}); {edited}; or accept on purpose: "
        f"{option('allow_partial', True)} (or glob patterns of the keys), "
        f"{option('allow_uncertain', True)}"
    )
    return "\n".join(lines)


def _listing(entries: list[KeyPlan], why) -> list[str]:
    """Up to :data:`SHOWN` lines, one per module (its roles braced), with the reason."""
    by_module: dict[str, list[KeyPlan]] = {}
    for entry in entries:
        by_module.setdefault(entry.target.rpartition(".")[0], []).append(entry)
    lines = []
    for module, group in list(by_module.items())[:SHOWN]:
        roles = [e.target.rpartition(".")[2] for e in group]
        shown = roles[0] if len(roles) == 1 else "{" + ", ".join(roles) + "}"
        lines.append(f"  {module + '.' if module else ''}{shown}: {why(group[0])}")
    if len(by_module) > SHOWN:
        lines.append(f"  … {len(by_module) - SHOWN} more modules")
    return lines
