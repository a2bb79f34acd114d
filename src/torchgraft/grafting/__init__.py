"""Grafting: load weights whose names, order or shapes do not line up, and say exactly how.

Public API: :func:`plan_graft` (the plan, model untouched), :func:`graft` (plan + apply +
report), :func:`apply_plan` (a plan made earlier, possibly edited), :func:`verify_graft` /
:func:`compare_models` (proof that the function was kept); :func:`read_checkpoint` is the
reader's (:mod:`torchgraft.checkpoint`), re-exported. These take files, state_dicts and
modules; the top-level ``torchgraft.graft`` & co. also take model specs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "apply_plan": ".apply",
    "graft": ".api",
    "plan_graft": ".api",
    "plan_from_mapping": ".planner",
    "SourceWeights": ".source",
    "read_source": ".source",
    "Checkpoint": "..checkpoint.read",
    "read_checkpoint": "..checkpoint.read",
    "ReaderLimits": "..checkpoint.limits",
    "Action": ".graft_plan",
    "GraftPlan": ".graft_plan",
    "GraftReport": ".graft_plan",
    "KeyPlan": ".graft_plan",
    "RenameRules": ".rules",
    "load_rules": ".rules",
    "Verification": ".verify",
    "compare_models": ".verify",
    "verify_graft": ".verify",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from ..checkpoint.limits import ReaderLimits
    from ..checkpoint.read import Checkpoint, read_checkpoint
    from .api import graft, plan_graft
    from .apply import apply_plan
    from .graft_plan import Action, GraftPlan, GraftReport, KeyPlan
    from .planner import plan_from_mapping
    from .rules import RenameRules, load_rules
    from .source import SourceWeights, read_source
    from .verify import Verification, compare_models, verify_graft

__all__ = [
    "Action",
    "Checkpoint",
    "GraftPlan",
    "GraftReport",
    "KeyPlan",
    "ReaderLimits",
    "RenameRules",
    "SourceWeights",
    "Verification",
    "apply_plan",
    "compare_models",
    "graft",
    "load_rules",
    "plan_from_mapping",
    "plan_graft",
    "read_checkpoint",
    "read_source",
    "verify_graft",
]
