"""Settle, by running the models, the pairings that shapes and names could not.

The structural matcher pairs same-shaped siblings by an order that proves nothing when
nothing else tells them apart — the source's registration order alone, or the natural order
of numbered names in a name-sorted source — because two libraries can register the same
layers in different orders (torchvision's RegNet registers the shortcut ``proj`` before
``f.a``; timm registers ``conv1`` before ``downsample``).

When the source architecture is known, each such group is settled by evidence instead: every
assignment of the group's sources to its targets is grafted into a copy of the target, the
copy and the source model run on one input, and the assignment whose *enclosing module* (the
block holding the group) reproduces the source block's output best is kept. Groups are
settled in forward order, so by the time a block is compared everything before it is already
right and both blocks see the same input. The winner is proven (evidence ``architecture``)
only when it reproduces the source block within :data:`EXACT`; otherwise, or for a group of
more than ``MAX_GROUP`` items (too many permutations), the group stays unproven.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .apply import apply_plan
from .correspondence import Match
from .graft_plan import GraftPlan
from .verify import comparable_outputs, module_in_model, module_output, probe_input

__all__ = ["EXACT", "MAX_GROUP", "Judge", "resolve_ties", "settle", "tie_blocks"]

#: Largest tie group whose permutations are tried, and most trials per block.
MAX_GROUP = 4
MAX_TRIALS = 48
#: Most assignments looked through (without running anything) for the few that keep each
#: target module's tied parts in one source module, and most of those then run: a block
#: that only this narrowing brings within reach gets few trials (each one runs the model),
#: so a graft does not spend minutes on blocks order already settles (RegNetY: 15x slower
#: at 48).
MAX_ENUMERATED = 20_000
MAX_KEPT_TOGETHER = 8
#: Largest relative difference between the two blocks' outputs for a proven assignment
#: (float32 rounding; a wrong pairing differs by orders of magnitude more).
EXACT = 1e-4
#: How many parents of the source's enclosing module are tried as the target block's match.
SOURCE_LEVELS = 2


#: A judge: ``(target block, source block, trials, run, moved) -> (index of the chosen trial
#: or None, a note)``; ``run(trial)`` grafts a trial into the trial model and returns it;
#: ``moved`` lists the target modules whose sources the trials permute.
Judge = Callable[
    [str, str, list[dict], Callable[[dict], nn.Module], list[str]], tuple[int | None, str]
]


def resolve_ties(
    plan: GraftPlan,
    target: nn.Module,
    reference: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    rebuild,
) -> GraftPlan:
    """A plan whose unproven ties are settled by comparing the blocks' outputs with the
    source architecture's (evidence ``architecture``).

    Args:
        plan: the plan with ``plan.ties``; returned unchanged when it has none.
        target: the target model (not changed: trials run on a copy).
        reference: the source architecture holding the source weights.
        tensors: the source tensors.
        rebuild: ``callable(Match) -> GraftPlan`` that turns a correspondence into a plan
            (the caller's ``build_plan`` with its adaptation context).
    """
    example = probe_input(target)

    def judge(target_block, source_block, trials, run, _moved):
        if not target_block:  # a group spread over the whole model: compare whole models
            source_block = ""
        outputs = [module_output(run(trial), target_block, example) for trial in trials]
        if any(got is None for got in outputs):
            return None, ""  # the target block has no output to compare: leave the group
        # The source module that computes what the target block computes: the one holding
        # the tied modules, or a parent a level or two up (Hugging Face's ResNet holds a
        # block's convolutions in a Sequential of their own; the residual sum is its parent's).
        for candidate in _and_parents(module_in_model(reference, source_block), SOURCE_LEVELS):
            expected = module_output(reference, candidate, example)
            if expected is None or any(not comparable_outputs(got, expected) for got in outputs):
                continue
            scale = expected.abs().max().clamp_min(1e-12)
            differences = [
                float((got.reshape(expected.shape) - expected).abs().max() / scale)
                for got in outputs
            ]
            best = min(range(len(trials)), key=differences.__getitem__)
            if differences[best] <= EXACT:
                return best, ""
        return None, ""

    settled, summary = settle(plan, target, tensors, rebuild, judge, "architecture")
    settled.notes.append(
        f"resolve: {summary['settled']} of {summary['blocks']} block(s) of same-shaped siblings "
        "proven by running the source architecture side by side"
    )
    return settled


def settle(plan: GraftPlan, target: nn.Module, tensors, rebuild, judge: Judge, evidence: str):
    """Try every assignment of each block's tie groups (blocks in forward order, so each
    sees the inputs already settled) and keep what ``judge`` chooses, its keys marked with
    ``evidence``. Returns the new plan and ``{"blocks", "settled", "notes"}``."""
    summary: dict = {"blocks": 0, "settled": 0, "notes": []}
    if not plan.ties:
        return plan, summary
    trial_model = copy.deepcopy(target)
    pairs = _pairs_of(plan)
    target_keys = list(target.state_dict())

    def run(trial):
        _apply(trial_model, rebuild(_as_match(trial)), tensors)
        return trial_model

    for (target_block, source_block), groups in tie_blocks(plan.ties, tensors, target_keys):
        summary["blocks"] += 1
        trials = _trials(groups, pairs, tensors, evidence)
        if len(trials) < 2:
            continue
        moved = [t for group in groups for _, t in group]
        chosen, note = judge(target_block, source_block, trials, run, moved)
        if note:
            summary["notes"].append(note)
        if chosen is not None:
            pairs = trials[chosen]
            summary["settled"] += 1
    settled = rebuild(_as_match(pairs, _unresolved_of(plan)))
    settled.notes = list(plan.notes) + summary["notes"]
    return settled, summary


def _pairs_of(plan: GraftPlan) -> dict[str, tuple[str, str]]:
    """``{target: (source, evidence)}`` of every pairing in ``plan`` (a same-named source
    skipped for its shape is not a pairing: it has no evidence)."""
    return {e.target: (e.source, e.evidence) for e in plan.entries if e.source and e.evidence}


def _unresolved_of(plan: GraftPlan) -> dict[str, str]:
    return {e.target: e.detail for e in plan.entries if e.source is None and e.detail}


def _trials(groups, pairs, tensors, evidence: str) -> list[dict]:
    """Every assignment of the groups' sources to their targets (at most MAX_TRIALS)."""
    choices = [list(itertools.permutations([s for s, _ in g])) for g in groups]
    combinations: Iterable = itertools.product(*choices)
    if _count(choices) > MAX_TRIALS:
        # Too many to run: only those that keep each target module's tied parts together
        # in one source module (a ConvNormAct's conv and norm from one conv-norm module),
        # when they are few enough — else the group stays unproven.
        if _count(choices) > MAX_ENUMERATED:
            return []
        parents = _fixed_parents(pairs, groups)
        combinations = [c for c in combinations if _kept_together(groups, c, parents)]
        if len(combinations) > MAX_KEPT_TOGETHER:
            return []
    trials = []
    for combination in combinations:
        trial = dict(pairs)
        for group, order in zip(groups, combination, strict=True):
            current = {t: s for s, t in group}
            targets = [t for _, t in group]
            trial = _reassign(
                trial, dict(zip(targets, order, strict=True)), current, tensors, evidence
            )
            if trial is None:
                break
        if trial is not None:
            trials.append(trial)
    return trials


