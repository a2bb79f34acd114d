"""Structural matching: pair keys whose names AND order both differ.

Both state_dicts become module trees. At each level the items (submodules and tensors) are
paired by *fingerprint* — the multiset of tensor shapes below them — which does not depend
on names. Ties between identical fingerprints are broken by role name (``weight`` with
``weight``) and then by relative order: registration order on the target side; on the
source side its stored order when trustworthy, else its natural sort (``blocks.2`` before
``blocks.10``), which keeps the relative order of same-shaped siblings whose names sort in
forward order (``_bn0`` < ``_bn1``).

Items left over are opened (a container replaced by its children) on the side with fewer
items, so a flat ``_blocks.0 … _blocks.15`` lines up with a nested ``blocks.0.0 … blocks.6.0``;
what still differs is paired by shape similarity when that is unambiguous (a new head, an
adapted stem), and otherwise reported as ambiguous — never guessed.

When the source order is a real registration order (a torch-saved state_dict, a known
source architecture), what is still unpaired is lined up module by module in that order,
across different depths of the two trees, when both sequences of leftover modules hold the
same shapes one for one (a flat ``Sequential`` stem on one side, nested blocks on the other).

A pairing that shapes decided must also agree with the order of the modules it could have
confused (:mod:`.regrouping`): trees that group the same layers differently can make a group
unique at its level and still wrong.

Every pair carries the evidence that decided it — the weakest decision on its path (see
:data:`~.correspondence.EVIDENCE`) — and the confidence that evidence carries.

This module builds the trees, walks them level by level and lines leftovers up across
depths; how the items of one level pair (fingerprints, tie evidence, opening, similarity)
is :mod:`.pairing`'s.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .correspondence import (
    EVIDENCE,
    Match,
    MatchContext,
    TensorInfo,
    is_float,
    pair_counters,
)
from .pairing import (
    Item,
    container_names,
    fp_key,
    natural_key,
    open_both_sides,
    open_smaller_side,
    ordinal_names,
    pair_leftovers,
    pair_level,
    role_class,
)
from .regrouping import check_regrouping, settle_by_owner

__all__ = ["match_structure", "natural_key"]

#: Evidence that only suggests a pairing: such groups are recorded as ties, for
#: :mod:`.resolve` (the source architecture) or the BatchNorm statistics to settle.
UNPROVEN = ("registration-order", "numbered-names", "candidate")


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape with its layout differences removed: size-1 dimensions dropped, and a weight
    flattened behind its first dimension. A layer scale ``(C, 1, 1)`` and ``(C,)``, or a Linear
    ``(out, in*k*k)`` and a ``k x k`` conv ``(out, in, k, k)``, fingerprint alike; whether
    the pair can really be used is then :func:`~torchgraft.grafting.values.adapt.propose`'s call."""
    squeezed = tuple(d for d in shape if d != 1)
    if len(squeezed) <= 2:
        return squeezed
    rest = 1
    for size in squeezed[1:]:
        rest *= size
    return (squeezed[0], rest)


def match_structure(
    source: Mapping[str, TensorInfo], target: Mapping[str, TensorInfo], context: MatchContext
) -> Match:
    """Pair ``source`` and ``target`` keys by structure; see the module docstring."""
    trusted = context.order_trusted or context.source_order is not None
    s_order = _source_order(source, context)
    source_tree = _build_tree(source, s_order)
    target_tree = _build_tree(target, list(target))
    state = _State()
    _match_children(source_tree, target_tree, "unique", trusted, state)
    match = Match(ties=state.ties)
    for t_key, (s_key, evidence) in state.pairs.items():
        match.pair(t_key, s_key, evidence)
    if trusted:
        _line_up_leftovers(source, target, s_order, match)
    check_regrouping(
        match, source, target, s_order, canonical_shape, None if trusted else ordinal_names
    )
    settle_by_owner(match, source)
    pair_counters(source, target, match)
    _explain_unpaired(source, target, match)
    ambiguous = [k for k, why in match.unresolved.items() if why.startswith("ambiguous")]
    if ambiguous:
        match.notes.append(
            f"structure: {len(ambiguous)} target keys are ambiguous (same shapes, nothing in the "
            "names or order tells them apart) and were NOT loaded"
        )
    candidates = [t for t, e in match.evidence.items() if e == "candidate"]
    if candidates:
        match.notes.append(
            f"structure: {len(candidates)} target keys have same-shaped siblings that nothing in "
            "the names or order tells apart: candidate pairings, loaded only if the source "
            "architecture or the BatchNorm statistics settle them"
        )
    for kind, why in (
        ("registration-order", "the source's registration order alone"),
        ("numbered-names", "the natural order of numbered names in a name-sorted source"),
    ):
        weak = [t for t, e in match.evidence.items() if e == kind]
        if weak:
            match.notes.append(
                f"structure: {len(weak)} target keys were told apart from same-shaped siblings "
                f"by {why} (confidence {EVIDENCE[kind]}), which does not prove the pairing"
            )
    if match.pairs:
        kind = "registration" if trusted else "natural name"
        match.notes.append(
            f"structure: {len(match.pairs)} keys paired by shape fingerprints "
            f"({kind} order breaks ties)"
        )
    return match


