"""Freezing policies: which parameters train, and what normalisation statistics do meanwhile.

A policy is declarative: every call to :func:`freeze` sets ``requires_grad`` on *every*
parameter and the statistics policy on *every* normalisation layer, so calls never stack up
and ``freeze(model, "none")`` (or :func:`unfreeze`) undoes everything.

BatchNorm policy (``bn=``), for normalisation layers with running statistics that lie in
the frozen part of the model:

* ``"frozen"`` (default) — affine parameters frozen *and* statistics fixed: the layer runs in
  eval behaviour even after ``model.train()``. A frozen backbone is then bitwise frozen.
* ``"stats"`` — statistics fixed, affine parameters trainable (fastai's ``train_bn``).
* ``"train"`` — statistics update and affine parameters train, as in plain PyTorch.
* ``"fixed"`` — statistics fixed in *every* layer, the trainable ones too (their affine
  parameters train; the frozen ones' stay frozen): what detectron2's ``FrozenBatchNorm``
  does for fine-tuning with small batches, whose batch statistics are noise. It also keeps
  a head trained on cached features seeing the same features once the body trains.

How statistics are fixed: a forward pre-hook on the layer sets ``module.training = False``
before each call. Unlike swapping in timm's ``FrozenBatchNorm2d`` this changes no module type,
no state_dict key and no value; the hook is a module-level function, so it survives
``copy.deepcopy``, ``pickle``, ``torch.save(model)`` and ``torch.jit.script``; it works for every layer that has
``track_running_stats`` and a ``running_mean`` buffer (BatchNorm1d/2d/3d, SyncBatchNorm, timm's
BatchNormAct2d, InstanceNorm with ``track_running_stats=True``); and it is found and removed
again by type, so it is reversible. It survives however ``training`` is set (``model.train()``,
``model.apply``, direct assignment) because it acts at call time. Two things to know: a pinned
layer's ``training`` flag reads True between ``model.train()`` and its next call (use
:func:`pinned_norms` to see the truth), and ``SyncBatchNorm.convert_sync_batchnorm`` builds new
modules without hooks — convert first, freeze after.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.inject import trainable_names
from ..errors import ConfigError, TorchgraftError
from ..model.anatomy import spec_of
from ..model.layer_groups import under
from ..model.spec import ModelSpec
from ..text import printable

__all__ = [
    "BN_POLICIES",
    "FreezeSummary",
    "GroupCount",
    "freeze",
    "has_running_stats",
    "pinned_norms",
    "unfreeze",
]

BN_POLICIES = ("frozen", "stats", "train", "fixed")
_NAMED_POLICIES = ("head", "none", "all", "last:N")


@dataclass(frozen=True)
class GroupCount:
    """Parameter elements that train and that are frozen in one layer group."""

    name: str
    trainable: int
    frozen: int
    fixed_norms: int = 0


@dataclass(frozen=True, repr=False)
class FreezeSummary:
    """What :func:`freeze` left trainable, per layer group (stem first, head last).

    Attributes:
        policy: the policy as given (``"head"``, ``"last:2"``, a list of groups …).
        bn: the BatchNorm policy.
        groups: counts per layer group.
        fixed_norms: module paths of normalisation layers whose statistics are fixed.
    """

    policy: str
    bn: str
    groups: tuple[GroupCount, ...]
    fixed_norms: tuple[str, ...]

    @property
    def trainable(self) -> int:
        return sum(g.trainable for g in self.groups)

    @property
    def frozen(self) -> int:
        return sum(g.frozen for g in self.groups)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: totals, per-group counts and the fixed norm layers."""
        return {
            "policy": self.policy,
            "bn": self.bn,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "total": self.total,
            "groups": [asdict(g) for g in self.groups],
            "fixed_norms": list(self.fixed_norms),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render(self) -> str:
        """A plain-text table, one row per layer group.

        Group names come from the model's module names (any string but a dot, ESC and
        newlines included), so they are escaped (:func:`torchgraft.text.printable`)."""
        share = self.trainable / self.total if self.total else 0.0
        lines = [
            f"freeze '{printable(self.policy)}', bn '{self.bn}': {self.trainable:,} of "
            f"{self.total:,} parameters train ({share:.2%})"
        ]
        names = {g.name: printable(g.name) for g in self.groups}
        width = max([len("group"), *(len(n) for n in names.values())])
        lines.append(f"{'group':<{width}}  {'trainable':>12}  {'frozen':>12}  {'fixed norms':>11}")
        for g in self.groups:
            lines.append(
                f"{names[g.name]:<{width}}  {g.trainable:>12,}  {g.frozen:>12,}  "
                f"{g.fixed_norms:>11}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        # str() is the table; repr() is the line a REPL shows after tg.freeze(...).
        share = self.trainable / self.total if self.total else 0.0
        policy = str(self.policy)
        policy = policy if len(policy) <= 60 else policy[:59] + "…"
        return (
            f"<FreezeSummary {policy!r}, bn {self.bn!r}: {self.trainable:,} of {self.total:,} "
            f"parameters train ({share:.2%}); {len(self.fixed_norms)} norm layers fixed>"
        )


def freeze(
    model: nn.Module,
    policy: str | Sequence[str] = "head",
    *,
    bn: str = "frozen",
    include: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    modules: Sequence[str | nn.Module] = (),
    spec: ModelSpec | None = None,
) -> FreezeSummary:
    """Make exactly the parameters a policy names trainable; fix statistics as ``bn`` says.

    The trainable set is: the policy's layer groups, plus parameters under ``modules``,
    plus parameters matching an ``include`` pattern, minus those matching an ``exclude``
    pattern. In a model with adapters (:func:`torchgraft.add_adapters`) only the adapters
    and the head can train: a policy that trains a layer group trains its adapters. Frozen
    parameters get ``requires_grad=False`` and ``grad=None`` (so an optimizer that holds
    them anyway skips them: no momentum, no weight decay).

    Args:
        model: any ``nn.Module``; changed in place.
        policy: ``"head"`` (linear probe), ``"none"`` (train all), ``"all"`` (train nothing),
            ``"last:N"`` (the last N layer groups before the head, plus the head; ``last:0``
            is the head alone, and N above the model's number of groups is refused), one
            layer group name, or a list of them.
        bn: ``"frozen"``, ``"stats"``, ``"train"`` or ``"fixed"`` (see the module docstring).
        include: glob patterns on parameter names (``"layer4.*"``) that train too.
        exclude: glob patterns on parameter names that stay frozen whatever else says.
        modules: module paths or module objects whose parameters train too.
        spec: the model's spec (default: :func:`torchgraft.spec_of`).

    Returns:
        A :class:`FreezeSummary` (``print`` it for a table; ``to_dict()`` for JSON).

    Raises:
        ConfigError: unknown policy, group, module, bn policy, a pattern matching nothing,
            or ``last:N`` with more groups than the model has.
        SpecError / HeadError: the policy needs layer groups and none can be found.

    Example:
        >>> summary = tg.freeze(model, "head", bn="frozen")
        >>> summary.trainable == sum(p.numel() for p in model.fc.parameters())
        True
    """
    if bn not in BN_POLICIES:
        raise ConfigError(f"unknown bn policy {bn!r}; choose one of {', '.join(BN_POLICIES)}")
    include, exclude = _patterns(include), _patterns(exclude)
    names = [name for name, _ in model.named_parameters()]
    spec = _spec_for(model, spec, needs_groups=_needs_groups(policy))
    owner = spec.group_of(names) if spec is not None else _top_level_owner(names)
    order = list(spec.group_names) if spec is not None else list(dict.fromkeys(owner.values()))
    chosen = _policy_groups(policy, order)
    paths = _module_paths(model, modules)
    _check_patterns(names, include, "include")
    _check_patterns(names, exclude, "exclude")

    def group_of(name: str) -> str | None:
        return owner.get(name) or _lookup(spec, name)

    everything = policy == "none" or "" in paths  # also names no layer group holds

    allowed = trainable_names(model)  # with adapters: theirs and the head's, nothing else

    def selected(name: str) -> bool:
        picked = everything or group_of(name) in chosen or under(name, paths)
        if allowed is not None and name not in allowed:
            return False
        return (picked or _matches(name, include)) and not _matches(name, exclude)

    for name, param in model.named_parameters():
        param.requires_grad_(selected(name))
    fixed = _apply_norm_policy(model, bn, selected, lambda n: _matches(n, exclude))
    for param in model.parameters():
        if not param.requires_grad:
            # A stale gradient would let momentum and weight decay move a frozen weight.
            param.grad = None
    return _summary(model, _describe(policy), bn, owner, order, fixed, group_of)


def unfreeze(model: nn.Module, *, spec: ModelSpec | None = None) -> FreezeSummary:
    """Train everything again and remove every statistics pin (``freeze(model, "none")``)."""
    return freeze(model, "none", bn="train", spec=spec)


def has_running_stats(module: nn.Module) -> bool:
    """True for a normalisation layer whose training mode updates running statistics."""
    return (
        bool(getattr(module, "track_running_stats", False))
        and getattr(module, "running_mean", None) is not None
    )


def pinned_norms(model: nn.Module) -> list[str]:
    """Paths of the layers whose statistics :func:`freeze` fixed (they run in eval mode)."""
    return [path for path, module in model.named_modules() if _is_pinned(module)]


def _fix_statistics(module: nn.Module, args: tuple[torch.Tensor]) -> None:
    """Forward pre-hook: run this normalisation layer in eval behaviour whatever its parent says.

    A plain module-level function: models carrying it deepcopy and pickle (by reference),
    and ``torch.jit.script`` compiles it (hence the annotations).
    """
    module.training = False


def _pin(module: nn.Module) -> None:
    module.register_forward_pre_hook(_fix_statistics, prepend=True)
    module.training = False


def _unpin(module: nn.Module, training: bool) -> None:
    hooks = module._forward_pre_hooks
    pins = [k for k, hook in hooks.items() if hook is _fix_statistics]
    for hook_id in pins:
        # What RemovableHandle.remove() does; handles do not survive deepcopy or pickling.
        del hooks[hook_id]
        module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
        getattr(module, "_forward_pre_hooks_always_called", {}).pop(hook_id, None)
    if pins:
        module.training = training  # back to the mode of the model it belongs to


def _is_pinned(module: nn.Module) -> bool:
    return any(h is _fix_statistics for h in module._forward_pre_hooks.values())


def _apply_norm_policy(model, bn, selected, excluded) -> list[str]:
    """Unpin every norm layer, then pin (and maybe free the affine of) those left frozen."""
    fixed = []
    for path, module in model.named_modules():
        _unpin(module, model.training)
        if not has_running_stats(module):
            continue
        prefix = f"{path}." if path else ""
        if selected(prefix + "weight") and bn != "fixed":
            continue  # a trainable region: the layer behaves like its parent
        if bn in ("stats", "train"):
            for role, param in module.named_parameters(recurse=False):
                param.requires_grad_(not excluded(prefix + role))
        if bn in ("frozen", "stats", "fixed"):
            _pin(module)
            fixed.append(path)
    return fixed


def _summary(model, policy, bn, owner, order, fixed, group_of) -> FreezeSummary:
    trainable = dict.fromkeys(order, 0)
    frozen = dict.fromkeys(order, 0)
    norms = dict.fromkeys(order, 0)
    for name, param in model.named_parameters():
        bucket = trainable if param.requires_grad else frozen
        bucket[owner[name]] += param.numel()
    for path in fixed:
        group = group_of(f"{path}.weight" if path else "weight")
        if group not in norms:
            group = "(no group)"  # a norm layer without parameters outside every group
            order = [*order, group] if group not in order else order
        norms[group] = norms.get(group, 0) + 1
    groups = tuple(
        GroupCount(g, trainable.get(g, 0), frozen.get(g, 0), norms.get(g, 0)) for g in order
    )
    return FreezeSummary(policy, bn, groups, tuple(fixed))


def _needs_groups(policy: str | Sequence[str]) -> bool:
    return not (isinstance(policy, str) and policy in ("none", "all"))


def _spec_for(model: nn.Module, spec: ModelSpec | None, needs_groups: bool) -> ModelSpec | None:
    """The spec, or None when the policy needs no groups and none can be inferred."""
    if spec is not None:
        return spec
    try:
        return spec_of(model)
    except TorchgraftError:
        if needs_groups:
            raise
        return None  # "none"/"all" and patterns work on any module, head or not


def _top_level_owner(names: Iterable[str]) -> dict[str, str]:
    """Fallback grouping for models without a spec: the top-level module of each name."""
    return {name: name.split(".", 1)[0] for name in names}


def _lookup(spec: ModelSpec | None, name: str) -> str | None:
    """The group holding ``name`` (a real or would-be parameter name), or None."""
    if spec is None:
        return name.split(".", 1)[0]
    try:
        return spec.group_of([name])[name]
    except TorchgraftError:
        return None


def _policy_groups(policy: str | Sequence[str], order: list[str]) -> set[str]:
    if not isinstance(policy, (str, list, tuple)):
        raise ConfigError(f"a freeze policy is a string or a list of layer groups, got {policy!r}")
    if not isinstance(policy, str):
        unknown = [g for g in policy if g not in order]
        if unknown:
            raise ConfigError(f"no layer group named {unknown}; the model's groups are {order}")
        return set(policy)
    if policy == "none":
        return set(order)
    if policy == "all":
        return set()
    if policy == "head":
        return {"head"}
    if policy.startswith("last:"):
        count = policy.partition(":")[2]
        if not count.isdigit():
            raise ConfigError(f"freeze policy {policy!r}: write last:N with N a whole number >= 0")
        body = [g for g in order if g != "head"]
        if int(count) > len(body):
            # Not clamped: "last:99" on a 5-group model is a policy written for another
            # model (or a typo), and training everything by surprise is the costly reading.
            raise ConfigError(
                f"freeze policy {policy!r} asks for {int(count)} layer groups before the head, "
                f"but the model has {len(body)} ({', '.join(body) or 'none'}); use "
                f"last:{len(body)} to train them all with the head, or 'none' to train "
                "everything"
            )
        # last:0 is the head alone, as the policy's definition reads ("head" says the same).
        return {"head", *body[len(body) - int(count) :]} if int(count) else {"head"}
    if policy in order:
        return {policy}
    raise ConfigError(
        f"unknown freeze policy {policy!r}; use one of {', '.join(_NAMED_POLICIES)} "
        f"or a list of layer groups from {order}"
    )


def _describe(policy: str | Sequence[str]) -> str:
    return policy if isinstance(policy, str) else ",".join(policy)


def _patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_patterns(names: list[str], patterns: Sequence[str], label: str) -> None:
    # A pattern that matches nothing is almost always a typo that would freeze silently.
    dead = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if dead:
        raise ConfigError(
            f"{label} pattern(s) {dead} match no parameter name; names look like "
            f"{names[:3]} (globs: * ? [..])"
        )


def _module_paths(model: nn.Module, modules: Sequence[str | nn.Module]) -> list[str]:
    by_id = {id(m): path for path, m in model.named_modules()}
    known = set(by_id.values())
    paths = []
    for item in modules:
        path = by_id.get(id(item)) if isinstance(item, nn.Module) else item
        if path is None or path not in known:
            shown = type(item).__name__ if isinstance(item, nn.Module) else repr(item)
            raise ConfigError(
                f"module {shown} is not part of {type(model).__name__}; give a path from "
                f"named_modules(), e.g. {[n for n, _ in model.named_children()][:5]}"
            )
        paths.append(path)
    return paths
