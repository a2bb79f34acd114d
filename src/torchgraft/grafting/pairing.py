"""Pairing the items of one tree level, for the structural matcher (:mod:`.structure`).

In: the items (submodules and tensors, each an :class:`Item`) of one level on each side, in
order, and whether the source's order is a real registration order. Out: ``(source item,
target item, evidence)`` triples and the items left over. Nothing here keeps state, recurses
into the pairs it makes or records ties and notes: :mod:`.structure` does that.

Items pair by *fingerprint* (the multiset of tensor shapes below them). Identical
fingerprints are told apart by role name, then by order (:func:`pair_level`; the rungs of
evidence are listed in ``_break_tie``). Leftovers are opened on the side with fewer items
(:func:`open_smaller_side`), and what still differs is paired by shape similarity when one
counterpart is clearly best (:func:`pair_leftovers`) — otherwise left alone, never guessed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

__all__ = [
    "MIN_SIMILARITY",
    "ROLE_SYNONYMS",
    "Item",
    "container_indices",
    "container_names",
    "fp_key",
    "natural_key",
    "open_both_sides",
    "open_smaller_side",
    "ordinal_names",
    "pair_leftovers",
    "pair_level",
    "role_class",
]

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
    #: a child of a container, named by its index (see :func:`container_names`)
    indexed: bool = False

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


def pair_level(
    sources: list[Item], targets: list[Item], trusted: bool
) -> tuple[list[tuple[Item, Item, str]], list[Item], list[Item]]:
    """Pair items of equal fingerprint; what cannot be paired with evidence stays left over."""
    by_fp_s: dict[tuple, list[Item]] = defaultdict(list)
    by_fp_t: dict[tuple, list[Item]] = defaultdict(list)
    for item in sources:
        by_fp_s[fp_key(item)].append(item)
    for item in targets:
        by_fp_t[fp_key(item)].append(item)
    matched: list[tuple[Item, Item, str]] = []
    for fp, t_items in by_fp_t.items():
        s_items = by_fp_s.get(fp, [])
        if len(s_items) != len(t_items):
            matched += _same_names(s_items, t_items)
            continue
        if len(t_items) == 1:
            matched.append((s_items[0], t_items[0], "unique"))
        else:
            matched += _break_tie(s_items, t_items, trusted)
    paired = {id(i) for s_item, t_item, _ in matched for i in (s_item, t_item)}
    left_s = [i for i in sources if id(i) not in paired]
    left_t = [i for i in targets if id(i) not in paired]
    return matched, left_s, left_t


def _same_names(s_items: list[Item], t_items: list[Item]) -> list[tuple[Item, Item, str]]:
    """Where one side has more items of a fingerprint than the other (DINOv2's
    ``mask_token`` beside its ``cls_token``), the pairs that an equal name singles out."""
    matched = []
    for t_item in t_items:
        same = [s for s in s_items if _same_name(s, t_item)]
        if len(same) == 1 and sum(_same_name(same[0], t) for t in t_items) == 1:
            matched.append((same[0], t_item, "role"))
    return matched


def _break_tie(s_items: list[Item], t_items: list[Item], trusted: bool):
    """Identical fingerprints need evidence, strongest first:

    1. tensors: the same (or a synonymous) role name — ``weight`` with ``weight``;
    2. modules: the same name without a number — ``downsample`` with ``downsample`` (equal
       *numbers* prove nothing: ``_blocks.1`` and ``blocks.1.1`` are different blocks, and
       ``bn1`` of a codebase counting from 0 is ``bn2`` of one counting from 1); or, when
       every module is singled out by a word it shares with exactly one counterpart
       (OpenAI CLIP's ``ln_pre`` with timm's ``norm_pre``; one pair may be left to pair by
       elimination, ``ln_post`` with ``norm``), those words (``name-words``) — unless the
       source's registration order says otherwise (see :func:`_pair_by_words`);
    3. order, when the names on both sides carry one (``_bn0``, ``_bn1`` and ``bn1``, ``bn2``;
       list indices) and it agrees with the registration order on each side: proven
       (``order``). In a name-sorted source, the children of one container
       (:func:`container_names`: ``_blocks.2``/``_blocks.10``, ``encoder_layer_3``) were
       registered in index order: their natural order *is* the registration order
       (``index-order``, proven). Other numbered names in a name-sorted source
       (``_bn0``/``_bn1``, attributes a library may register in any order) give only their
       natural order: a suggestion (``numbered-names``, 0.75);
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
    by_words = _pair_by_words(remaining_s, remaining_t, trusted)
    if by_words is not None:
        matched += by_words
        return matched
    source_names = [i.name for i in remaining_s]
    target_names = [i.name for i in remaining_t]
    numbered = ordinal_names(source_names) and ordinal_names(target_names)
    indexed = not trusted and container_indices(remaining_s)
    in_order = _names_in_order(remaining_s) and _names_in_order(remaining_t)
    if numbered and (trusted or indexed) and in_order:
        how = "order" if trusted else "index-order"
    elif numbered and not trusted:
        how = "numbered-names"
    elif trusted or indexed:
        how = "registration-order"
    else:
        how = "candidate"
    matched += [(s, t, how) for s, t in zip(remaining_s, remaining_t, strict=True)]
    return matched


