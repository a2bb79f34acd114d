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
"""

from __future__ import annotations

import re
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
from .regrouping import check_regrouping

__all__ = ["match_structure", "natural_key"]

#: Evidence that only suggests a pairing: such groups are recorded as ties, for
#: :mod:`.resolve` (the source architecture) or the BatchNorm statistics to settle.
UNPROVEN = ("registration-order", "numbered-names", "candidate")

#: Role names that mean the same thing in different conventions.
ROLE_SYNONYMS = (
    {"weight", "gamma", "scale", "w", "kernel"},
    {"bias", "beta", "offset", "b"},
    {"running_mean", "moving_mean", "mean"},
    {"running_var", "moving_var", "moving_variance", "var"},
)

#: Leftover pairs need at least this shape-multiset overlap (intersection / union).
MIN_SIMILARITY = 0.5


@dataclass
class Item:
    """A module (with children) or a tensor (a leaf) at one level of a tree."""

    path: str
    position: float
    key: str | None = None
    children: list[Item] = field(default_factory=list)
    fingerprint: Counter = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def is_tensor(self) -> bool:
        return self.key is not None


_NUMBER = re.compile(r"([0-9]+)")


def natural_key(key: str) -> tuple:
    """Sort key that orders numbers as numbers: ``blocks.2`` < ``blocks.10``, ``layer2`` <
    ``layer10``."""
    return tuple(
        # ASCII digits only: "²".isdigit() is True, and int("²") raises
        tuple((0, int(t)) if t.isdecimal() else (1, t) for t in _NUMBER.split(part) if t)
        for part in key.split(".")
    )


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape with its layout differences removed: size-1 dimensions dropped, and a weight
    flattened behind its first dimension. A layer scale ``(C, 1, 1)`` and ``(C,)``, or a Linear
    ``(out, in*k*k)`` and a ``k x k`` conv ``(out, in, k, k)``, fingerprint alike; whether
    the pair can really be used is then :func:`~torchgraft.grafting.adapt.propose`'s call."""
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
        match, source, target, s_order, canonical_shape, None if trusted else _ordinal_names
    )
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
            same_role = _role_class(s_key.rpartition(".")[2]) == _role_class(
                t_key.rpartition(".")[2]
            )
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
    return root


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
    matched, left_s, left_t = _pair_level(left_s, left_t, trusted)
    while left_s and left_t:
        opened = _open_smaller_side(left_s, left_t)
        if opened is None:
            break
        left_s, left_t = opened
        more, left_s, left_t = _pair_level(left_s, left_t, trusted)
        matched += more
    if trusted and left_s and left_t:
        leaves_t = _leaves(left_t)
        lined = _line_up(_leaves(left_s), leaves_t)
        if lined:
            kinds, ties = _lined_up_kinds(lined, leaves_t)
            for s_key, t_key in lined:
                state.pairs[t_key] = (s_key, _weaker(evidence, kinds[t_key]))
            state.ties.extend(ties)
            left_s = left_t = []
    matched += _pair_leftovers(left_s, left_t)
    _record_ties(matched, state)
    for s_item, t_item, how in matched:
        _descend(s_item, t_item, _weaker(evidence, how), trusted, state)


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
            groups[_fp_key(t_item)].append((s_item.path, t_item.path))
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


def _pair_level(
    sources: list[Item], targets: list[Item], trusted: bool
) -> tuple[list[tuple[Item, Item, str]], list[Item], list[Item]]:
    """Pair items of equal fingerprint; what cannot be paired with evidence stays left over."""
    by_fp_s: dict[tuple, list[Item]] = defaultdict(list)
    by_fp_t: dict[tuple, list[Item]] = defaultdict(list)
    for item in sources:
        by_fp_s[_fp_key(item)].append(item)
    for item in targets:
        by_fp_t[_fp_key(item)].append(item)
    matched: list[tuple[Item, Item, str]] = []
    for fp, t_items in by_fp_t.items():
        s_items = by_fp_s.get(fp, [])
        if len(s_items) != len(t_items):
            continue
        if len(t_items) == 1:
            matched.append((s_items[0], t_items[0], "unique"))
        else:
            matched += _break_tie(s_items, t_items, trusted)
    paired = {id(i) for s_item, t_item, _ in matched for i in (s_item, t_item)}
    left_s = [i for i in sources if id(i) not in paired]
    left_t = [i for i in targets if id(i) not in paired]
    return matched, left_s, left_t