def _line_up_leftovers(source, target, s_order: Sequence[str], match: Match) -> None:
    """Pair the keys still unpaired on both sides in registration order, when both sides
    hold the same shapes module for module (see the module docstring)."""
    used = {s for s, _ in match.pairs.values()}
    left_t = [(k, target[k][0]) for k in target if k not in match.pairs and is_float(target[k])]
    left_s = [(k, source[k][0]) for k in s_order if k not in used and is_float(source[k])]
    pairs = _line_up(left_s, left_t)
    kinds, ties = _lined_up_kinds(pairs, left_t)
    for s_key, t_key in pairs:
        match.pair(t_key, s_key, kinds[t_key])
    match.ties.extend(ties)
    if pairs:
        match.notes.append(
            f"structure: {len(pairs)} keys at different depths of the two trees lined up in "
            "the source's registration order"
        )


def _line_up(
    left_s: Sequence[tuple[str, tuple[int, ...]]], left_t: Sequence[tuple[str, tuple[int, ...]]]
) -> list[tuple[str, str]]:
    """``(source key, target key)`` pairs lining up two ordered lists of ``(key, shape)``
    module by module, or [] unless every module holds the same shapes and roles as its
    counterpart."""
    modules_s, modules_t = _modules(left_s), _modules(left_t)
    if not modules_t or len(modules_s) != len(modules_t):
        return []
    pairs = []
    for keys_s, keys_t in zip(modules_s, modules_t, strict=True):
        if len(keys_s) != len(keys_t):
            return []
        for (s_key, s_shape), (t_key, t_shape) in zip(keys_s, keys_t, strict=True):
            same_role = role_class(s_key.rpartition(".")[2]) == role_class(t_key.rpartition(".")[2])
            if tuple(s_shape) != tuple(t_shape) or not same_role:
                return []
            pairs.append((s_key, t_key))
    return pairs


def _lined_up_kinds(
    pairs: list[tuple[str, str]], left_t: Sequence[tuple[str, tuple[int, ...]]]
) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """The evidence of each lined-up target key, and the tie groups.

    A lined-up module whose shapes no other lined-up module has is the one counterpart
    there is (``unique``); same-shaped ones were told apart by registration order alone
    (``registration-order``), and each such set is a tie group for the source architecture
    or the BatchNorm statistics to settle."""
    shapes = dict(left_t)
    owner_s = {t.rpartition(".")[0]: s.rpartition(".")[0] for s, t in pairs}
    signature: dict[str, list] = defaultdict(list)
    for _, t_key in pairs:
        signature[t_key.rpartition(".")[0]].append(tuple(shapes[t_key]))
    by_signature: dict[tuple, list[str]] = defaultdict(list)
    for module, module_shapes in signature.items():
        by_signature[tuple(sorted(module_shapes))].append(module)
    kinds, ties = {}, []
    for modules in by_signature.values():
        kind = "unique" if len(modules) == 1 else "registration-order"
        for module in modules:
            for _, t_key in pairs:
                if t_key.rpartition(".")[0] == module:
                    kinds[t_key] = kind
        if len(modules) > 1:
            ties.append([(owner_s[m], m) for m in modules])
    return kinds, ties


def _modules(keys: Sequence[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple]]]:
    """``(key, shape)`` items grouped by owning module, modules in order of their first key."""
    grouped: dict[str, list[tuple[str, tuple]]] = {}
    for key, shape in keys:
        grouped.setdefault(key.rpartition(".")[0], []).append((key, shape))
    return list(grouped.values())


def _source_order(source: Mapping[str, TensorInfo], context: MatchContext) -> list[str]:
    if context.source_order is not None:
        known = [k for k in context.source_order if k in source]
        return known + [k for k in source if k not in set(known)]
    if context.order_trusted:
        return list(source)
    return sorted(source, key=natural_key)


def _build_tree(infos: Mapping[str, TensorInfo], order: Sequence[str]) -> Item:
    root = Item("", 0.0)
    nodes: dict[str, Item] = {"": root}
    for position, key in enumerate(order):
        shape, dtype = infos[key]
        if not is_float((shape, dtype)):
            continue
        parts = key.split(".")
        parent = root
        for depth in range(1, len(parts)):
            path = ".".join(parts[:depth])
            if path not in nodes:
                nodes[path] = Item(path, float(position))
                parent.children.append(nodes[path])
            parent = nodes[path]
        leaf = Item(key, float(position), key=key, fingerprint=Counter([canonical_shape(shape)]))
        parent.children.append(leaf)
    _fingerprint(root)
    _mark_indexed(root)
    return root


def _mark_indexed(item: Item) -> None:
    """Mark the children of every container (:func:`~.pairing.container_names`)."""
    modules = [child for child in item.children if not child.is_tensor]
    if len(modules) == len(item.children) and container_names([c.name for c in modules]):
        for child in modules:
            child.indexed = True
    for child in modules:
        _mark_indexed(child)


