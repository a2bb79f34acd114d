"""Matching strategies: pure functions from two key->shape tables to a correspondence.

A strategy answers one question — which source key feeds which target key, with what
confidence — and nothing else. What happens to each pair (copy, reshape, adapt, skip) is
decided afterwards by :func:`torchgraft.grafting.planner.build_plan` with :mod:`.values.adapt`.

* ``exact``  — names and shapes must agree everywhere; any difference is an error.
* ``shape``  — pair equal names of equal shape; skip the rest (the tutorial's filter).
* ``order``  — pair in stored order; stop at the first pair that cannot be reconciled.
* ``rules``  — rename source keys with rules given as data, then pair equal names.
* ``auto``   — strip/add wrapper prefixes, pair equal names, then match the rest by
  structure (:mod:`.structure`) when names and order both differ.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from ..errors import GraftError
from ..wording import option
from .correspondence import Match, MatchContext, TensorInfo, is_float, pair_counters
from .graft_plan import Action
from .structure import canonical_shape, match_structure
from .values.adapt import propose

__all__ = ["STRATEGIES", "Match", "MatchContext", "TensorInfo", "strip_prefixes"]

#: Components that wrappers insert and that never name a real layer.
WRAPPER_COMPONENTS = ("_orig_mod", "module")


Strategy = Callable[[Mapping[str, TensorInfo], Mapping[str, TensorInfo], MatchContext], Match]


def match_exact(source, target, context: MatchContext) -> Match:
    """Every target key in the source with its shape, and nothing else in the source.

    Raises:
        GraftError: listing missing, unexpected and shape-mismatched keys.
    """
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    mismatched = [
        f"{k} {list(source[k][0])} vs {list(target[k][0])}"
        for k in target
        if k in source and source[k][0] != target[k][0]
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                parts.append(
                    f"{title} ({len(items)}): {', '.join(items[:6])}{' …' if len(items) > 6 else ''}"
                )
        raise GraftError(
            "strategy 'exact' found differences; "
            + "; ".join(parts)
            + f". Use {option('strategy', 'shape')} to skip them or {option('strategy', 'auto')} "
            "to match names by structure"
        )
    return Match.of({k: k for k in target}, "name")


def match_shape(source, target, context: MatchContext) -> Match:
    """Equal names with equal shapes; everything else is left for the plan to report."""
    return Match.of({k: k for k in target if k in source and source[k][0] == target[k][0]}, "name")


def match_order(source, target, context: MatchContext) -> Match:
    """Pair floating tensors in stored order; integer counters follow their module.

    Raises:
        GraftError: at the first pair that cannot be reconciled, naming both keys.
    """
    t_keys = [k for k in target if is_float(target[k])]
    s_keys = [k for k in source if is_float(source[k])]
    match = Match()
    for index, (t_key, s_key) in enumerate(zip(t_keys, s_keys, strict=False)):
        action, _, detail = propose(
            t_key, target[t_key][0], source[s_key][0], context.adapt, source_key=s_key
        )
        if action is Action.SKIP_SHAPE and t_key not in context.adapt.head_keys:
            raise GraftError(
                f"strategy 'order' stopped at pair #{index}: target '{t_key}' "
                f"{list(target[t_key][0])} and source '{s_key}' {list(source[s_key][0])} "
                f"cannot be reconciled ({detail}). The orders differ from here on; try "
                f"{option('strategy', 'auto')}"
            )
        match.pair(t_key, s_key, "stored-order")
    if len(s_keys) != len(t_keys):
        match.notes.append(
            f"order: {len(t_keys)} target and {len(s_keys)} source weights; "
            f"the last {abs(len(t_keys) - len(s_keys))} are left unpaired"
        )
    pair_counters(source, target, match)
    return match


def match_rules(source, target, context: MatchContext) -> Match:
    """Rename source keys with ``context.rules``, then pair equal names.

    Raises:
        GraftError: no rules given, or two source keys renamed to one target key.
    """
    if context.rules is None:
        raise GraftError(f"strategy 'rules' needs rename rules ({option('rules', 'RULES.yaml')})")
    renamed: dict[str, str] = {}
    for key in source:
        new = context.rules.apply(key)
        if new in renamed:
            raise GraftError(
                f"rename rules map both '{renamed[new]}' and '{key}' to '{new}'; make them distinct"
            )
        renamed[new] = key
    return Match.of({k: renamed[k] for k in target if k in renamed}, "rules")


def match_auto(source, target, context: MatchContext) -> Match:
    """Prefixes, then equal names whose shapes fit, then structure for what is left, then
    equal names whose shapes conflict (reported as such).

    An equal name is evidence only when the shapes fit (equal, or adaptable: a head's class
    rows, a stem's input channels): two codebases can use one name for different layers
    (EfficientNet-PyTorch's ``_bn1`` is the head's norm, timm's ``bn1`` the stem's), and
    pairing those by name would leave both real counterparts unpaired.
    """
    transform, note = strip_prefixes(list(source), list(target))
    match = Match(notes=[note] if note else [])
    by_new_name = {transform(k): k for k in source}
    for key in target:
        found = by_new_name.get(key)
        if (
            found is not None
            and is_float(target[key])  # counters follow their module, below
            and _shapes_fit(key, target[key][0], source[found][0], context)
        ):
            match.pair(key, found, "name")
    _drop_contested_names(match, source, target)
    left_target = {k: v for k, v in target.items() if k not in match.pairs and is_float(v)}
    used = {s for s, _ in match.pairs.values()}
    left_source = {k: v for k, v in source.items() if k not in used and is_float(v)}
    if left_target and left_source:
        left_source = _focus(left_source, left_target, context, match)
        structural = match_structure(left_source, left_target, context)
        match.pairs.update(structural.pairs)
        match.evidence.update(structural.evidence)
        match.unresolved.update(structural.unresolved)
        match.notes += structural.notes
        match.ties += structural.ties
    pair_counters(source, target, match)
    used = {s for s, _ in match.pairs.values()}
    for key in target:
        found = by_new_name.get(key)
        if key not in match.pairs and found is not None and found not in used:
            match.pair(key, found, "name")
            match.unresolved.pop(key, None)
    return match


#: Fewest tensors outside the focused part of a source that make it "another part" (a
#: second tower), not a classifier that a focus would wrongly set aside.
MIN_SET_ASIDE = 8


def _focus(source, target, context: MatchContext, match: Match):
    """The part of ``source`` under one module when the target is only that part.

    A checkpoint of several models (OpenAI CLIP's image and text towers) offers same-shaped
    layers in both parts; matched whole, the other part's layers make every tie ambiguous.
    When the tensors under one module fit as many of the target's shapes as the whole source
    does (heads aside: a new head is the target's own), and at least :data:`MIN_SET_ASIDE`
    tensors lie outside it, only that module is matched; the rest is set aside, said in a
    note and left unused. The deepest such module is taken.
    """
    wanted = Counter(
        canonical_shape(shape)
        for k, (shape, _) in target.items()
        if k not in context.adapt.head_keys
    )

    # one pass: the canonical shapes under each module prefix (1-3 components)
    under: dict[str, Counter] = {}
    for key, (shape, _) in source.items():
        parts = key.split(".")
        for depth in range(1, min(4, len(parts))):
            prefix = ".".join(parts[:depth]) + "."
            under.setdefault(prefix, Counter())[canonical_shape(shape)] += 1

    def fits(shapes: Counter) -> int:
        return sum((wanted & shapes).values())

    everything = fits(Counter(canonical_shape(shape) for shape, _ in source.values()))
    if everything == 0:  # nothing fits anywhere: no part is "the" part
        return source
    best = None
    for prefix, shapes in under.items():
        inside = shapes.total()
        if len(source) - inside < MIN_SET_ASIDE or fits(shapes) < everything:
            continue
        if best is None or inside < best[1]:
            best = (prefix, inside)
    if best is None:
        return source
    inside = [k for k in source if k.startswith(best[0])]
    prefix = best[0]
    match.notes.append(
        f"source: only '{prefix}' holds the target's layers; the {len(source) - len(inside)} "
        f"other source tensors (another part of the checkpoint) were set aside"
    )
    return {k: source[k] for k in inside}


def _drop_contested_names(match: Match, source, target) -> None:
    """Unpair equal numbered names that the source itself contradicts.

    Two codebases can count from 0 and from 1: the source's ``bn1`` is then the target's
    ``bn2``, and the target's ``bn1`` is the source's ``bn0``. When a name-paired module
    with a number in its name has an unpaired source sibling of the same shapes and the same
    name but another number, the equal name proves nothing: those pairs go back to the
    structural matcher, where order decides (and says so).
    """
    owner = {t.rpartition(".")[0]: s.rpartition(".")[0] for t, (s, _) in match.pairs.items()}
    used_modules = set(owner.values())
    source_modules: dict[str, list[str]] = {}  # parent -> child modules
    shapes_of: dict[str, list] = {}  # module -> its (role, shape) items
    for key, info in source.items():
        module, _, role = key.rpartition(".")
        if module not in shapes_of:
            source_modules.setdefault(module.rpartition(".")[0], []).append(module)
        shapes_of.setdefault(module, []).append((role, tuple(info[0])))
    contested = set()
    for t_module, s_module in owner.items():
        name = s_module.rpartition(".")[2]
        if not any(c.isdigit() for c in name):
            continue
        parent = s_module.rpartition(".")[0]
        skeleton, shapes = _NUMBER.sub("#", name), sorted(shapes_of[s_module])
        for sibling in source_modules.get(parent, []):
            sibling_name = sibling.rpartition(".")[2]
            if (
                sibling not in used_modules
                and _NUMBER.sub("#", sibling_name) == skeleton
                and sorted(shapes_of[sibling]) == shapes
            ):
                contested.add(t_module)
    for key in [k for k in match.pairs if k.rpartition(".")[0] in contested]:
        del match.pairs[key]
        match.evidence.pop(key, None)
    if contested:
        match.notes.append(
            f"names: {len(contested)} modules with equal numbered names were not paired by "
            "name, since the source numbers a same-shaped sibling differently (e.g. "
            f"{sorted(contested)[0]}); order decides them"
        )


_NUMBER = re.compile(r"\d+")


def _shapes_fit(key: str, target_shape, source_shape, context: MatchContext) -> bool:
    """Whether an equal name is evidence: equal or adaptable shapes, or a head key (a head of
    another size is paired with its namesake, to be adapted or reported as skipped)."""
    if tuple(target_shape) == tuple(source_shape) or key in context.adapt.head_keys:
        return True
    action, _, _ = propose(key, target_shape, source_shape, context.adapt, source_key=key)
    return action is not Action.SKIP_SHAPE


STRATEGIES: dict[str, Strategy] = {
    "exact": match_exact,
    "shape": match_shape,
    "order": match_order,
    "rules": match_rules,
    "auto": match_auto,
}


def strip_prefixes(
    source_keys: Sequence[str], target_keys: Sequence[str]
) -> tuple[Callable[[str], str], str]:
    """The source-key renaming (drop wrapper components, strip and add a prefix) that makes
    the most source keys equal target keys, and a note describing it ("" if identity).

    Handles ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile), Lightning's
    attribute prefix (``model.``), and a target that wraps the source (``backbone.``).
    """
    target_set = set(target_keys)

    def unwrap(key: str) -> str:
        parts = [p for p in key.split(".") if p not in WRAPPER_COMPONENTS]
        return ".".join(parts)

    base = {k: (unwrap(k) if unwrap(k) else k) for k in source_keys}
    strip_options = ["", *_common_prefixes(list(base.values()))]
    add_options = ["", *_common_prefixes(list(target_keys))]
    best = (-1, "", "")
    for strip in strip_options:
        for add in add_options:
            hits = sum(
                1
                for k in base.values()
                if k.startswith(strip) and add + k[len(strip) :] in target_set
            )
            if hits > best[0]:
                best = (hits, strip, add)
    _, strip, add = best

    def transform(key: str) -> str:
        name = base.get(key, key)
        return add + name[len(strip) :] if name.startswith(strip) else name

    changed = [k for k in source_keys if transform(k) != k]
    if not changed:
        return transform, ""
    example = changed[0]
    return (
        transform,
        f"renamed {len(changed)} source keys by prefix, e.g. '{example}' → '{transform(example)}'",
    )


def _common_prefixes(keys: Sequence[str], share: float = 0.5) -> list[str]:
    """Dotted prefixes (1–3 components, with the dot) shared by at least ``share`` of keys."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(4, len(parts))):
            counts[".".join(parts[:depth]) + "."] += 1
    # rounded up: in a three-key table a prefix held by one key is no wrapper
    threshold = max(1, math.ceil(share * len(keys)))
    return [p for p, c in counts.most_common() if c >= threshold]
