"""Initialise new layers, and only them: the keys a graft report says were not loaded.

The hand-written ``model.apply(weights_init)`` visits every module and overwrites the
pretrained weights it was meant to spare. :func:`init_new_layers` takes the list of
state_dict keys that received nothing (``report.missing``) or names you give, and writes
those tensors only, with a rule chosen by the type of the module that owns each one.

Rules per scheme (bias always 0; normalisation layers always weight 1, bias 0, running mean
0, running variance 1, except with ``"keep"``):

=============== ============================================== ==============================
scheme          convolution weight                             Linear weight
=============== ============================================== ==============================
tutorial        normal(0, sqrt(2 / n)), n = k·k·out_channels   normal(0, 0.01)
kaiming         kaiming_normal(fan_out, relu) (torchvision)    kaiming_normal(fan_in, relu)
xavier          xavier_uniform                                 xavier_uniform
trunc_normal    trunc_normal(std=0.02) (timm ViT)              trunc_normal(std=0.02)
zero            0                                              0
keep            the module's own ``reset_parameters()``        (same)
=============== ============================================== ==============================

``tutorial`` is the classic ``weight_init`` of the PyTorch fine-tuning notes, which is the
initialisation of torchvision's VGG: its conv rule is exactly torchvision's
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``. The notes have no Linear branch
(a new head would keep PyTorch's default); torchgraft uses VGG's Linear rule, normal(0, 0.01).
Embeddings, class tokens and position tables get trunc_normal(std=0.02) (ViT/BERT) except
with ``zero`` and ``keep``. ``zero`` zero-initialises weights and biases of the new layers —
the zero-init-head trick (initial logits are all 0, the loss starts at log(classes)).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..wording import listing

__all__ = ["SCHEMES", "InitEntry", "InitSummary", "init_new_layers"]

SCHEMES = ("tutorial", "kaiming", "xavier", "trunc_normal", "zero", "keep")
_TOKEN_WORDS = ("token", "pos_embed", "position")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_NORM_VALUES = {
    "weight": 1.0,
    "bias": 0.0,
    "running_mean": 0.0,
    "running_var": 1.0,
    "num_batches_tracked": 0,
}

Rule = Callable[[torch.Tensor, nn.Module, "torch.Generator | None"], str]


@dataclass(frozen=True)
class InitEntry:
    """One tensor that was initialised: its key, owning module type and the rule used."""

    key: str
    module_type: str
    rule: str


@dataclass(frozen=True, repr=False)
class InitSummary:
    """Everything :func:`init_new_layers` wrote (and nothing else was touched)."""

    scheme: str
    entries: tuple[InitEntry, ...]

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "entries": [asdict(e) for e in self.entries]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render(self) -> str:
        """One line per tensor: key, module type, rule."""
        if not self.entries:
            return f"init '{self.scheme}': nothing to initialise (every key was loaded)"
        width = max(len(e.key) for e in self.entries)
        kind = max(len(e.module_type) for e in self.entries)
        lines = [f"init '{self.scheme}': {len(self.entries)} tensor(s)"]
        lines += [f"  {e.key:<{width}}  {e.module_type:<{kind}}  {e.rule}" for e in self.entries]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"<InitSummary {self.scheme!r}: {len(self.entries)} tensors ({listing(self.keys)})>"


def init_new_layers(
    model: nn.Module,
    report_or_names: Any,
    scheme: str = "kaiming",
    *,
    generator: torch.Generator | None = None,
) -> InitSummary:
    """Initialise exactly the tensors that were not loaded; never touch a loaded one.

    Args:
        model: the model, changed in place.
        report_or_names: a :class:`~torchgraft.GraftReport` / ``GraftPlan`` (anything with
            ``.missing``, a list of state_dict keys), or an iterable of state_dict keys.
        scheme: one of :data:`SCHEMES` (see the module docstring for the rules).
        generator: random generator for reproducible values (default: torch's global one).

    Returns:
        An :class:`InitSummary` listing every tensor written and the rule used.

    Raises:
        ConfigError: unknown scheme, or a key that is not in the model's state_dict (a report
            made for another model).

    Example:
        >>> report = tg.graft(model, "colleague.ckpt")
        >>> print(tg.init_new_layers(model, report, scheme="kaiming"))
        init 'kaiming': 2 tensor(s)
          fc.weight  Linear  kaiming_normal(fan_in, relu)
          fc.bias    Linear  zeros
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    keys = _keys(report_or_names)
    tensors = model.state_dict(keep_vars=True)
    unknown = [k for k in keys if k not in tensors]
    if unknown:
        raise ConfigError(
            f"{len(unknown)} key(s) to initialise are not in {type(model).__name__}'s "
            f"state_dict: {unknown[:5]}; was the report made for another model?"
        )
    modules = dict(model.named_modules())
    fresh: dict[int, nn.Module] = {}  # "keep": one reset copy per module, shared by its tensors
    entries = []
    with torch.no_grad():
        for key in dict.fromkeys(keys):  # each once, in the order given
            path, _, role = key.rpartition(".")
            module = modules[path]
            rule = _rule(module, role, tensors[key], scheme, fresh)
            applied = rule(tensors[key], module, generator)
            entries.append(InitEntry(key, type(module).__name__, applied))
    return InitSummary(scheme, tuple(entries))


