"""Which modules carry an adapter: chosen from the model's anatomy, or named by globs.

``"auto"`` reads the model, not its name, with one rule for every architecture:

* every ``nn.Linear`` of the body — in a transformer those are the attention projections
  (``qkv`` / ``q, k, v`` / ``proj``) and the MLP linears, in a CNN the odd classifier-side
  linear;
* every pointwise convolution (1×1 kernel, ``groups == 1``) of the body — in a MobileNet or
  EfficientNet the expansions and projections that hold most of the weights, and the
  squeeze-excitation convolutions;

and never:

* the head(s) from the :class:`~torchgraft.ModelSpec`: they are new and train fully;
* the stem (the spec's ``first_conv``): a handful of weights that see raw pixels;
* depthwise and grouped convolutions: few weights each, and peft cannot merge an adapter
  into a grouped convolution (merging is the contract: the result is the plain architecture);
* spatial (k×k) convolutions: adaptable when named, but not what ``auto`` picks — in the
  networks built around pointwise layers they hold little, and a k×k LoRA costs a k×k
  convolution per layer each step;
* ``nn.MultiheadAttention`` (torchvision's ViT): its input projection is a raw parameter,
  not a layer, and its ``out_proj`` is never called as a module, so an adapter on ``out_proj``
  alone would do nothing. peft's own ``MultiheadAttention`` layer works around both by
  merging the update into the base weights before every forward and subtracting it after:
  measured with peft 0.22, that re-creates the frozen ``in_proj_weight`` as a new Parameter
  on every call and moves it by rounding (1e-7 after a few steps), so the "frozen" base
  would not stay bitwise frozen; and it has no DoRA. Its MLP linears are adapted; the
  attention is left out, and the summary says so.

Named targets are ``fnmatch`` globs on dotted module paths (``"blocks.*.attn.qkv"``).
Modules that only hold others (a block, a ``Sequential``) are passed over; every other
module a glob matches must be able to carry an adapter, or the call fails naming it and its
type. Pure: reads the module tree, changes nothing, needs no peft.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import AdapterError
from ..model.spec import ModelSpec
from ..wording import listing

__all__ = ["LeftOut", "Target", "auto_targets", "exact_targets", "named_targets"]

#: Path segments that mark a linear as part of attention or of the MLP (for the reason shown).
ATTENTION_WORDS = ("attn", "attention")
MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward")


@dataclass(frozen=True)
class Target:
    """A module that carries an adapter, and why it was chosen."""

    name: str
    kind: str  # the module's class name
    reason: str


@dataclass(frozen=True)
class LeftOut:
    """Modules ``auto`` passed over on purpose, and why."""

    names: tuple[str, ...]
    reason: str


def auto_targets(model: nn.Module, spec: ModelSpec) -> tuple[list[Target], list[LeftOut]]:
    """The targets ``"auto"`` picks (see the module docstring), and what it left out.

    Raises:
        AdapterError: nothing in the body can carry an adapter.
    """
    modules = dict(model.named_modules())
    heads = _under(spec.head_paths, modules)
    attention = _under(
        [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)], modules
    )
    targets, left = [], {}
    for name, module in modules.items():
        if not name or name in heads or (name in attention and _has_weight(module)):
            continue
        if name == spec.first_conv:
            left.setdefault(
                "the stem (first convolution): few weights, they see raw pixels", []
            ).append(name)
        elif isinstance(module, nn.Linear):
            targets.append(Target(name, type(module).__name__, _linear_reason(name)))
        elif isinstance(module, nn.Conv2d) and module.groups > 1:
            kind = "depthwise" if module.groups == module.in_channels else "grouped"
            left.setdefault(
                f"{kind} convolutions: few weights, and peft cannot merge a grouped convolution", []
            ).append(name)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            targets.append(Target(name, type(module).__name__, _conv_reason(name, model)))
        elif isinstance(module, nn.Conv2d):
            left.setdefault(
                "spatial convolutions: not pointwise (name them to adapt them)", []
            ).append(name)
    for name in sorted(n for n in attention if isinstance(modules[n], nn.MultiheadAttention)):
        left.setdefault(_MHA_REASON, []).append(name)
    heads_kept = [p for p in spec.head_paths if p in modules]
    if heads_kept:
        left["the head: new, it trains fully"] = heads_kept
    if not targets:
        raise AdapterError(
            f"{spec.name}: 'auto' found no layer to adapt (no Linear or pointwise Conv2d outside "
            "the head and stem); name the targets with globs, e.g. targets=['layer4.*.conv2']"
        )
    return targets, [LeftOut(tuple(names), reason) for reason, names in left.items()]


def named_targets(model: nn.Module, spec: ModelSpec, globs: str | Sequence[str]) -> list[Target]:
    """The modules ``globs`` match (fnmatch on dotted paths), each checked to carry an adapter.

    Raises:
        AdapterError: a glob that matches no module (named, with existing names to choose
            from), or a matched module that cannot carry an adapter (each named with its
            type and the reason), every problem at once.
    """
    globs = [globs] if isinstance(globs, str) else globs
    if (
        not isinstance(globs, (list, tuple))
        or not globs
        or not all(isinstance(g, str) and g for g in globs)
    ):
        raise AdapterError(
            f"targets is 'auto' or module-path globs (non-empty strings), not {globs!r:.80}"
        )
    modules = dict(model.named_modules())
    heads = _under(spec.head_paths, modules)
    attention = _under(
        [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)], modules
    )
    chosen: dict[str, Target] = {}
    problems: list[str] = []
    for glob in globs:
        matched = [n for n in modules if n and fnmatch.fnmatchcase(n, glob)]
        if not matched:
            problems.append(f"'{glob}' matches no module ({_suggest(glob, modules)})")
        for name in matched:
            module = modules[name]
            if not _has_weight(module) and not isinstance(module, nn.MultiheadAttention):
                continue  # a container: its layers are matched (or not) by their own paths
            why_not = _refusal(name, module, heads, attention)
            if why_not:
                problems.append(f"'{name}' ({type(module).__name__}) {why_not}")
            elif name not in chosen:
                chosen[name] = Target(name, type(module).__name__, f"named by '{glob}'")
    if problems:
        raise AdapterError("cannot adapt as asked: " + "; ".join(dict.fromkeys(problems)))
    return list(chosen.values())


def exact_targets(model: nn.Module, spec: ModelSpec, names: Sequence[str]) -> list[Target]:
    """The modules named exactly by ``names`` (no glob characters interpreted), each checked
    as :func:`named_targets` checks them: what a saved record's targets select."""
    # fnmatch's only escape: a special character inside brackets matches itself
    literal = ["".join(f"[{c}]" if c in "*?[" else c for c in name) for name in names]
    return named_targets(model, spec, literal)


