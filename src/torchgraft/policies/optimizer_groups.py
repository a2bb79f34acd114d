"""Optimizer parameter groups: a pure function of the model, with an invariant.

:func:`param_groups` turns a model (and its :class:`~torchgraft.ModelSpec` layer groups) into
the list of dicts every ``torch.optim`` optimizer takes. Each group carries ``name``,
``layer_group`` and ``param_names`` (the key ``torch.optim`` itself uses for named
parameters), so optimizer state can be saved and restored by parameter name
(:func:`optimizer_state_by_name`, :func:`load_optimizer_state_by_name`) — a resume after
unfreezing, when the groups differ, works — and audited (:func:`audit_optimizer`).

The invariant (checked on every call, and on any groups by :func:`check_param_groups`): every
trainable parameter is in exactly one group, and no frozen parameter is in any.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..model.anatomy import spec_of
from ..model.spec import ModelSpec
from ..text import printable

__all__ = [
    "NO_DECAY_KEYWORDS",
    "OptimizerAudit",
    "OptimizerAuditWarning",
    "audit_optimizer",
    "check_param_groups",
    "layer_lrs",
    "no_weight_decay_names",
    "param_groups",
]

#: Substrings of a parameter's own (last) name that mark tokens and position tables.
#: Matching the last component, not the whole path, keeps MLP-Mixer's ``mlp_tokens.fc1.weight``
#: (a real weight matrix) decaying while ``cls_token`` or ``pos_embed`` do not.
NO_DECAY_KEYWORDS = (
    "pos_embed",
    "cls_token",
    "class_token",
    "position",
    "token",
    "relative_position_bias_table",
)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


class OptimizerAuditWarning(UserWarning):
    """An optimizer that holds frozen parameters or misses trainable ones."""


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    backbone_lr: float | None = None,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
    lr_scale: Mapping[str, float] | None = None,
    spec: ModelSpec | None = None,
) -> list[dict[str, Any]]:
    """Named optimizer groups: LR per layer group, no weight decay where it does harm.

    Each layer group gives up to two optimizer groups, ``"<group>"`` (with ``weight_decay``)
    and ``"<group>.no_decay"`` (biases, 1-D parameters such as norm weights, embeddings,
    tokens, position tables and the model's own ``no_weight_decay()`` names). Both always
    exist with the same names whatever ``weight_decay`` is, so state saved by name matches.

    Learning rates: the head gets ``lr``; without ``layer_decay`` every other group gets
    ``backbone_lr`` (default ``lr``); with ``layer_decay`` the group at index ``i`` of ``G``
    gets ``lr * layer_decay ** (G - 1 - i)`` (BEiT/timm), or, if ``backbone_lr`` is also
    given, ``backbone_lr * layer_decay ** (G - 2 - i)`` for the body. ``lr_scale`` then
    multiplies the LR of the groups it names (used by unfreezing schedules).

    Args:
        model: the model; only parameters with ``requires_grad`` are placed.
        lr: the head's learning rate.
        backbone_lr: learning rate of every non-head group.
        weight_decay: for the decaying groups.
        layer_decay: geometric decay per layer group, in ``(0, 1]`` usually.
        lr_scale: ``{layer_group: multiplier}``.
        spec: the model's spec (default: :func:`torchgraft.spec_of`).

    Returns:
        A list of dicts with ``params``, ``param_names``, ``lr``, ``weight_decay``, ``name``
        and ``layer_group``, stem first; empty groups are left out.

    Raises:
        ConfigError: a non-positive or non-finite rate, or an unknown group in ``lr_scale``.
        SpecError: a parameter no layer group holds (stale spec).

    Example:
        >>> groups = tg.param_groups(model, lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4)
        >>> opt = torch.optim.SGD(groups, momentum=0.9)
    """
    spec = spec or spec_of(model)
    order = spec.group_names
    rates = layer_lrs(order, lr, backbone_lr=backbone_lr, layer_decay=layer_decay)
    _check_rate("weight_decay", weight_decay, allow_zero=True)
    for group, scale in (lr_scale or {}).items():
        if group not in rates:
            raise ConfigError(f"lr_scale names no layer group {group!r}; groups: {list(order)}")
        _check_rate(f"lr_scale[{group!r}]", scale, allow_zero=True)
        rates[group] *= scale
    groups = _split(model, spec, rates, weight_decay)
    check_param_groups(groups, model)
    return groups


def _split(model: nn.Module, spec: ModelSpec, rates: Mapping[str, float], weight_decay: float):
    """One decaying and one non-decaying group per layer group, stem first; empty ones dropped."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    owner = spec.group_of(n for n, _ in named)
    skip = no_weight_decay_names(model)
    buckets: dict[tuple[str, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in named:
        buckets.setdefault((owner[name], name in skip), []).append((name, param))
    groups = []
    for group in spec.group_names:
        for no_decay in (False, True):
            members = buckets.get((group, no_decay))
            if members:
                groups.append(
                    {
                        "name": f"{group}.no_decay" if no_decay else group,
                        "layer_group": group,
                        "params": [p for _, p in members],
                        "param_names": [n for n, _ in members],
                        "lr": rates[group],
                        "weight_decay": 0.0 if no_decay else weight_decay,
                    }
                )
    return groups


def layer_lrs(
    groups: Sequence[str],
    lr: float,
    *,
    backbone_lr: float | None = None,
    layer_decay: float | None = None,
) -> dict[str, float]:
    """The learning rate of each layer group (``"head"`` last), as :func:`param_groups` uses.

    Raises:
        ConfigError: a rate that is not a positive finite number.
    """
    _check_rate("lr", lr)
    if backbone_lr is not None:
        _check_rate("backbone_lr", backbone_lr)
    if layer_decay is not None:
        _check_rate("layer_decay", layer_decay)
    count = len(groups)
    rates = {}
    for index, group in enumerate(groups):
        if group == "head":
            rates[group] = lr
        elif layer_decay is None:
            rates[group] = lr if backbone_lr is None else backbone_lr
        elif backbone_lr is None:
            rates[group] = lr * layer_decay ** (count - 1 - index)
        else:
            rates[group] = backbone_lr * layer_decay ** (count - 2 - index)
    return rates


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that should get no weight decay.

    Biases and every parameter with fewer than two dimensions (norm weights, layer scales),
    weights of embeddings and normalisation layers, parameters whose own name contains one
    of :data:`NO_DECAY_KEYWORDS`, and the names (or globs, or module prefixes) a timm model
    lists in ``no_weight_decay()``.
    """
    listed = _model_no_weight_decay(model)
    names = set()
    for module_path, module in model.named_modules():
        is_table = isinstance(module, (nn.Embedding, nn.EmbeddingBag, *_NORM_TYPES))
        for role, param in module.named_parameters(recurse=False):
            name = f"{module_path}.{role}" if module_path else role
            if (
                param.ndim <= 1
                or role == "bias"
                or is_table
                or any(k in role for k in NO_DECAY_KEYWORDS)
                or any(_listed(name, pattern) for pattern in listed)
            ):
                names.add(name)
    return names


def check_param_groups(groups: Iterable[Mapping[str, Any]], model: nn.Module) -> None:
    """Check the invariant: each trainable parameter in exactly one group, no frozen one in any.

    Works on :func:`param_groups` output, hand-written groups or ``optimizer.param_groups``.

    Raises:
        ConfigError: listing every parameter that is missing, duplicated, frozen, not part
            of ``model``, or named wrongly in ``param_names``.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    problems = []
    for index, group in enumerate(groups):
        label = group.get("name", f"#{index}")
        names = group.get("param_names")
        for position, param in enumerate(group["params"]):
            name = name_of.get(id(param))
            if name is None:
                problems.append(
                    f"group {label!r} holds a tensor that is not a parameter of the model"
                )
                continue
            if id(param) in seen:
                problems.append(f"{name} is in groups {seen[id(param)]!r} and {label!r}")
            seen[id(param)] = label
            if not param.requires_grad:
                problems.append(f"{name} is frozen but in group {label!r}")
            if names is not None and (position >= len(names) or names[position] != name):
                problems.append(f"group {label!r} names parameter {position} wrongly (is {name})")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        problems.append(f"trainable but in no group: {_preview(missing)}")
    if problems:
        raise ConfigError("parameter groups break the invariant: " + "; ".join(problems))


@dataclass(frozen=True, repr=False)
class OptimizerAudit:
    """Per-group learning rate, weight decay and size, with the problems found.

    Attributes:
        rows: one dict per group: name, lr, weight_decay, tensors, elements, names (a few).
        warnings: problems, each one sentence (also raised as :class:`OptimizerAuditWarning`).
    """

    rows: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [dict(r) for r in self.rows], "warnings": list(self.warnings)}

    def render(self) -> str:
        """A plain-text table, one line per group, then the warnings."""
        width = max([len("group"), *(len(str(r["name"])) for r in self.rows)])
        lines = [
            f"{'group':<{width}}  {'lr':>10}  {'wd':>8}  {'tensors':>7}  {'elements':>12}  names"
        ]
        for r in self.rows:
            # parameter names are a user's module names: data, escaped before printing
            names = (printable(n) for n in r["names"])
            shown = ", ".join(names) + (" …" if r["tensors"] > len(r["names"]) else "")
            lines.append(
                f"{r['name']!s:<{width}}  {r['lr']:>10.3g}  {r['weight_decay']:>8.3g}  "
                f"{r['tensors']:>7}  {r['elements']:>12,}  {shown}"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        tensors = sum(int(r.get("tensors", 0)) for r in self.rows)
        elements = sum(int(r.get("elements", 0)) for r in self.rows)
        warned = f"; {len(self.warnings)} warnings (print it)" if self.warnings else ""
        return (
            f"<OptimizerAudit {len(self.rows)} groups, {tensors} tensors, "
            f"{elements:,} elements{warned}>"
        )


def audit_optimizer(
    optimizer: torch.optim.Optimizer | Sequence[Mapping[str, Any]],
    model: nn.Module | None = None,
    *,
    show: int = 3,
    warn: bool = True,
) -> OptimizerAudit:
    """Describe an optimizer's groups and flag frozen or forgotten parameters.

    Args:
        optimizer: an optimizer, or a list of groups (e.g. :func:`param_groups` output).
        model: when given, frozen parameters held by the optimizer and trainable ones it
            misses are reported, and unnamed parameters are named.
        show: how many parameter names to list per group.
        warn: also emit each problem as an :class:`OptimizerAuditWarning`.

    Returns:
        An :class:`OptimizerAudit`; ``print`` it for the table ``--print-groups`` shows.

    Example:
        >>> print(tg.audit_optimizer(opt, model))
    """
    groups = optimizer.param_groups if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    defaults = optimizer.defaults if isinstance(optimizer, torch.optim.Optimizer) else {}
    name_of = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    rows, problems, held = [], [], set()
    for index, group in enumerate(groups):
        params = list(group["params"])
        names = list(group.get("param_names") or [name_of.get(id(p), "?") for p in params])
        held.update(id(p) for p in params)
        label = group.get("name", f"#{index}")
        rows.append(
            {
                "name": label,
                "lr": float(group.get("lr", defaults.get("lr", math.nan))),
                "weight_decay": float(group.get("weight_decay", defaults.get("weight_decay", 0.0))),
                "tensors": len(params),
                "elements": sum(p.numel() for p in params),
                "names": names[:show],
            }
        )
        frozen = [n for n, p in zip(names, params, strict=False) if not p.requires_grad]
        if frozen:
            problems.append(
                f"group {label!r} holds {len(frozen)} frozen parameter(s) ({_preview(frozen)}); "
                "they only stay put while their .grad is None — rebuild the groups after freezing"
            )
    if model is not None:
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
        if missing:
            problems.append(
                f"{len(missing)} trainable parameter(s) are in no group and will not train "
                f"({_preview(missing)}); add them with optimizer.add_param_group"
            )
    if warn:
        for problem in problems:
            warnings.warn(problem, OptimizerAuditWarning, stacklevel=2)
    return OptimizerAudit(tuple(rows), tuple(problems))


def _model_no_weight_decay(model: nn.Module) -> set[str]:
    method = getattr(model, "no_weight_decay", None)
    return set(method()) if callable(method) else set()


def _listed(name: str, pattern: str) -> bool:
    # timm lists exact names ("pos_embed"), module prefixes and, in newer versions, globs.
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _check_rate(label: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{label} must be a finite number {bound}, got {value!r}")


def _preview(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
