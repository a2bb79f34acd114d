"""Proof that a graft kept the function: run source and target on the same input, compare.

Equal shapes are not proof. timm's ``efficientnet_lite0`` accepts exactly the tensors of the
original EfficientNet-Lite0 in the same order, yet pads differently and uses another
BatchNorm epsilon, so its outputs differ; ``tf_efficientnet_lite0`` matches exactly. Only
running both tells them apart.

The comparison is made on the features entering the head (always comparable, even after the
head was replaced) and on the outputs when their shapes agree.

When they differ, a second pass says where: it records the input of every module that holds
its own parameters or buffers (convolutions, norms, linears), in call order, in both models,
and walks the two lists side by side. The first pair whose inputs differ (or stop having the
same shape) points at the layer just before it — its weights, epsilon or padding, or the
parameter-free operations after it. Inputs rather than outputs, because libraries fuse
differently (timm's ``BatchNormAct2d`` returns the activation, torchvision's BatchNorm the
value before it), while what the next weighted layer receives is the same in a faithful graft.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..checkpoint.read import Checkpoint
from ..errors import GraftError, HeadError, SpecError, VerificationError
from ..model.anatomy import spec_of
from ..model.passes import evaluating
from ..model.probe import primary_output
from .apply import apply_plan
from .graft_plan import percent
from .planner import drop_candidates, make_plan, tensor_infos
from .source import SourceWeights, read_source
from .values.projections import regrouped

__all__ = [
    "BEFORE_FIRST_LAYER",
    "DEFAULT_TOLERANCE",
    "VERIFY_STEPS",
    "Verification",
    "comparable_outputs",
    "compare_models",
    "first_divergence",
    "module_in_model",
    "module_output",
    "probe_input",
    "reference_model",
    "verify_graft",
]

#: Largest relative difference accepted in float32 (differences of reduction order are ~1e-6).
DEFAULT_TOLERANCE = 1e-4
#: Share of its parameter elements the source architecture must take from the source weights.
REFERENCE_COVERAGE = 0.999
#: ``Verification.diverges_at`` when the models differ before any layer with weights runs.
BEFORE_FIRST_LAYER = "(input)"
#: The steps :func:`verify_graft` reports to ``on_step``: the reference built, the target
#: run, the reference run, the place where they part looked for (done at once when they agree).
VERIFY_STEPS = 4


@dataclass(frozen=True, repr=False)
class Verification:
    """The result of one comparison.

    Attributes:
        ok: every compared quantity is within ``tolerance``.
        feature_rel_diff: max |target - source| / max |source| of the head inputs.
        output_rel_diff: the same for the outputs, or None when their shapes differ.
        output_abs_diff: max |target - source| of the outputs, or None.
        tolerance: the threshold used.
        input_shape: the probe input's shape.
        source: what the target was compared against.
        diverges_at: when not ok and it could be told, ``(target module, source module)``:
            the first pair of weighted layers after which the two models compute different
            values (see the module docstring), :data:`BEFORE_FIRST_LAYER` twice when they
            differ before any; None otherwise.
    """

    ok: bool
    feature_rel_diff: float
    output_rel_diff: float | None
    output_abs_diff: float | None
    tolerance: float
    input_shape: tuple[int, ...]
    source: str
    diverges_at: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def comparable(self) -> bool:
        """False when neither the head inputs nor the outputs have one shape on both sides
        (a backbone returning every token against one returning the pooled one)."""
        return self.output_rel_diff is not None or self.feature_rel_diff != float("inf")

    @property
    def problem(self) -> str | None:
        """None when ok; else one sentence: the worst difference, the tolerance, and where
        the models part if that is known."""
        if self.ok:
            return None
        if self.output_rel_diff is not None and self.output_rel_diff >= self.feature_rel_diff:
            worst = (
                f"outputs differ by {self.output_rel_diff:.2e} relative "
                f"(max abs {self.output_abs_diff:.3g}) from {self.source}"
            )
        else:
            worst = (
                f"features entering the head differ by {self.feature_rel_diff:.2e} relative "
                f"from {self.source}"
            )
        where = f"; {self._where()}" if self.diverges_at is not None else ""
        return f"{worst}, tolerance {self.tolerance:.0e}{where}"

    def _where(self) -> str:
        target, source = self.diverges_at or ("", "")
        if target == BEFORE_FIRST_LAYER:
            return "the models part before their first layer with weights (input handling)"
        return (
            f"the models part in or just after target module '{target or '(root)'}' "
            f"(source '{source or '(root)'}')"
        )

    def __str__(self) -> str:
        verdict = "OK: same function" if self.ok else "FAILED: the graft changed the function"
        output = (
            f", outputs {self.output_rel_diff:.2e} (abs {self.output_abs_diff:.3g})"
            if self.output_rel_diff is not None
            else ""
        )
        where = f"; {self._where()}" if self.diverges_at is not None else ""
        return (
            f"verify against {self.source}: {verdict}; relative difference of features "
            f"{self.feature_rel_diff:.2e}{output} (tolerance {self.tolerance:.0e}){where}"
        )

    def __repr__(self) -> str:
        if self.ok:
            worst = max(self.feature_rel_diff, self.output_rel_diff or 0.0)
            return f"<Verification OK against {self.source}: {worst:.1e} ≤ {self.tolerance:.0e}>"
        return f"<Verification FAILED: {self.problem}>"


def compare_models(
    target: nn.Module,
    reference: nn.Module,
    example_input: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: torch.dtype | None = None,
    source: str = "source model",
    on_step: Callable[[int, int], None] | None = None,
) -> Verification:
    """Run both models in eval mode on ``example_input`` and compare.

    Neither model is changed (copies are made when ``dtype`` asks for another precision;
    train/eval flags are restored). When they differ, a second pass finds where they part
    (:attr:`Verification.diverges_at`). ``on_step(done, 3)``, when given, is called after
    each model has run and after the second pass (at once when there is none).
    """
    step = on_step or _ignore
    runners = [copy.deepcopy(m).to(dtype) if dtype is not None else m for m in (target, reference)]
    example = example_input.to(dtype or example_input.dtype)
    results = []
    for done, runner in enumerate(runners, 1):
        results.append(_run(runner, _head_path(runner), example))
        step(done, 3)
    (t_feat, t_out), (r_feat, r_out) = results
    feature = _relative(t_feat, r_feat)
    output_rel = output_abs = None
    if t_out.shape == r_out.shape:
        output_rel = _relative(t_out, r_out)
        output_abs = float((t_out - r_out).abs().max())
    ok = feature <= tolerance and (output_rel is None or output_rel <= tolerance)
    where = None if ok else first_divergence(*runners, example[:1], tolerance=tolerance)
    step(3, 3)
    return Verification(
        ok, feature, output_rel, output_abs, tolerance, tuple(example_input.shape), source, where
    )


def first_divergence(
    target: nn.Module, reference: nn.Module, example: torch.Tensor, *, tolerance: float
) -> tuple[str, str] | None:
    """``(target module, source module)`` after which the two models compute different values.

    Weighted layers (modules with parameters or buffers of their own) are paired in the order
    they are called. At the first pair whose inputs differ (by more than ``tolerance``,
    relative, or in shape), the culprit is the latest earlier pair whose outputs differ —
    not simply the pair before, since a branch such as a ResNet shortcut can run between the
    layer that parted and the one that sees it — or, when no earlier output differs, the pair
    just before. None when the models agree as far as both go (they call different numbers
    of weighted layers, or the difference lies past the last layer's input).
    """
    t_calls, r_calls = _layer_calls(target, example), _layer_calls(reference, example)
    # strict=False: a model with more weighted layers is compared as far as both go.
    pairs = list(zip(t_calls, r_calls, strict=False))
    for index, (t_call, r_call) in enumerate(pairs):
        if _relative(t_call.input, r_call.input) <= tolerance:
            continue
        if index == 0:
            return (BEFORE_FIRST_LAYER, BEFORE_FIRST_LAYER)
        culprit = next(
            (
                (t, r)
                for t, r in reversed(pairs[:index])
                if t.output is None or r.output is None or _relative(t.output, r.output) > tolerance
            ),
            pairs[index - 1],
        )
        return (culprit[0].path, culprit[1].path)
    return None


def verify_graft(
    model: nn.Module,
    source_model: nn.Module,
    source_weights: Any,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dtype: torch.dtype | None = None,
    raise_on_failure: bool = False,
    seed: int = 0,
    source_name: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Verification:
    """Load the source weights into the source architecture, compare it with ``model``.

    Args:
        model: the grafted target.
        source_model: the source architecture, as a module (it is copied, never changed;
            :func:`torchgraft.verify_graft` also takes a model spec and builds it).
        source_weights: what was grafted (a path, a state_dict, a module, or
            :class:`~torchgraft.grafting.source.SourceWeights`).
        tolerance: largest accepted relative difference.
        dtype: compare in this precision (``torch.float64`` for parity tests).
        raise_on_failure: raise :class:`~torchgraft.errors.VerificationError` (a
            :class:`~torchgraft.errors.GraftError`) instead of returning a failed result; its
            message gives the worst difference, the tolerance and, when known, the first
            layers after which the models part. Without it, check ``result.ok``.
        seed: seed of the random probe input.
        source_name: how the result names the source architecture.
        on_step: called as ``on_step(done, VERIFY_STEPS)`` before the first step and after
            each (see :data:`VERIFY_STEPS`), for a progress bar
            (:meth:`torchgraft.engine.console.RunConsole.task`); None reports nothing.

    Returns:
        A :class:`Verification`; ``ok`` is False when the graft changed the function.

    Raises:
        VerificationError: with ``raise_on_failure``, when the outputs differ.
        GraftError: the source weights do not load into the source architecture exactly.

    Example:
        >>> tg.verify_graft(model, "timm:resnet50", "colleague.ckpt", raise_on_failure=True)
        <Verification OK against timm:resnet50: 2.1e-07 ≤ 1e-04>
    """
    step = on_step or _ignore
    step(0, VERIFY_STEPS)
    weights = read_source(source_weights)
    reference = reference_model(source_model, weights.checkpoint.tensors)
    step(1, VERIFY_STEPS)
    example = probe_input(model, seed)
    result = compare_models(
        model,
        reference,
        example,
        tolerance=tolerance,
        dtype=dtype,
        source=source_name or type(source_model).__name__,
        on_step=lambda done, _: step(1 + done, VERIFY_STEPS),
    )
    if raise_on_failure and not result.ok:
        raise VerificationError(f"verification FAILED: {result.problem}")
    return result


def reference_model(
    source_model: nn.Module, tensors: Mapping[str, torch.Tensor], *, copy_first: bool = True
) -> nn.Module:
    """A copy of the source architecture holding the source tensors, in eval mode
    (``copy_first=False``: ``source_model`` itself, for a model built only to be this).

    The tensors must load as they are (names equal up to wrapper prefixes, ≥ 99.9 % of the
    parameter elements): a reference that is itself a guess proves nothing.

    Raises:
        GraftError: the tensors do not load into the architecture that way.
    """
    reference = copy.deepcopy(source_model) if copy_first else source_model
    weights = SourceWeights(Checkpoint(dict(tensors), "state_dict", "source weights"))
    weights = regrouped(weights, tensor_infos(reference.state_dict()))
    plan = drop_candidates(make_plan(reference, weights, strategy="auto"))
    if plan.coverage < REFERENCE_COVERAGE:
        raise GraftError(
            f"the source weights do not load into {type(source_model).__name__} as they are "
            f"({percent(plan.coverage)} of its parameter elements; at least "
            f"{REFERENCE_COVERAGE:.1%} needed): is it the architecture they were saved from?"
        )
    apply_plan(reference, plan, weights.checkpoint.tensors)
    return reference.eval()


def probe_input(model: nn.Module, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A seeded random input shaped by the model's preprocessing, on its device."""
    spec = spec_of(model)
    generator = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn(batch, *spec.preprocessing.input_size, generator=generator).to(device)


def _head_path(model: nn.Module) -> str | None:
    """The classifier's path, or None for a backbone without one (a Hugging Face
    ``Dinov2Model``, a timm model built with ``num_classes=0``)."""
    try:
        return spec_of(model).head_path
    except (HeadError, SpecError):
        return None


def _run(model: nn.Module, head_path: str | None, example: torch.Tensor):
    """``(head input, output)``; without a head, the output stands for both."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    if head_path is not None:
        head = model.get_submodule(head_path)
        hooks.append(
            (head, "pre", lambda _m, args: captured.setdefault("features", args[0].detach()))
        )
    with evaluating(model, hooks, grad=False):
        output = primary_output(model(example.to(next(model.parameters()).device)))
    features = captured.get("features", output)
    return features.flatten(1).cpu(), output.detach().cpu()


class _Call(NamedTuple):
    path: str
    input: torch.Tensor
    output: torch.Tensor | None


def _layer_calls(model: nn.Module, example: torch.Tensor) -> list[_Call]:
    """Input and output of each weighted layer's first call, in call order."""
    calls: list[_Call] = []
    inputs: dict[str, torch.Tensor] = {}
    done: set[str] = set()

    def before(path: str):
        def record(_module, args) -> None:
            if path not in inputs and args and isinstance(args[0], torch.Tensor):
                # cloned: an in-place operation later on must not change what was recorded
                inputs[path] = args[0].detach().cpu().clone()

        return record

    def after(path: str):
        def record(_module, _args, output) -> None:
            if path in inputs and path not in done:
                done.add(path)
                tensor = primary_output(output)
                kept = tensor.detach().cpu().clone() if tensor is not None else None
                calls.append(_Call(path, inputs[path], kept))

        return record

    hooks = []
    for path, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            hooks += [(module, "pre", before(path)), (module, "forward", after(path))]
    with evaluating(model, hooks, grad=False):
        model(example.to(next(model.parameters()).device))
    # A container with weights of its own (a ViT's cls_token) finishes after its children;
    # ordering by when each call began keeps the pairs aligned with the forward pass.
    began = {path: index for index, path in enumerate(inputs)}
    return sorted(calls, key=lambda call: began[call.path])


def _ignore(done: int, total: int) -> None:
    """The ``on_step`` of a verification nobody watches."""


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)