def _fixed_parents(pairs, groups) -> dict[str, set[str]]:
    """Target parent module -> the source parent modules of its tensors that no group moves
    (``s1.b1.conv2`` -> ``layer.1``: its conv was paired for sure)."""
    moved = {t for group in groups for _, t in group}
    found: dict[str, set[str]] = {}
    for target_key, (source_key, _) in pairs.items():
        target_module = target_key.rpartition(".")[0]
        if target_module in moved:
            continue
        source_parent = source_key.rpartition(".")[0].rpartition(".")[0]
        found.setdefault(target_module.rpartition(".")[0], set()).add(source_parent)
    return found


def _kept_together(groups, combination, fixed: dict[str, set[str]]) -> bool:
    """True when every target module whose tied parts move draws them, and its other
    parts, from one source module."""
    chosen: dict[str, set[str]] = {}
    for group, order in zip(groups, combination, strict=True):
        for (_, target), source in zip(group, order, strict=True):
            parent = target.rpartition(".")[0]
            chosen.setdefault(parent, set(fixed.get(parent, ()))).add(source.rpartition(".")[0])
    return all(len(sources) == 1 for sources in chosen.values())


def _as_match(pairs, unresolved: dict[str, str] | None = None) -> Match:
    match = Match(unresolved=dict(unresolved or {}))
    for target, (source, evidence) in pairs.items():
        match.pair(target, source, evidence or "plan")
    return match


def tie_blocks(ties, tensors, target_keys: list[str]):
    """Tie groups as module pairs, merged per enclosing target block, blocks in forward
    (target state_dict) order.

    A tie can pair tensors (two BatchNorm weights) or modules (two convs); both become the
    module pairs that own them, and groups in one block are tried together, since a conv
    and its BatchNorm must move together.
    """
    keys = set(target_keys)
    blocks: dict[tuple[str, str], list[list[tuple[str, str]]]] = {}
    for group in ties:
        modules = list(dict.fromkeys((_owner(s, tensors), _owner(t, keys)) for s, t in group))
        if len(modules) < 2 or len(modules) > MAX_GROUP:
            continue
        key = (_enclosing([t for _, t in modules]), _enclosing([s for s, _ in modules]))
        blocks.setdefault(key, []).append(modules)
    position = {k: i for i, k in enumerate(target_keys)}

    def first_key(item) -> int:
        targets = [t for group in item[1] for _, t in group]
        return min(
            (i for k, i in position.items() if any(k.startswith(t + ".") for t in targets)),
            default=len(position),
        )

    # forward order; at one position, deeper blocks first (a block's own norms are settled
    # before the blocks around it are compared)
    return sorted(blocks.items(), key=lambda item: (first_key(item), -item[0][0].count(".")))


def _owner(path: str, keys) -> str:
    return path.rpartition(".")[0] if path in keys else path


def _count(choices) -> int:
    total = 1
    for options in choices:
        total *= len(options)
    return total


def _and_parents(path: str, levels: int) -> list[str]:
    """``path`` and up to ``levels`` of its parents, nearest first (never the whole model
    for a block: "" only when ``path`` is "")."""
    found = [path]
    while path and len(found) <= levels:
        path = path.rpartition(".")[0]
        if not path:
            break
        found.append(path)
    return found


def _enclosing(paths: list[str]) -> str:
    """The deepest module holding every path of the group."""
    parts = [p.split(".") for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _reassign(pairs, assignment, current, tensors, evidence: str):
    """``pairs`` with each target module of the group fed from the source module
    ``assignment`` names; None if some key has no counterpart there."""
    result = dict(pairs)
    for target_module, new_source in assignment.items():
        old_source = current[target_module]
        for key, (source_key, _) in pairs.items():
            if not (key == target_module or key.startswith(target_module + ".")):
                continue
            candidate = new_source + source_key[len(old_source) :]
            if candidate not in tensors:
                return None
            result[key] = (candidate, evidence)
    return result


def _apply(model: nn.Module, plan: GraftPlan, tensors) -> None:
    apply_plan(model, plan, tensors)
