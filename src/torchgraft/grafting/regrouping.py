"""A structural pairing must agree with the order of the modules it could have confused.

Fingerprints pair the items of one level of the two module trees. When the two trees group
the same sequence of layers differently (a block boundary moved by one layer, a stem split
another way), a group can be the only one of its shapes at its level on both sides and still
hold different layers: "unique at its level" is then wrong, and no shape shows it. Order
does. Modules holding the same tensor shapes form a *class*: as far as shapes go they are
interchangeable, so within a class the only evidence of who is who is order, and a
structural pairing must follow it — the target's registration order, and the source's order
(its registration order when trusted, else the natural order of its names — which says
something only where two names differ by a number: ``blocks.2`` and ``blocks.10`` are in
order, ``qzkf.x`` and ``wrpt.x`` are in no order at all).

A class is checked when it has more than one member on either side. Its structural pairs
(evidence ``unique``, ``role``, ``order``) keep their full confidence only when every member
on both sides is paired within the class and the pairs never cross (sorted by target
position, no two pairs cross — and in a name-sorted source each consecutive two
differ first in names that differ by a number). Otherwise — pairs that cross, or members left
over, which makes even an order-preserving pairing possibly shifted — they are demoted to
``regrouped`` (a suggestion) and the class is recorded as a tie group, for the source
architecture or the BatchNorm statistics to settle. A class with one member on each side
needs no order: torchvision and timm register a ViT's position embedding and patch
projection in opposite orders, and both pair correctly.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from .correspondence import Match, TensorInfo, is_float

__all__ = ["STRUCTURAL", "check_regrouping", "settle_by_owner"]

#: Evidence that comes from the shapes of the trees (what this check can contradict).
STRUCTURAL = ("unique", "role", "order", "index-order")


def check_regrouping(
    match: Match,
    source: Mapping[str, TensorInfo],
    target: Mapping[str, TensorInfo],
    source_order: Sequence[str],
    canonical: Callable[[tuple[int, ...]], tuple[int, ...]],
    ordinal: Callable[[list[str]], bool] | None = None,
) -> int:
    """Demote the structural pairs of every class whose pairing does not follow the order
    (see the module docstring); returns how many keys were demoted.

    Args:
        match: the correspondence, changed in place (evidence, confidences, ties, notes).
        source / target: the tables the match was made from.
        source_order: the source keys in the order to trust (registration or natural).
        canonical: the shape normalisation the fingerprints used.
        ordinal: for a source order that is a natural name order, tells whether names
            differ only by their numbers (None: the order is a real registration order).
    """
    t_modules = _modules(target, list(target), canonical)
    s_modules = _modules(source, source_order, canonical)
    owner_pairs: dict[str, str] = {}  # every pairing counts for order and completeness
    for t_key, (s_key, _) in match.pairs.items():
        owner_pairs.setdefault(_owner(t_key), _owner(s_key))
    demoted = 0
    for signature in {sig for _, sig in t_modules.values()}:
        members_t = [m for m, (_, sig) in t_modules.items() if sig == signature]
        members_s = {m for m, (_, sig) in s_modules.items() if sig == signature}
        if len(members_t) <= 1 and len(members_s) <= 1:
            continue
        pairs = [(t, owner_pairs[t]) for t in members_t if owner_pairs.get(t) in members_s]
        if not pairs:
            continue
        complete = len(pairs) == len(members_t) == len(members_s)
        pairs.sort(key=lambda pair: t_modules[pair[0]][0])
        anchored = [p for p in pairs if _anchored(*p, t_modules, s_modules, owner_pairs, ordinal)]
        pairs = [p for p in pairs if p not in anchored]
        if not complete or not _told_apart([s for _, s in pairs], ordinal):
            doubtful = pairs  # nothing says which members belong together
        else:
            doubtful = _crossing(pairs, {s: s_modules[s][0] for _, s in pairs})
        if doubtful:
            demoted += _demote(match, doubtful)
    if demoted:
        match.notes.append(
            f"structure: {demoted} target keys were paired by the shapes of their groups "
            "against the order of same-shaped modules (the two trees group the layers "
            "differently): a suggestion, not proof"
        )
    return demoted


#: Evidence a module's own tensors can settle: a tie between tensors of different modules.
_TENSOR_TIES = ("registration-order", "numbered-names", "candidate")


def settle_by_owner(match: Match, source: Mapping[str, TensorInfo]) -> int:
    """Settle tensor pairs that only order suggested by the modules they belong to; returns
    how many were settled.

    A convolution's bias and a norm's bias of one width are one tie when the trees are
    opened down to their tensors (ConvNeXt's stem: a conv and a LayerNorm). When every other
    tensor of the target's module is proven paired into one source module, and the tied
    source tensor lies in that module under the same role name, alone there with its shape
    and role, the pair is proven (``role``) and leaves its tie group.
    """
    proven: dict[str, set[str]] = {}
    for t_key, (s_key, _) in match.pairs.items():
        if match.evidence.get(t_key) not in _TENSOR_TIES:
            proven.setdefault(_owner(t_key), set()).add(_owner(s_key))
    settled = set()
    for t_key, (s_key, _) in list(match.pairs.items()):
        if match.evidence.get(t_key) not in _TENSOR_TIES:
            continue
        owners = proven.get(_owner(t_key), set())
        role = t_key.rpartition(".")[2]
        if owners != {_owner(s_key)} or s_key.rpartition(".")[2] != role:
            continue
        alike = [
            k
            for k, info in source.items()
            if _owner(k) == _owner(s_key) and k.rpartition(".")[2] == role
            and tuple(info[0]) == tuple(source[s_key][0])
        ]  # fmt: skip
        if alike == [s_key]:
            match.pair(t_key, s_key, "role")
            settled.add(t_key)
    if settled:
        match.ties[:] = [
            rest for tie in match.ties if len(rest := [p for p in tie if p[1] not in settled]) > 1
        ]
    return len(settled)


def _anchored(t_module, s_module, t_modules, s_modules, owner_pairs, ordinal) -> bool:
    """True when a pair is held by an anchor, whatever the order of its class says.

    Its two parents hold the same shapes, it is the only one of its shapes in each, and a
    sibling of it is the only module of its shapes in either whole tree, paired into the
    other parent (ConvNeXt's downsampling: a LayerNorm beside the one convolution of its
    shape, which Facebook's repository registers in a list of its own, timm in its stage).
    The pair must sit on the same side of every such anchor in both parents — in a
    name-sorted source, told by names that differ in a number, or else carry one name
    without a number on both sides (``norm``) — so a group cut elsewhere (a norm before its
    convolution in one tree, after it in the other) is not taken for the same group.
    """
    t_siblings = _siblings(t_module, t_modules)
    s_siblings = _siblings(s_module, s_modules)
    t_sigs = sorted(t_modules[m][1] for m in t_siblings)
    if t_sigs != sorted(s_modules[m][1] for m in s_siblings):
        return False
    if t_sigs.count(t_modules[t_module][1]) != 1:
        return False
    t_counts = Counter(sig for _, sig in t_modules.values())
    s_counts = Counter(sig for _, sig in s_modules.values())
    name = s_module.rpartition(".")[2]
    plain_name = name == t_module.rpartition(".")[2] and not any(c.isdigit() for c in name)
    if ordinal is not None and plain_name:
        return _has_anchor(
            t_module, t_siblings, s_siblings, owner_pairs, t_modules, t_counts, s_counts
        )
    sides = []
    for anchor in t_siblings:
        signature = t_modules[anchor][1]
        partner = owner_pairs.get(anchor)
        if anchor == t_module or partner not in s_siblings:
            continue
        if t_counts[signature] != 1 or s_counts[signature] != 1:
            continue
        # in a name-sorted source its order is its names' order, which says something only
        # between names that differ in a number: every anchor must be told apart so
        if ordinal is not None and not ordinal([name, partner.rpartition(".")[2]]):
            return False
        t_before = t_modules[t_module][0] < t_modules[anchor][0]
        s_before = s_modules[s_module][0] < s_modules[partner][0]
        sides.append(t_before == s_before)
    return bool(sides) and all(sides)


def _has_anchor(t_module, t_siblings, s_siblings, owner_pairs, t_modules, t_counts, s_counts):
    return any(
        anchor != t_module
        and owner_pairs.get(anchor) in s_siblings
        and t_counts[t_modules[anchor][1]] == 1
        and s_counts[t_modules[anchor][1]] == 1
        for anchor in t_siblings
    )


def _siblings(module: str, modules: Mapping[str, tuple[int, tuple]]) -> list[str]:
    parent = _owner(module)
    return [m for m in modules if _owner(m) == parent]


def _crossing(pairs: list[tuple[str, str]], position: dict[str, int]) -> list[tuple[str, str]]:
    """The pairs (sorted by target position) that cross another: their source order is the
    reverse of their target order."""
    crossing = set()
    for i, (_, s_i) in enumerate(pairs):
        for j in range(i + 1, len(pairs)):
            if position[pairs[j][1]] < position[s_i]:
                crossing.update((i, j))
    return [pairs[i] for i in sorted(crossing)]


def _demote(match: Match, doubtful: list[tuple[str, str]]) -> int:
    """Demote the structural pairs under the ``doubtful`` target modules and record them as
    one tie group (replacing the smaller groups it contains); returns the keys demoted."""
    targets = {t for t, _ in doubtful}
    demoted = 0
    for t_key in list(match.pairs):
        if _owner(t_key) in targets and match.evidence.get(t_key) in STRUCTURAL:
            match.pair(t_key, match.pairs[t_key][0], "regrouped")
            demoted += 1
    if demoted:
        # one group per set of interchangeable modules: merge the order-only groups (module
        # or tensor pairs) that share a module with this one
        group = {(s, t) for t, s in doubtful}
        kept = []
        for tie in match.ties:
            modules = {(_module(s, t, match), _module(t, t, match)) for s, t in tie}
            if {t for _, t in modules} & targets:
                group |= modules
            else:
                kept.append(tie)
        match.ties[:] = [*kept, sorted(group, key=lambda pair: pair[1])]
    return demoted


def _module(path: str, target_path: str, match: Match) -> str:
    """The module of a tie member (tie groups pair tensors or modules)."""
    return _owner(path) if target_path in match.pairs else path


def _told_apart(modules: list[str], ordinal) -> bool:
    """True when the order of consecutive ``modules`` means something: a registration
    order always; a natural name order where the first differing names differ by a number."""
    if ordinal is None:
        return True
    for a, b in itertools.pairwise(modules):
        parts_a, parts_b = a.split("."), b.split(".")
        first = next(
            (i for i, (x, y) in enumerate(zip(parts_a, parts_b, strict=False)) if x != y), None
        )
        if first is None or not ordinal([parts_a[first], parts_b[first]]):
            return False
    return True


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def _modules(
    table: Mapping[str, TensorInfo], order: Sequence[str], canonical
) -> dict[str, tuple[int, tuple]]:
    """``{module: (position of its first key, shape signature)}`` over the float keys."""
    positions: dict[str, int] = {}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for position, key in enumerate(order):
        if key not in table or not is_float(table[key]):
            continue
        module = _owner(key)
        positions.setdefault(module, position)
        shapes.setdefault(module, []).append(canonical(tuple(table[key][0])))
    return {m: (positions[m], tuple(sorted(shapes[m]))) for m in positions}
