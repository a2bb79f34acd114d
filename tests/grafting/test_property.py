"""Property tests (hypothesis) on real models' state_dicts.

1. ``auto`` recovers random structure-preserving renames: every module-path component of a
   real model's keys is renamed consistently (the role suffix stays), and the keys are then
   (a) kept in registration order, (b) sorted by the new names, where the new names keep the
   relative order of siblings, or (c) stored with distinguishable siblings randomly permuted
   while same-shaped siblings keep their relative order. The known renaming is the answer.
2. A graft plan with one corrupted entry is never applied partially: a typed error, and
   every target tensor bitwise unchanged.
"""

from __future__ import annotations

import functools
import random
import string
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchgraft.errors import GraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.apply import apply_plan
from torchgraft.grafting.graft_plan import Action, GraftPlan, KeyPlan

MODELS = ("torchvision:resnet18", "timm:tf_efficientnet_lite0", "timm:mobilenetv3_large_100")
SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def target_model(spec: str):
    import torchgraft

    return torchgraft.create_model(spec)


def components(keys):
    """Distinct module-path components (role suffix excluded), in order of first appearance."""
    seen: dict[str, None] = {}
    for key in keys:
        for part in key.split(".")[:-1]:
            seen.setdefault(part, None)
    return list(seen)


def random_renaming(keys, rng: random.Random, ordinal: bool):
    """A consistent random new name for every component.

    ``ordinal``: one random stem for all names plus an increasing number (random gaps) in
    order of first appearance, so sorting by the new names keeps every sibling group's order
    and same-shaped siblings differ only in their numbers. Numeric indices stay numbers.
    Otherwise: unrelated random identifiers, numbers included.
    """
    originals = components(keys)
    taken = set(originals) | {"module", "_orig_mod", "model"}
    if ordinal:
        stem = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 5)))
        table, number = {}, rng.randint(1, 50)
        for part in originals:
            if part.isdigit():
                table[part] = part
            else:
                table[part] = f"{stem}{number}"
                number += rng.randint(1, 9)
        return table
    table = {}
    for part in originals:
        while True:
            name = rng.choice(string.ascii_lowercase) + "".join(
                rng.choices(string.ascii_lowercase + string.digits + "_", k=rng.randint(2, 9))
            )
            if name not in taken:
                taken.add(name)
                table[part] = name
                break
    return table


def rename_key(key: str, table) -> str:
    *path, role = key.split(".")
    return ".".join([*(table[p] for p in path), role])


def permuted_order(state, rng: random.Random) -> list[str]:
    """Registration order with each module's children shuffled, except that children with
    identical shape fingerprints keep their relative order (tensors are told apart by their
    role names, so they may move freely)."""
    tree: dict[str, list[str]] = defaultdict(list)  # path -> child paths, registration order
    leaves = set(state)
    for key in state:
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            parent, child = ".".join(parts[: depth - 1]), ".".join(parts[:depth])
            if child not in tree[parent]:
                tree[parent].append(child)

    @functools.cache
    def fingerprint(path: str) -> tuple:
        if path in leaves:
            return ((tuple(state[path].shape), str(state[path].dtype)),)
        return tuple(sorted(s for child in tree[path] for s in fingerprint(child)))

    def walk(path: str) -> list[str]:
        if path in leaves:
            return [path]
        children = tree[path]
        slots = list(range(len(children)))
        rng.shuffle(slots)
        classes: dict[tuple, list[int]] = defaultdict(list)
        for index, child in enumerate(children):
            key = ("leaf", child) if child in leaves else fingerprint(child)
            classes[key].append(index)
        order: list[str | None] = [None] * len(children)
        for members in classes.values():
            for position, index in zip(sorted(slots[i] for i in members), members, strict=True):
                order[position] = children[index]
        return [key for child in order for key in walk(child)]

    return walk("")


@pytest.mark.slow
@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("storage", ["registration-order", "sorted-by-new-name", "permuted"])
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_auto_recovers_structure_preserving_renames(spec, storage, seed):
    model = target_model(spec)
    state = model.state_dict()
    rng = random.Random(seed)
    table = random_renaming(list(state), rng, ordinal=storage == "sorted-by-new-name")
    if storage == "registration-order":
        order = list(state)
    elif storage == "permuted":
        order = permuted_order(state, rng)
        assert sorted(order) == sorted(state)
    else:
        order = sorted(state, key=lambda k: _natural(rename_key(k, table)))
    source = {rename_key(k, table): state[k] for k in order}
    if storage == "sorted-by-new-name":
        source = dict(sorted(source.items()))  # exactly how a safetensors file stores them
    plan = plan_graft(model, source)
    expected = {k: rename_key(k, table) for k in state}
    assert plan.mapping == expected
    assert plan.coverage == 1.0
    assert plan.unexpected == []