def module_in_model(model: nn.Module, path: str) -> str:
    """``path`` (a module named as the source file names it) as ``model`` names it: without
    the leading components a wrapper added (``module.``, ``model.``) when ``model`` lacks them."""
    names = dict(model.named_modules())
    parts = path.split(".") if path else []
    for start in range(len(parts)):
        if ".".join(parts[start:]) in names:
            return ".".join(parts[start:])
    return path


def comparable_outputs(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal shapes, or the same batch and channels with the positions between them laid out
    otherwise: timm's Swin blocks return ``(B, H, W, C)``, transformers' ``(B, H·W, C)``."""
    if got.shape == expected.shape:
        return True
    return (
        got.dim() >= 2
        and expected.dim() >= 2
        and got.shape[0] == expected.shape[0]
        and got.shape[-1] == expected.shape[-1]
        and got.numel() == expected.numel()
    )


def module_output(model: nn.Module, path: str, example: torch.Tensor) -> torch.Tensor | None:
    """The output of the module at ``path`` in one eval-mode forward pass."""
    captured: dict[str, torch.Tensor] = {}
    module = model.get_submodule(path) if path else model

    def hook(_module, _inputs, output):
        tensor = primary_output(output)
        if tensor is not None:
            captured.setdefault("out", tensor.detach().float())

    with evaluating(model, [(module, "forward", hook)], grad=False):
        model(example)
    return captured.get("out")
