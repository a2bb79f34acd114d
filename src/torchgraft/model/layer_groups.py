"""Layer groups from stem to head, built three ways that share one finishing step.

* :func:`groups_from_patterns` — a table of ``(name template, regex)`` pairs, first match wins
  (the declared anatomy of torchvision families);
* :func:`groups_from_ordinals` — a ``parameter -> ordinal`` map (timm's ``group_matcher``);
* :func:`infer_groups` — the module tree of a model never seen before.

Each yields an ordered ``parameter -> group name`` assignment; :func:`finish_groups` then puts
the head's parameters in a final ``"head"`` group and collapses each group's parameter names
to the fewest module paths that hold exactly that group's parameters.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from .spec import LayerGroup

__all__ = ["finish_groups", "groups_from_ordinals", "groups_from_patterns", "infer_groups"]

#: Groups that always sit after the body, in this order, whatever their first appearance.
TRAILING_GROUPS = ("neck", "aux")


def under(name: str, paths: Iterable[str]) -> bool:
    """True if ``name`` is one of ``paths`` or lies inside one of them (dotted prefix)."""
    return any(name == p or name.startswith(p + ".") for p in paths)


def groups_from_patterns(
    parameter_names: Sequence[str],
    patterns: Sequence[tuple[str, str]],
    head_paths: Sequence[str],
) -> tuple[LayerGroup, ...]:
    """Assign parameters with a pattern table; the unmatched go to ``"neck"``.

    Args:
        parameter_names: the model's parameter names in registration order.
        patterns: ``(name_template, regex)``; the template is formatted with the regex groups,
            e.g. ``("layer{0}", r"^layer(\\d+)\\.")``.
        head_paths: classifier module paths; their parameters form the ``"head"`` group.
    """
    compiled = [(template, re.compile(regex)) for template, regex in patterns]
    assignment: dict[str, str] = {}
    for name in parameter_names:
        if under(name, head_paths):
            continue
        for template, regex in compiled:
            match = regex.match(name)
            if match:
                assignment[name] = template.format(*match.groups())
                break
        else:
            assignment[name] = "neck"
    return finish_groups(parameter_names, assignment, head_paths)


def groups_from_ordinals(
    parameter_names: Sequence[str],
    ordinals: Mapping[str, int],
    head_paths: Sequence[str],
) -> tuple[LayerGroup, ...]:
    """Assign parameters by ordinal (timm's ``group_parameters(..., reverse=True)``).

    Groups are named by the single module path that holds them when there is one, else
    ``stem`` (first), ``neck`` (last) or ``group{ordinal}``.
    """
    by_ordinal: dict[int, list[str]] = defaultdict(list)
    for name in parameter_names:
        if not under(name, head_paths):
            by_ordinal[ordinals[name]].append(name)
    keys = sorted(by_ordinal)
    provisional = {name: f"#{key}" for key in keys for name in by_ordinal[key]}
    owners = _prefix_owners(parameter_names, provisional, head_paths)
    assignment: dict[str, str] = {}
    for position, key in enumerate(keys):
        members = _collapse(by_ordinal[key], f"#{key}", owners)
        if len(members) == 1:
            label = members[0]
        elif position == 0:
            label = "stem"
        elif position == len(keys) - 1:
            label = "neck"
        else:
            label = f"group{key}"
        for name in by_ordinal[key]:
            assignment[name] = label
    return finish_groups(parameter_names, assignment, head_paths)


def infer_groups(model: nn.Module, head_paths: Sequence[str]) -> tuple[LayerGroup, ...]:
    """Groups for a model with no declared anatomy, from its module tree.

    Top-level children are the units; containers holding the main head are opened, and the
    largest container is opened until there are at least four units that are not lone
    normalisation layers. The first unit (with parameters held directly by the root or opened
    containers, e.g. a class token) is the ``stem``; a lone normalisation layer joins the group
    before it; units holding an auxiliary head form ``aux``; the head comes last.
    """
    units, direct = _units(model, head_paths[0])
    aux_paths = head_paths[1:]
    assignment: dict[str, str] = {}
    names = [n for n, _ in model.named_parameters()]
    labels: list[str] = []
    for index, (path, module) in enumerate(units):
        if any(under(aux, [path]) for aux in aux_paths):
            labels.append("aux")
        elif index == 0:
            labels.append("stem")
        elif _is_norm_leaf(module):
            labels.append(labels[-1])
        else:
            labels.append(path)
    for name in names:
        if under(name, head_paths):
            continue
        if name in direct:
            assignment[name] = "stem"
            continue
        for (path, _), label in zip(units, labels, strict=True):
            if under(name, [path]):
                assignment[name] = label
                break
    return finish_groups(names, assignment, head_paths)


def finish_groups(
    parameter_names: Sequence[str],
    assignment: Mapping[str, str],
    head_paths: Sequence[str],
) -> tuple[LayerGroup, ...]:
    """Order the groups, add ``"head"``, and collapse each group to module paths.

    Groups keep the order of their first parameter, except ``neck`` and ``aux`` which come
    after the body. Parameters missing from ``assignment`` must lie under ``head_paths``.
    """
    order: list[str] = []
    for name in parameter_names:
        label = assignment.get(name)
        if label is not None and label not in order:
            order.append(label)
    order = [g for g in order if g not in TRAILING_GROUPS] + [
        g for g in TRAILING_GROUPS if g in order
    ]
    if "head" in order:
        # "head" means the classifier; a body module that happens to be called head (timm's
        # SelecSLS convs before its fc) gets another name, so the two never merge.
        assignment = {k: ("head_body" if v == "head" else v) for k, v in assignment.items()}
        order = ["head_body" if g == "head" else g for g in order]
    owners = _prefix_owners(parameter_names, assignment, head_paths)
    groups = []
    for label in order:
        members = [n for n in parameter_names if assignment.get(n) == label]
        groups.append(LayerGroup(label, tuple(_collapse(members, label, owners))))
    groups.append(LayerGroup("head", tuple(head_paths)))
    return tuple(groups)


def _prefix_owners(
    parameter_names: Sequence[str], assignment: Mapping[str, str], head_paths: Sequence[str]
) -> dict[str, set[str]]:
    """For every dotted prefix of every parameter name, the set of groups found under it."""
    owners: dict[str, set[str]] = defaultdict(set)
    for name in parameter_names:
        label = "head" if under(name, head_paths) else assignment.get(name, "?")
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            owners[".".join(parts[:i])].add(label)
    return owners


def _collapse(members: Sequence[str], label: str, owners: Mapping[str, set[str]]) -> list[str]:
    """The shortest prefixes that hold only ``label``'s parameters, in first-seen order."""
    collapsed: list[str] = []
    for name in members:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if owners[prefix] == {label}:
                break
        if prefix not in collapsed:
            collapsed.append(prefix)
    return collapsed


def _units(model: nn.Module, head_path: str) -> tuple[list[tuple[str, nn.Module]], set[str]]:
    """Top-level units without parameters dropped; containers opened as described above."""
    direct: set[str] = set()

    def has_params(module: nn.Module) -> bool:
        return any(True for _ in module.parameters())

    def open_container(path: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        direct.update(_join(path, n) for n, _ in module.named_parameters(recurse=False))
        opened = []
        for child_name, child in module.named_children():
            child_path = _join(path, child_name)
            if under(child_path, [head_path]) or not has_params(child):
                continue
            if head_path.startswith(child_path + "."):
                opened.extend(open_container(child_path, child))
            else:
                opened.append((child_path, child))
        return opened

    units = open_container("", model)
    while sum(1 for _, m in units if not _is_norm_leaf(m)) < 4:
        openable = [
            (sum(p.numel() for p in m.parameters()), i)
            for i, (_, m) in enumerate(units)
            if sum(1 for c in m.children() if has_params(c)) >= 2
        ]
        if not openable:
            break
        _, index = max(openable)
        path, module = units[index]
        units[index : index + 1] = open_container(path, module)
    return units, direct


def _is_norm_leaf(module: nn.Module) -> bool:
    is_norm = (
        isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
        or "Norm" in type(module).__name__
    )
    return is_norm and not any(True for _ in module.children())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