def _natural(key: str):
    import re

    return [
        [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", part) if t]
        for part in key.split(".")
    ]


def test_the_renaming_helpers_do_what_they_claim():
    state = {
        "a.conv.weight": torch.zeros(2, 2),
        "a.bn1.weight": torch.zeros(2),
        "a.bn2.weight": torch.zeros(2),
        "b.0.weight": torch.zeros(3),
    }
    table = random_renaming(list(state), random.Random(1), ordinal=True)
    assert table["0"] == "0"
    renamed = [rename_key(k, table) for k in state]
    assert sorted(renamed, key=_natural)[:3] == renamed[:3]  # order kept under sorting
    seen = defaultdict(list)
    for _ in range(30):
        order = permuted_order(state, random.Random(_))
        assert order.index("a.bn1.weight") < order.index("a.bn2.weight")
        seen[order[0]].append(1)
    assert len(seen) >= 2  # distinguishable siblings do move


# --- failed plans are never applied partially ----------------------------------------------


@functools.cache
def resnet_pair():
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.manual_seed(2)
    target = torchvision.models.resnet18(num_classes=10)
    plan = plan_graft(target, source)
    return source, target, plan


TYPED_CORRUPTIONS = ("wrong-source", "absent-source", "absent-target", "unknown-kind")
UNTYPED_CORRUPTIONS = ("bad-reshape", "bad-pick", "class-row-out-of-range")


def corrupt(plan: GraftPlan, source, kind: str, index: int, rng: random.Random) -> GraftPlan:
    entries = list(plan.entries)
    loading = [i for i, e in enumerate(entries) if e.action.loads]
    if kind == "bad-pick":
        index = next(i for i, e in enumerate(entries) if e.target == "conv1.weight")
    elif kind == "class-row-out-of-range":
        index = next(i for i, e in enumerate(entries) if e.target == "fc.weight")
    else:
        index = loading[index % len(loading)]
    entry = entries[index]
    if kind == "wrong-source":
        others = [k for k, v in source.items() if tuple(v.shape) != tuple(entry.target_shape)]
        entries[index] = KeyPlan(
            entry.target, rng.choice(others), Action.RENAME, 1.0, entry.target_shape
        )
    elif kind == "absent-source":
        entries[index] = KeyPlan(entry.target, "ghost." + entry.source, Action.RENAME, 1.0)
    elif kind == "absent-target":
        entries[index] = KeyPlan("ghost." + entry.target, entry.source, Action.COPY, 1.0)
    elif kind == "unknown-kind":
        entries[index] = KeyPlan(
            entry.target, entry.source, Action.ADAPT, 1.0, adapt={"kind": "rotate"}
        )
    elif kind == "bad-reshape":
        numel = source[entry.source].numel()
        others = [k for k, v in source.items() if v.numel() != numel]
        entries[index] = KeyPlan(
            entry.target, rng.choice(others), Action.RESHAPE, 1.0, adapt={"kind": "reshape"}
        )
    elif kind == "bad-pick":
        adapt = {"kind": "in_chans", "mode": "pick", "pick": [0, 1, 99]}
        entries[index] = KeyPlan(entry.target, entry.source, Action.ADAPT, 1.0, adapt=adapt)
    elif kind == "class-row-out-of-range":
        adapt = {"kind": "class_rows", "rows": [[0, 0], [5000, 1]]}
        entries[index] = KeyPlan(entry.target, entry.source, Action.ADAPT, 1.0, adapt=adapt)
    return GraftPlan(entries, list(plan.unexpected))


@SETTINGS
@given(
    kind=st.sampled_from(TYPED_CORRUPTIONS + UNTYPED_CORRUPTIONS),
    index=st.integers(0, 10_000),
    seed=st.integers(0, 2**16),
    through_graft=st.booleans(),
)
def test_a_failing_plan_is_never_applied_partially(kind, index, seed, through_graft):
    source, target, plan = resnet_pair()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    broken = corrupt(plan, source, kind, index, random.Random(seed))

    def apply() -> None:
        if through_graft:
            graft(target, source, plan=broken, min_coverage=0)
        else:
            apply_plan(target, broken, source)

    with pytest.raises(Exception):  # noqa: B017, PT011 - the type is the next test's business
        apply()
    after = target.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} was written by a failed plan ({kind})"


@SETTINGS
@given(
    kind=st.sampled_from(TYPED_CORRUPTIONS),
    index=st.integers(0, 10_000),
    seed=st.integers(0, 2**16),
)
def test_a_failing_plan_raises_a_graft_error(kind, index, seed):
    source, target, plan = resnet_pair()
    broken = corrupt(plan, source, kind, index, random.Random(seed))
    with pytest.raises(GraftError):
        apply_plan(target, broken, source)


@pytest.mark.parametrize("kind", UNTYPED_CORRUPTIONS)
def test_an_adaptation_that_does_not_fit_raises_a_graft_error(kind):
    source, target, plan = resnet_pair()
    broken = corrupt(plan, source, kind, 3, random.Random(0))
    with pytest.raises(GraftError):
        apply_plan(target, broken, source)