_MHA_REASON = (
    "nn.MultiheadAttention: its in_proj is a raw parameter and out_proj is never called as a "
    "module; peft's workaround merges and unmerges the frozen weights around every forward "
    "(they drift by rounding, no DoRA), so the attention is left out and its MLP adapted"
)


def _refusal(name: str, module: nn.Module, heads: set[str], attention: set[str]) -> str | None:
    """Why ``module`` cannot carry an adapter, or None when it can."""
    if name in heads:
        return "is the head, or inside it: the head is new and trains fully"
    if isinstance(module, nn.MultiheadAttention) or name in attention:
        return (
            "is (inside) an nn.MultiheadAttention, which torchgraft does not adapt: " + _MHA_REASON
        )
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return (
                f"has groups={module.groups}: peft cannot merge an adapter into a grouped "
                "(e.g. depthwise) convolution"
            )
        if type(module).forward is not nn.Conv2d.forward and module.kernel_size != (1, 1):
            # e.g. timm's Conv2dSame pads in its forward; peft's A convolution copies the
            # static padding only, so its output would not line up with the base's
            return (
                "pads or convolves in a forward of its own, which peft's adapter convolution "
                "does not follow (only 1×1 kernels are safe there)"
            )
        return None
    return "is not a Linear or Conv2d, the layers peft's LoRA/DoRA can adapt and merge"


def _linear_reason(name: str) -> str:
    segments = name.lower().split(".")
    if any(word in segment for segment in segments for word in ATTENTION_WORDS):
        return "attention projection"
    if any(word in segment for segment in segments for word in MLP_WORDS):
        return "MLP linear"
    return "linear"


def _conv_reason(name: str, model: nn.Module) -> str:
    # timm calls its squeeze-excitation block ``se``; torchvision's class is SqueezeExcitation
    path = name.split(".")
    owners = [model.get_submodule(".".join(path[:i])) for i in range(1, len(path))]
    if "se" in path or any("SqueezeExcit" in type(m).__name__ for m in owners):
        return "pointwise convolution (squeeze-excitation)"
    return "pointwise convolution"


def _under(paths: Sequence[str], modules: dict[str, nn.Module]) -> set[str]:
    """``paths`` and every module below them."""
    roots = [p for p in paths if p in modules]
    return {n for n in modules if any(n == r or n.startswith(f"{r}.") for r in roots)}


def _has_weight(module: nn.Module) -> bool:
    """A layer in its own right: it holds parameters itself, not only through children."""
    return any(True for _ in module.parameters(recurse=False))


def _suggest(glob: str, modules: dict[str, nn.Module]) -> str:
    layers = [n for n, m in modules.items() if n and _has_weight(m)]
    close = difflib.get_close_matches(glob, layers, n=3, cutoff=0.5)
    return f"did you mean {listing(close)}?" if close else f"modules are e.g. {listing(layers[:4])}"
