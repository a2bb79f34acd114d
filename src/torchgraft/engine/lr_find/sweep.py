"""The learning-rate range test on any model and optimizer: :func:`lr_range_test`, and the
:func:`sweep` that ``torchgraft lr-find`` (:mod:`.run`) drives with a run's trainer.

The sweep is the training step of :mod:`..loop` (autocast, gradient scaler, accumulation,
clipping, mixup, the finite-loss and finite-weight checks) driven by a scheduler that sets
every optimizer group's LR to *its own* LR times one common factor, so the ratios between
groups (head and backbone, layer-wise decay, an unfreezing stage's multipliers) hold at every
step. The factor is chosen so that the *reference* LR (``optim.lr`` for a run, the head's
LR by default otherwise) takes each value of the sweep; the suggestion is therefore a value
for the reference LR, and everything else follows it as it would in training. The arithmetic
(schedule, smoothing, stopping, the rules) is :mod:`.rules`; the files it leaves are
:mod:`.outputs`.

:func:`lr_range_test` leaves the model and optimizer it is given exactly as it found them
(:func:`preserved`): every parameter and buffer bitwise, the optimizer's state and group
settings, gradients, train/eval modes and every random generator.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, TrainingError
from ...wording import option
from ..loop import Trainer, train_one_epoch
from ..resume import capture_rng, restore_rng
from ..runtime import Runtime
from .rules import (
    AUTO,
    DEFAULT_END_LR,
    DEFAULT_START_LR,
    DEFAULT_STEPS,
    Suggestion,
    check_sweep,
    choose_rule,
    smooth,
    suggest,
    sweep_lrs,
)

__all__ = ["LRFinderResult", "lr_range_test", "preserved", "sweep"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(repr=False)
class LRFinderResult:
    """What a range test recorded and what it suggests.

    Attributes:
        lrs: the reference LR of each recorded step (what the suggestion is a value for).
        losses: each step's training loss (the mean over its micro-batches).
        smoothed: the bias-corrected moving average of ``losses`` (what the rules read).
        group_lrs: ``{optimizer group name: its LR at each step}``.
        suggestions: ``{rule: Suggestion}`` (empty when the loss diverged almost at once).
        rule: the rule whose LR is :attr:`suggestion`.
        why: why that rule (``the rule for SGD``, ``the rule asked for`` …).
        stop: why the sweep ended: ``end`` (all steps), ``diverged`` (the smoothed loss passed
            4 × its minimum), ``non-finite`` (a NaN or infinite loss or weight) or ``data``
            (the batches ran out).
        start_lr, end_lr, steps: the sweep asked for.
        reference_lr: the reference LR the optimizer groups were scaled against.
        dir: the folder holding the result's files, once written (``tg.lr_find``).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    group_lrs: dict[str, list[float]]
    suggestions: dict[str, Suggestion]
    rule: str
    stop: str
    start_lr: float
    end_lr: float
    steps: int
    reference_lr: float
    why: str = ""
    dir: Path | None = field(default=None)

    @property
    def suggestion(self) -> float | None:
        """The suggested reference LR (by :attr:`rule`), or None when there is none."""
        chosen = self.suggestions.get(self.rule)
        return chosen.lr if chosen is not None else None

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``lr_find.csv``, ``lr_find.json`` and ``lr_find.png`` into ``folder``."""
        from .outputs import write_outputs

        return write_outputs(self, Path(folder))

    def __repr__(self) -> str:
        shown = self.suggestion
        suggestion = f"suggestion {shown:.3g} ({self.rule})" if shown else "no suggestion"
        return f"<LRFinderResult: {len(self.lrs)} steps, stop {self.stop}, {suggestion}>"


# ------------------------------------------------------------------------------- the sweep


class _Diverged(Exception):
    """The smoothed loss passed its limit: the sweep is over (not an error)."""


class _Schedule:
    """Sets each group's LR to ``scale * lr`` of the sweep's step; :mod:`..loop` calls
    :meth:`step` after every optimizer step, like an LR scheduler."""

    def __init__(self, groups: list[dict[str, Any]], scales: list[float], lrs: list[float]):
        self.groups, self.scales, self.lrs, self.index = groups, scales, lrs, 0
        self._set()

    def _set(self) -> None:
        for group, scale in zip(self.groups, self.scales, strict=True):
            group["lr"] = scale * self.lrs[self.index]

    def step(self) -> None:
        if self.index + 1 < len(self.lrs):
            self.index += 1
            self._set()


class _Curve:
    """Records each step's loss (through the criterion) and stops the sweep on divergence."""

    def __init__(self, criterion, beta: float, factor: float, progress, lrs: list[float]):
        self.criterion, self.beta, self.factor = criterion, beta, factor
        self.progress, self.lrs = progress, lrs
        self.pending: list[float] = []
        self.losses: list[float] = []
        self.average, self.best = 0.0, float("inf")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = self.criterion(logits, targets)
        self.pending.append(float(value.detach()))
        return value

    def step(self, done: int, total: int) -> None:
        loss = sum(self.pending) / len(self.pending)
        self.pending.clear()
        self.losses.append(loss)
        # The same arithmetic as rules.smooth, one value at a time.
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smoothed = self.average / (1 - self.beta ** len(self.losses))
        self.best = min(self.best, smoothed)
        if self.progress is not None:
            lr = self.lrs[done - 1]
            self.progress.advance(done, total, status=f"lr {lr:.1e} · loss {smoothed:.4g}")
        if smoothed > self.factor * self.best:
            raise _Diverged