def _fingerprint(item: Item) -> Counter:
    if item.is_tensor:
        return item.fingerprint
    total: Counter = Counter()
    for child in item.children:
        total.update(_fingerprint(child))
    item.fingerprint = total
    return total


@dataclass
class _State:
    """What the recursion collects: key pairs with their evidence, and the groups paired by
    unproven order."""

    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    ties: list[list[tuple[str, str]]] = field(default_factory=list)


#: Evidence that is everywhere and says little; on equal confidence, another kind is shown.
_PLAIN = ("unique", "role")


def _weaker(a: str, b: str) -> str:
    """The weaker of two kinds of evidence; on equal confidence the more telling one (the
    order that decided a block, rather than the role that decided a tensor inside it)."""
    if EVIDENCE[a] != EVIDENCE[b]:
        return a if EVIDENCE[a] < EVIDENCE[b] else b
    return b if a in _PLAIN and b not in _PLAIN else a


def _match_children(source: Item, target: Item, evidence: str, trusted: bool, state: _State):
    left_s = sorted(source.children, key=lambda i: i.position)
    left_t = sorted(target.children, key=lambda i: i.position)
    matched, left_s, left_t = _pair_opening(left_s, left_t, trusted)
    regroupable = trusted
    while trusted and left_s and left_t:
        leaves_t = _leaves(left_t)
        lined = _line_up(_leaves(left_s), leaves_t)
        if lined:
            kinds, ties = _lined_up_kinds(lined, leaves_t)
            for s_key, t_key in lined:
                state.pairs[t_key] = (s_key, _weaker(evidence, kinds[t_key]))
            state.ties.extend(ties)
            left_s = left_t = []
        elif regroupable and (both := open_both_sides(left_s, left_t)) is not None:
            # the same layers grouped differently (Swin's patch merging at the end of its
            # stage or at the start of the next): one level down on both sides, once
            regroupable = False
            more, left_s, left_t = _pair_opening(*both, trusted)
            matched += more
        else:
            break
    matched += pair_leftovers(left_s, left_t)
    _record_ties(matched, state)
    for s_item, t_item, how in matched:
        _descend(s_item, t_item, _weaker(evidence, how), trusted, state)


def _pair_opening(left_s: list[Item], left_t: list[Item], trusted: bool):
    """Pair a level, opening the side with fewer leftovers while that pairs more."""
    matched, left_s, left_t = pair_level(left_s, left_t, trusted)
    while left_s and left_t:
        opened = open_smaller_side(left_s, left_t)
        if opened is None:
            break
        left_s, left_t = opened
        more, left_s, left_t = pair_level(left_s, left_t, trusted)
        matched += more
    return matched, left_s, left_t


def _leaves(items: list[Item]) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, canonical shape)`` of every tensor under ``items``, in stored order."""
    found: list[Item] = []
    stack = list(items)
    while stack:
        item = stack.pop()
        if item.is_tensor:
            found.append(item)
        else:
            stack.extend(item.children)
    found.sort(key=lambda i: i.position)
    return [(i.key, next(iter(i.fingerprint))) for i in found]


def _record_ties(matched: list[tuple[Item, Item, str]], state: _State) -> None:
    """Groups of same-fingerprint items paired by unproven order, for :mod:`.resolve` to
    settle by running the models when the source architecture is known."""
    groups: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for s_item, t_item, how in matched:
        if how in UNPROVEN:
            groups[fp_key(t_item)].append((s_item.path, t_item.path))
    state.ties.extend(group for group in groups.values() if len(group) > 1)


def _descend(s_item: Item, t_item: Item, evidence: str, trusted: bool, state: _State) -> None:
    pairs = state.pairs
    if s_item.is_tensor and t_item.is_tensor:
        pairs[t_item.key] = (s_item.key, evidence)
    elif not s_item.is_tensor and not t_item.is_tensor:
        _match_children(s_item, t_item, evidence, trusted, state)
    elif t_item.is_tensor:
        # A tensor against a module holding exactly one tensor (an extra wrapper level).
        inner = _single_tensor(s_item)
        if inner is not None:
            pairs[t_item.key] = (inner.key, evidence)
    else:
        inner = _single_tensor(t_item)
        if inner is not None:
            pairs[inner.key] = (s_item.key, evidence)


def _single_tensor(item: Item) -> Item | None:
    while not item.is_tensor and len(item.children) == 1:
        item = item.children[0]
    return item if item.is_tensor else None


def _explain_unpaired(source, target, match: Match) -> None:
    used = {s for s, _ in match.pairs.values()}
    free_by_shape: dict[tuple, list[str]] = defaultdict(list)
    for key, info in source.items():
        if key not in used:
            free_by_shape[info[0]].append(key)
    for key, info in target.items():
        if key in match.pairs:
            continue
        candidates = free_by_shape.get(info[0], [])
        if len(candidates) >= 2:
            shown = ", ".join(candidates[:3]) + (" …" if len(candidates) > 3 else "")
            match.unresolved[key] = (
                f"ambiguous: {len(candidates)} unpaired sources of this shape ({shown})"
            )