def _break_tie(s_items: list[Item], t_items: list[Item], trusted: bool):
    """Identical fingerprints need evidence, strongest first:

    1. tensors: the same (or a synonymous) role name — ``weight`` with ``weight``;
    2. modules: the same name without a number — ``downsample`` with ``downsample`` (equal
       *numbers* prove nothing: ``_blocks.1`` and ``blocks.1.1`` are different blocks, and
       ``bn1`` of a codebase counting from 0 is ``bn2`` of one counting from 1);
    3. order, when the names on both sides carry one (``_bn0``, ``_bn1`` and ``bn1``, ``bn2``;
       list indices) and it agrees with the registration order on each side: proven
       (``order``). In a name-sorted source the natural order of its numbered names is the
       only order there is: a suggestion (``numbered-names``, 0.75);
    4. the source's registration order alone (a torch-saved state_dict, a module), or
       against what the numbered names say: a suggestion (``registration-order``, 0.5),
       since two libraries can register the same layers in different orders (torchvision's
       RegNet registers ``proj`` before ``f.a``, timm ``conv1`` before ``downsample``).
    5. nothing (a name-sorted source with unrelated names): paired in stored order as
       ``candidate`` (confidence 0), a trial assignment and nothing more.
    Suggestions and candidates are recorded as ties for the source architecture or the
    BatchNorm statistics to settle; a graft refuses what stays unproven, and candidates
    that nothing settled are dropped (:func:`~.resolve.drop_candidates`) and reported as
    ambiguous.
    """
    matched = []
    remaining_s, remaining_t = list(s_items), list(t_items)
    for t_item in t_items:
        same = [s for s in remaining_s if _same_name(s, t_item)]
        if len(same) == 1:
            matched.append((same[0], t_item, "role"))
            remaining_s.remove(same[0])
            remaining_t.remove(t_item)
    if not remaining_s:
        return matched
    source_names = [i.name for i in remaining_s]
    target_names = [i.name for i in remaining_t]
    numbered = _ordinal_names(source_names) and _ordinal_names(target_names)
    if numbered and not trusted:
        how = "numbered-names"
    elif numbered and _names_in_order(remaining_s) and _names_in_order(remaining_t):
        how = "order"
    elif trusted:
        how = "registration-order"
    else:
        how = "candidate"
    matched += [(s, t, how) for s, t in zip(remaining_s, remaining_t, strict=True)]
    return matched


def _names_in_order(items: list[Item]) -> bool:
    """True when the items' registration order is the natural order of their names."""
    return [i.name for i in items] == sorted((i.name for i in items), key=natural_key)


def _same_name(s_item: Item, t_item: Item) -> bool:
    if s_item.is_tensor and t_item.is_tensor:
        return _same_role(s_item.name, t_item.name)
    if s_item.is_tensor or t_item.is_tensor:
        return False
    # A name with a number in it proves nothing across codebases: EfficientNet-PyTorch's
    # _bn1 is the norm timm calls bn2 (numbered from 0 and from 1), _blocks.1 is blocks.1.0.
    return not any(c.isdigit() for c in s_item.name) and s_item.name == t_item.name


def _ordinal_names(names: list[str]) -> bool:
    """True when names differ only in a number or a single letter (``_bn0``/``_bn1``,
    ``ln_1``/``ln_2``, ``norm_a``/``norm_b``, list indices), so their natural sort is their
    intended order."""
    if len(names) < 2:
        return True
    skeletons = {_ORDINAL.sub("#", name) for name in names}
    return len(skeletons) == 1 and "#" in next(iter(skeletons))


#: A number, or a letter standing alone between separators (``norm_a``, ``f.a``).
_ORDINAL = re.compile(r"\d+|(?<![A-Za-z])[A-Za-z](?![A-Za-z])")


