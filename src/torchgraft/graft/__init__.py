"""Grafting: load weights whose names, order or shapes do not line up, and say exactly how.

Public API: :func:`plan_graft` (the plan, model untouched), :func:`graft` (plan + apply +
report), :func:`apply_plan` (a plan made earlier, possibly edited), :func:`read_checkpoint`.
"""

from __future__ import annotations

from .api import apply_plan, graft, plan_graft
from .io import Checkpoint, read_checkpoint
from .report import Action, GraftPlan, GraftReport, KeyPlan
from .rules import RenameRules, load_rules

__all__ = [
    "Action",
    "Checkpoint",
    "GraftPlan",
    "GraftReport",
    "KeyPlan",
    "RenameRules",
    "apply_plan",
    "graft",
    "load_rules",
    "plan_graft",
    "read_checkpoint",
]