def _keys(report_or_names: Any) -> list[str]:
    missing = getattr(report_or_names, "missing", None)
    keys = list(missing if missing is not None else report_or_names)
    if isinstance(report_or_names, str) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(
            "init_new_layers takes a graft report (with .missing) or a list of state_dict "
            f"keys, got {type(report_or_names).__name__}"
        )
    return keys


def _rule(
    module: nn.Module, role: str, tensor: torch.Tensor, scheme: str, fresh: dict[int, nn.Module]
) -> Rule:
    """The rule for tensor ``role`` of ``module``, dispatched on the module's type."""
    norm_value = _NORM_VALUES.get(role) if isinstance(module, _NORM_TYPES) else None
    if scheme == "keep":
        return lambda t, m, g: _keep(t, m, role, fresh)
    if norm_value is not None:
        return _constant(norm_value)
    if not isinstance(tensor, nn.Parameter):
        # Other buffers (index tables, fixed sin-cos tables) are computed by the module's
        # constructor, which already ran: random values would break them.
        return _unchanged("a buffer the module computes itself")
    if role == "bias" or scheme == "zero":
        return _constant(0.0)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or any(w in role for w in _TOKEN_WORDS):
        return _trunc_normal
    if tensor.ndim < 2:
        # Layer scales and the like: no fan to scale by; the constructor's value is the default.
        return _unchanged("no rule for a 1-D parameter; constructor value kept")
    if isinstance(module, nn.modules.conv._ConvNd) and role == "weight":
        return _CONV_RULES[scheme]
    return _LINEAR_RULES[scheme]  # Linear, and any other weight matrix


def _unchanged(reason: str) -> Rule:
    return lambda tensor, module, generator: f"unchanged ({reason})"


def _constant(value: float) -> Rule:
    def rule(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
        tensor.fill_(value)
        return "zeros" if value == 0 else f"constant {value:g}"

    return rule


def _keep(tensor: torch.Tensor, module: nn.Module, role: str, fresh: dict[int, nn.Module]) -> str:
    """The module's own default, computed on a copy so its loaded siblings stay as they are."""
    if not callable(getattr(module, "reset_parameters", None)):
        return "unchanged (keep: the module has no reset_parameters)"
    if id(module) not in fresh:
        fresh[id(module)] = copy.deepcopy(module)
        fresh[id(module)].reset_parameters()
    tensor.copy_(getattr(fresh[id(module)], role))
    return f"{type(module).__name__}.reset_parameters()"


def _tutorial_conv(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
    n = math.prod(module.kernel_size) * module.out_channels
    nn.init.normal_(tensor, 0.0, math.sqrt(2.0 / n), generator=generator)
    return f"normal(0, sqrt(2/{n}))"


def _tutorial_linear(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
    nn.init.normal_(tensor, 0.0, 0.01, generator=generator)
    return "normal(0, 0.01)"


def _kaiming(mode: str) -> Rule:
    def rule(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
        nn.init.kaiming_normal_(tensor, mode=mode, nonlinearity="relu", generator=generator)
        return f"kaiming_normal({mode}, relu)"

    return rule


def _xavier(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
    nn.init.xavier_uniform_(tensor, generator=generator)
    return "xavier_uniform"


def _trunc_normal(tensor: torch.Tensor, module: nn.Module, generator: Any) -> str:
    # Bounds at ±2 std, unlike nn.init's default of ±2 absolute (which, at std 0.02, is none).
    nn.init.trunc_normal_(tensor, std=0.02, a=-0.04, b=0.04, generator=generator)
    return "trunc_normal(std=0.02)"


_CONV_RULES: dict[str, Rule] = {
    "tutorial": _tutorial_conv,
    "kaiming": _kaiming("fan_out"),
    "xavier": _xavier,
    "trunc_normal": _trunc_normal,
}
_LINEAR_RULES: dict[str, Rule] = {
    "tutorial": _tutorial_linear,
    "kaiming": _kaiming("fan_in"),
    "xavier": _xavier,
    "trunc_normal": _trunc_normal,
}