def _open_smaller_side(left_s: list[Item], left_t: list[Item]):
    """Replace the containers on the side with fewer leftovers by their children."""
    can_s = any(not i.is_tensor for i in left_s)
    can_t = any(not i.is_tensor for i in left_t)
    if len(left_s) < len(left_t) and can_s:
        return _open(left_s), left_t
    if len(left_t) < len(left_s) and can_t:
        return left_s, _open(left_t)
    if len(left_s) == len(left_t):
        return None
    if can_s:
        return _open(left_s), left_t
    if can_t:
        return left_s, _open(left_t)
    return None


def _open(items: list[Item]) -> list[Item]:
    opened: list[Item] = []
    for item in items:
        opened.extend(item.children if not item.is_tensor else [item])
    return sorted(opened, key=lambda i: i.position)


def _pair_leftovers(left_s: list[Item], left_t: list[Item]) -> list[tuple[Item, Item, str]]:
    """Pair items whose fingerprints differ when each has one clearly best counterpart."""
    matched = []
    taken: set[int] = set()
    for t_item in left_t:
        scored = sorted(
            ((_similarity(s, t_item), s) for s in left_s if id(s) not in taken),
            key=lambda pair: -pair[0],
        )
        if not scored or scored[0][0] < MIN_SIMILARITY:
            if len(left_s) == len(left_t) == 1 and _compatible(left_s[0], t_item):
                matched.append((left_s[0], t_item, "leftover"))
                taken.add(id(left_s[0]))
            continue
        if len(scored) > 1 and scored[1][0] == scored[0][0]:
            continue  # two equally good sources: ambiguous, leave it
        best = scored[0][1]
        rivals = [t for t in left_t if t is not t_item and _similarity(best, t) >= scored[0][0]]
        if rivals:
            continue
        matched.append((best, t_item, "leftover"))
        taken.add(id(best))
    return matched


def _similarity(a: Item, b: Item) -> float:
    """How alike two items are, in [0, 1]: tensors by role and dimensions, modules by the
    overlap of their (rank, output width) multisets."""
    if a.is_tensor and b.is_tensor:
        (shape_a,), (shape_b,) = a.fingerprint, b.fingerprint
        if len(shape_a) != len(shape_b):
            return 0.0
        equal_dims = sum(x == y for x, y in zip(shape_a, shape_b, strict=True))
        role = 0.5 if _same_role(a.name, b.name) else 0.25
        return role + 0.5 * equal_dims / max(1, len(shape_a))
    if a.is_tensor != b.is_tensor:
        return 0.0
    shapes_a = _shape_multiset(a)
    shapes_b = _shape_multiset(b)
    union = sum((shapes_a | shapes_b).values())
    return sum((shapes_a & shapes_b).values()) / union if union else 0.0


def _shape_multiset(item: Item) -> Counter:
    """Shapes with the channel counts kept but the first two dimensions sorted away, so a
    stem conv with another input width still resembles its original."""
    counts: Counter = Counter()
    for shape, n in item.fingerprint.items():
        counts[(len(shape), shape[0] if shape else 0)] += n
    return counts


def _compatible(a: Item, b: Item) -> bool:
    """Worth pairing as the one counterpart left: tensors of the same role and rank,
    modules holding tensors of the same roles."""
    if a.is_tensor or b.is_tensor:
        return a.is_tensor and b.is_tensor and _similarity(a, b) >= MIN_SIMILARITY
    return _roles(a) == _roles(b)


def _roles(item: Item) -> list[str]:
    if item.is_tensor:
        return [_role_class(item.name)]
    return sorted(r for child in item.children for r in _roles(child))


def _role_class(role: str) -> str:
    return next((min(group) for group in ROLE_SYNONYMS if role in group), role)


def _fp_key(item: Item) -> tuple:
    return tuple(sorted(item.fingerprint.items()))


def _same_role(a: str, b: str) -> bool:
    if a == b:
        return True
    return any(a in group and b in group for group in ROLE_SYNONYMS)


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