def _pair_by_words(s_items: list[Item], t_items: list[Item], trusted: bool):
    """The pairing the modules' names give by their distinctive words, or None.

    A word is distinctive when some but not all modules of that side carry it (``ln`` in
    ``ln_pre``/``ln_post`` says nothing; ``pre`` does). Each pair must share a distinctive
    word with each other and with no other module of the group, and at most one pair may be
    left over, to pair by elimination. Names with a number take no part (``part1`` and
    ``part2`` share a word and are different groups; numbers are the order rungs' evidence),
    and single letters are not words. A trusted registration order that
    disagrees voids the pairing (two weak readings that conflict prove nothing).
    """
    items = s_items + t_items
    if len(s_items) != len(t_items) or any(i.is_tensor or _NUMBER.search(i.name) for i in items):
        return None
    s_words = _distinctive_words(s_items)
    t_words = _distinctive_words(t_items)
    pairs: list[tuple[Item, Item]] = []
    for s_item, s_set in zip(s_items, s_words, strict=True):
        sharing = [t for t, t_set in zip(t_items, t_words, strict=True) if s_set & t_set]
        if len(sharing) > 1:
            return None
        if sharing:
            pairs.append((s_item, sharing[0]))
    if len({id(t) for _, t in pairs}) != len(pairs):
        return None
    left_s = [s for s in s_items if all(s is not p for p, _ in pairs)]
    left_t = [t for t in t_items if all(t is not q for _, q in pairs)]
    if len(left_s) > 1:
        return None
    pairs += list(zip(left_s, left_t, strict=True))
    s_rank = {id(s): n for n, s in enumerate(sorted(s_items, key=lambda i: i.position))}
    t_rank = {id(t): n for n, t in enumerate(sorted(t_items, key=lambda i: i.position))}
    if any(s_rank[id(s)] != t_rank[id(t)] for s, t in pairs) and trusted:
        return None
    return [(s, t, "name-words") for s, t in pairs]


def _distinctive_words(items: list[Item]) -> list[set[str]]:
    words = [{w for w in _WORD.findall(item.name.lower()) if len(w) > 1} for item in items]
    everywhere = set.intersection(*words) if words else set()
    return [w - everywhere for w in words]


_WORD = re.compile(r"[a-z]+")


def container_indices(items: list[Item]) -> bool:
    """True when the items are children of one container, named by their indices (marked
    ``indexed`` from :func:`container_names`): their natural order is their registration
    order even in a name-sorted file."""
    parents = {item.path.rpartition(".")[0] for item in items}
    return len(parents) == 1 and all(item.indexed for item in items)


#: Fewest children named ``<word><number>`` that make a container (a pair such as
#: ``norm1``/``norm2`` or ``fc1``/``fc2`` is a module's attributes, not a list).
MIN_NAMED_CHILDREN = 3
_INDEXED_NAME = re.compile(r"([A-Za-z_]+?)_?(\d+)")


def container_names(names: list[str]) -> bool:
    """True when ``names`` — every child of one module, all of them modules — are the keys of
    a ``ModuleList`` or ``Sequential``, which registers its children in index order: bare
    integers (``0``, ``1``, ``10``), or :data:`MIN_NAMED_CHILDREN` or more names that are
    one word and a number (torchvision's ``encoder_layer_0`` …, ``denselayer1`` …).
    Attributes numbered by hand (``conv1``, ``bn1``, ``downsample``) sit beside others of
    other words, so their module is not a container."""
    if len(names) < 2:
        return False
    if all(name.isdecimal() for name in names):
        return True
    words = {m.group(1) if (m := _INDEXED_NAME.fullmatch(name)) else None for name in names}
    return len(names) >= MIN_NAMED_CHILDREN and len(words) == 1 and None not in words


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


def ordinal_names(names: list[str]) -> bool:
    """True when names differ only in a number or a single letter (``_bn0``/``_bn1``,
    ``ln_1``/``ln_2``, ``norm_a``/``norm_b``, list indices), so their natural sort is their
    intended order."""
    if len(names) < 2:
        return True
    skeletons = {_ORDINAL.sub("#", name) for name in names}
    return len(skeletons) == 1 and "#" in next(iter(skeletons))


#: A number, or a letter standing alone between separators (``norm_a``, ``f.a``).
_ORDINAL = re.compile(r"\d+|(?<![A-Za-z])[A-Za-z](?![A-Za-z])")


def open_both_sides(left_s: list[Item], left_t: list[Item]):
    """Both sides' items replaced by their children when the counts are equal, the two
    sides hold the same shapes in all and every item holds modules (not bare tensors);
    else None."""
    if (
        len(left_s) == len(left_t)
        and _holds_modules(left_s + left_t)
        and _total(left_s) == _total(left_t)
    ):
        return _open(left_s), _open(left_t)
    return None


def open_smaller_side(left_s: list[Item], left_t: list[Item]):
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


def _holds_modules(items: list[Item]) -> bool:
    return all(
        not item.is_tensor and item.children and all(not c.is_tensor for c in item.children)
        for item in items
    )


def _total(items: list[Item]) -> Counter:
    total: Counter = Counter()
    for item in items:
        total.update(item.fingerprint)
    return total


def _open(items: list[Item]) -> list[Item]:
    opened: list[Item] = []
    for item in items:
        opened.extend(item.children if not item.is_tensor else [item])
    return sorted(opened, key=lambda i: i.position)


def pair_leftovers(left_s: list[Item], left_t: list[Item]) -> list[tuple[Item, Item, str]]:
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
        return [role_class(item.name)]
    return sorted(r for child in item.children for r in _roles(child))


def role_class(role: str) -> str:
    return next((min(group) for group in ROLE_SYNONYMS if role in group), role)


def fp_key(item: Item) -> tuple:
    return tuple(sorted(item.fingerprint.items()))


def _same_role(a: str, b: str) -> bool:
    if a == b:
        return True
    return any(a in group and b in group for group in ROLE_SYNONYMS)
