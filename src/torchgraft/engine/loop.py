"""The loop: one training epoch, one evaluation — plain functions over a :class:`Trainer`.

Inputs reach the loop as batches plus two functions: ``prepare`` (uint8 images → normalised
floats on the device; the identity for cached features) and ``forward`` (the model, or the
head on cached features). The training step is the one everybody writes — forward under
autocast, loss, backward (scaled in fp16), optional clipping, optimizer step, zero the
gradients, LR scheduler step, EMA update — with gradient accumulation, and two checks at
every step: the loss is finite, and so is everything the step changed (a finite loss can
leave an exploding BatchNorm variance behind). Either stops the run at once, naming the epoch
and step, before anything of that epoch is saved.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..model.passes import evaluating
from .distributed import ALONE, Processes
from .metrics import Evaluator, RunningMetrics
from .runtime import Runtime

__all__ = ["Trainer", "evaluate", "train_one_epoch"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Trainer:
    """What the training step needs, and the counters it advances.

    Attributes:
        model: the model (its trainable parameters are the optimizer's).
        optimizer, scheduler: the optimizer and the per-step LR scheduler.
        criterion: the training loss (label smoothing or soft targets for mixup).
        runtime: device, precision, memory format.
        scaler: gradient scaler (enabled in fp16 only).
        ema: timm's ``ModelEmaV3`` or None.
        mixup: timm's ``Mixup`` or None.
        grad_accum: micro-batches per optimizer step.
        clip_grad_norm: max gradient norm, or None.
        max_steps: optimizer steps per epoch at most (None: the whole split).
        step: optimizer steps taken so far in the run.
        lr_trace: ``(step, {group name: lr})`` after every optimizer step.
        processes: the run's processes (the epoch's loss and top-1 are summed over them).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    runtime: Runtime
    scaler: torch.amp.GradScaler
    ema: Any = None
    mixup: Any = None
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    max_steps: int | None = None
    step: int = 0
    lr_trace: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    processes: Processes = ALONE

    def steps_per_epoch(self, batches: int) -> int:
        """Optimizer steps one epoch of ``batches`` micro-batches takes."""
        steps = math.ceil(batches / self.grad_accum)
        return min(steps, self.max_steps) if self.max_steps else steps


def train_one_epoch(
    trainer: Trainer,
    batches: Iterable[Batch],
    count: int,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module | None = None,
    epoch: int,
    on_step: Callable[[int, int], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Train over ``batches`` (``count`` of them); returns the epoch's loss and top-1 (over
    every process). ``module`` is what ``forward`` runs, put in training mode (default: the
    trainer's model). ``no_sync``: DistributedDataParallel's, used for the micro-batches that
    do not end an accumulation (their gradients are kept locally, synchronised once at the
    last).

    Raises:
        TrainingError: a non-finite loss, or weights or statistics made non-finite by a step
            (the epoch and step are named).
    """
    runtime = trainer.runtime
    (module if module is not None else trainer.model).train()
    watched = changing_tensors(trainer.model)
    running = RunningMetrics(runtime.device)
    steps = trainer.steps_per_epoch(count)
    taken = 0
    trainer.optimizer.zero_grad(set_to_none=True)
    for index, (inputs, targets) in enumerate(batches):
        inputs, targets = prepare(inputs), targets.to(runtime.device, non_blocking=True)
        if trainer.mixup is not None:
            inputs, targets = trainer.mixup(inputs, targets)
        steps_now = (index + 1) % trainer.grad_accum == 0 or index + 1 == count
        with no_sync() if no_sync is not None and not steps_now else contextlib.nullcontext():
            with runtime.autocast():
                logits = forward(inputs)
                loss = trainer.criterion(logits, targets)
            _check_finite(loss, epoch, trainer.step + 1, index)
            trainer.scaler.scale(loss / trainer.grad_accum).backward()
        running.update(logits, targets, loss)
        if steps_now:
            _optimizer_step(trainer)
            _check_weights_finite(watched, epoch, trainer.step, index)
            taken += 1
            if on_step is not None:
                on_step(taken, steps)
            if taken >= steps:
                break
    return running.compute(trainer.processes)


def _optimizer_step(trainer: Trainer) -> None:
    if trainer.clip_grad_norm is not None:
        trainer.scaler.unscale_(trainer.optimizer)
        params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, trainer.clip_grad_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    trainer.step += 1
    if trainer.ema is not None:
        trainer.ema.update(trainer.model, step=trainer.step)
    trainer.lr_trace.append(
        (
            trainer.step,
            {g.get("name", str(i)): g["lr"] for i, g in enumerate(trainer.optimizer.param_groups)},
        )
    )


def changing_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What a training step can change: the trainable parameters, and the floating-point
    buffers of modules in training mode (BatchNorm statistics); a frozen body is left out."""
    changing = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for path, child in model.named_modules():
        if child.training:
            changing += [
                (f"{path}.{n}" if path else n, b) for n, b in child.named_buffers(recurse=False)
            ]
    return [(name, t) for name, t in changing if t.is_floating_point()]


def non_finite(tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity."""
    return [name for name, tensor in tensors if not torch.isfinite(tensor).all()]


def _check_weights_finite(watched, epoch: int, step: int, batch: int) -> None:
    # One reduction per tensor and one scalar read per step (the largest magnitude is NaN or
    # inf exactly when some element is): far below the cost of the step's backward pass.
    if not watched:
        return
    largest = torch.stack([t.detach().abs().amax().float() for _, t in watched if t.numel()])
    if bool(torch.isfinite(largest).all()):
        return
    bad = non_finite(watched)
    raise TrainingError(
        f"weights became non-finite at epoch {epoch + 1}, step {step} (batch {batch + 1} of the "
        f"epoch; {', '.join(bad[:3])}); the run stopped and nothing of this epoch was saved. "
        "Lower optim.lr or set train.clip_grad_norm"
    )


def _check_finite(loss: torch.Tensor, epoch: int, step: int, batch: int) -> None:
    # One scalar read per step: on a CPU it costs nothing measurable, and it is what lets a
    # run stop at the first bad step instead of saving poisoned weights.
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(
            f"the training loss became {value} at epoch {epoch + 1}, step {step} "
            f"(batch {batch + 1} of the epoch); the run stopped and nothing of this epoch was "
            "saved. Lower optim.lr, set train.clip_grad_norm, or check the data for "
            "non-finite values"
        )


def evaluate(
    batches: Iterable[Batch],
    evaluator: Evaluator,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    runtime: Runtime,
    modules: Iterable[nn.Module] = (),
) -> Any:
    """Metrics of ``forward`` over ``batches`` (the ``modules`` are put in eval mode and
    restored after); returns the evaluator's :class:`~torchgraft.engine.metrics.EvalResult`."""
    started = time.perf_counter()
    with contextlib.ExitStack() as modes:
        for module in modules:  # every module's own mode comes back (frozen norms stay eval)
            modes.enter_context(evaluating(module, grad="inference"))
        with torch.inference_mode(), runtime.autocast():
            for inputs, targets in batches:
                targets = targets.to(runtime.device, non_blocking=True)
                logits = forward(prepare(inputs)).float()
                loss = F.cross_entropy(logits, targets, reduction="sum")
                evaluator.update(logits, targets, loss)
    result = evaluator.compute()
    result.seconds = time.perf_counter() - started
    return result