def sweep(
    trainer: Trainer,
    batches: Iterable[Batch],
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module | None = None,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    reference_lr: float | None = None,
    rule: str = AUTO,
    beta: float = 0.98,
    diverge: float = 4.0,
    progress=None,
) -> LRFinderResult:
    """Run the range test with ``trainer``'s training step; the model is trained by it.

    The trainer's scheduler, criterion and ``max_steps`` are replaced during the sweep and
    put back after; its model and optimizer are *not* restored (see :func:`preserved`).

    Args:
        trainer: model, optimizer (groups at their configured LRs), criterion, runtime …
        batches: training batches; cycled (iterated again) when the sweep needs more.
        prepare, forward, module: as for :func:`~..loop.train_one_epoch`.
        start_lr, end_lr, steps: the sweep of the reference LR.
        reference_lr: the LR the groups' LRs are relative to (default: the ``head`` group's
            LR, else the largest).
        rule: which rule gives :attr:`LRFinderResult.suggestion`: ``steep``, ``valley``,
            ``minimum``, or ``auto`` (steep for SGD, valley for other optimizers).
        beta, diverge: the smoothing factor, and the multiple of the lowest smoothed loss
            that ends the sweep.
        progress: an object with ``advance(done, total, status)`` (a :class:`RunConsole`).

    Raises:
        ConfigError: a sweep that cannot run (``start_lr >= end_lr``, ``steps`` out of range,
            an unknown rule).
    """
    check_sweep(start_lr, end_lr, steps)
    rule, why = choose_rule(rule, _optimizer_name(trainer.optimizer))
    groups = trainer.optimizer.param_groups
    reference = reference_lr if reference_lr is not None else _reference(groups)
    if not reference > 0:
        raise ConfigError(f"{option('reference_lr', reference)}: the LR swept is a number > 0")
    scales = [group["lr"] / reference for group in groups]
    lrs = sweep_lrs(start_lr, end_lr, steps)
    curve = _Curve(trainer.criterion, beta, diverge, progress, lrs)
    saved = trainer.scheduler, trainer.criterion, trainer.max_steps
    trainer.scheduler, trainer.criterion, trainer.max_steps = (
        _Schedule(groups, scales, lrs),
        curve.loss,
        None,
    )
    stop, cycled = "end", _cycle(batches)
    try:
        train_one_epoch(
            trainer,
            cycled,
            steps * trainer.grad_accum,
            prepare=prepare,
            forward=forward,
            module=module,
            epoch=0,
            on_step=curve.step,
        )
        stop = "end" if len(curve.losses) == steps else "data"
    except _Diverged:
        stop = "diverged"
    except TrainingError:  # the loop's own check: a non-finite loss or weights
        stop = "non-finite"
    finally:
        cycled.close()  # a loader's worker processes end now, not when collected
        trainer.scheduler, trainer.criterion, trainer.max_steps = saved
    recorded = lrs[: len(curve.losses)]
    smoothed = smooth(curve.losses, beta)
    names = _group_names(groups)
    return LRFinderResult(
        lrs=recorded,
        losses=curve.losses,
        smoothed=smoothed,
        group_lrs={
            name: [s * lr for lr in recorded] for name, s in zip(names, scales, strict=True)
        },
        suggestions=suggest(recorded, smoothed, steps),
        rule=rule,
        stop=stop,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        reference_lr=reference,
        why=why,
    )


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else type(optimizer).__name__.lower()


def _reference(groups: Sequence[Mapping[str, Any]]) -> float:
    head = [g["lr"] for g in groups if g.get("layer_group") == "head"]
    return float(head[0] if head else max(g["lr"] for g in groups))


def _group_names(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for index, group in enumerate(groups):
        name = str(group.get("name") or index)
        names.append(name if name not in names else f"{name}#{index}")
    return names


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """``batches`` again and again (a loader draws a new order each pass); a one-shot
    iterator, or an empty one, is gone through once."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty or iter(batches) is batches:
            return


# ------------------------------------------------------------------ the library function


@contextlib.contextmanager
def preserved(
    model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None
) -> Iterator[None]:
    """Put ``model`` and ``optimizer`` back exactly as they were when the block ends.

    Restored: every parameter and buffer (bitwise; copies kept on the CPU), gradients,
    ``requires_grad`` flags and train/eval modes; the optimizer's per-parameter state and
    every group setting (``lr``, ``initial_lr``, momentum …), in the same objects; the torch
    (and CUDA), NumPy and Python random generators, and ``generator`` (a data-order one).
    """
    tensors = _tensors(model)
    saved = [t.detach().to("cpu", copy=True) for t in tensors]
    parameters = list(model.parameters())
    grads = [None if p.grad is None else p.grad.detach().clone() for p in parameters]
    flags = [p.requires_grad for p in parameters]
    modes = [(m, m.training) for m in model.modules()]
    settings = [
        {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups
    ]
    state = {p: copy.deepcopy(s) for p, s in optimizer.state.items()}
    generator = generator if generator is not None else torch.Generator()
    rng = capture_rng(generator)
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, copied in zip(tensors, saved, strict=True):
                tensor.copy_(copied)
        for p, grad, flag in zip(parameters, grads, flags, strict=True):
            p.grad, p.requires_grad = grad, flag
        for module, mode in modes:
            module.training = mode
        for group, kept in zip(optimizer.param_groups, settings, strict=True):
            for key in [k for k in group if k != "params" and k not in kept]:
                del group[key]
            group.update(kept)
        optimizer.state.clear()
        optimizer.state.update(state)
        restore_rng(rng, generator)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    found: dict[int, torch.Tensor] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        found.setdefault(id(tensor), tensor)
    return list(found.values())


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    reference_lr: float | None = None,
    rule: str = AUTO,
    precision: str = "fp32",
    grad_accum: int = 1,
    clip_grad_norm: float | None = None,
    generator: torch.Generator | None = None,
) -> LRFinderResult:
    """The LR range test on your own model and optimizer; both are left as they were.

    Every group's LR is its current LR times a common factor, so their ratios hold; the
    factor makes ``reference_lr`` (default: the ``head`` group's LR, else the largest group
    LR) sweep from ``start_lr`` to ``end_lr`` over ``steps`` steps (see
    :mod:`.rules` for the smoothing, the stop and the rules).

    Args:
        model, optimizer: what to test; restored bitwise afterwards (:func:`preserved`).
        batches: ``(inputs, targets)`` pairs, cycled when shorter than the sweep.
        criterion: the loss (default: cross-entropy).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 with a gradient scaler).
        grad_accum, clip_grad_norm: as in training.
        generator: a data-order generator to restore afterwards too.

    Returns:
        An :class:`LRFinderResult`; ``result.suggestion`` is a value for ``reference_lr``.

    Raises:
        ConfigError: a sweep that cannot run, or an unknown precision.

    Example:
        >>> found = lr_range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), loader)
        >>> found.suggestion, found.suggestions["minimum"].lr
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"{option('precision', precision)}: use fp32, bf16 or fp16")
    device = next(model.parameters()).device
    runtime = Runtime(device, precision, torch.get_num_threads(), channels_last=False)
    trainer = Trainer(
        model,
        optimizer,
        None,
        criterion or nn.CrossEntropyLoss(),
        runtime,
        runtime.grad_scaler(),
        grad_accum=grad_accum,
        clip_grad_norm=clip_grad_norm,
    )
    with preserved(model, optimizer, generator):
        return sweep(
            trainer,
            batches,
            prepare=lambda inputs: inputs.to(device, non_blocking=True),
            forward=model,
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            reference_lr=reference_lr,
            rule=rule,
        )
