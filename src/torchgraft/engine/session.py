"""One run's training state and its epoch: stages, optimizer, scheduler, EMA, feature cache,
metrics history, best model, early stopping — and their capture for an exact resume.

:class:`Session` is a plain holder with three verbs: :meth:`~Session.begin` (build the
optimizer for the first epoch to run, restoring a saved state when resuming),
:meth:`~Session.run_epoch` (stage change, one training pass, validation) and
:meth:`~Session.state` (everything :mod:`.resume` saves). The loop itself is in :mod:`.loop`.

Several processes (``torchrun``): every process holds a Session; each trains on its part of
every global batch (:class:`~torchgraft.data.loaders.Shard`) through a
``DistributedDataParallel`` replica of what trains (the model, or the head on cached
features), rebuilt whenever the set of trainable parameters changes (DDP fixes the
parameters it synchronises when it is built: an unfrozen layer would otherwise train apart
on each process). Evaluation and the feature cache are split across the processes and
summed or gathered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loaders import Shard, batch_count, shard_slice
from ..data.mixing import BatchMixer
from ..data.prepare import PreparedData
from ..data.transforms import Normalizer, train_augment
from ..errors import TrainingError
from ..model.spec import ModelSpec
from ..policies.optimizer_groups import audit_optimizer
from .config.load import RunConfig
from .console import OnStep, counting, timed
from .distributed import ALONE, Processes
from .features import FeatureCache, cache_refusal, find_head_entry
from .loop import Trainer, changing_tensors, evaluate, non_finite, train_one_epoch
from .metrics import EvalResult, Evaluator
from .replicas import average_buffers
from .resume import restore_session, session_state
from .runtime import Runtime
from .stages import Stages

__all__ = ["EpochResult", "Session"]


@dataclass
class EpochResult:
    """What one epoch produced."""

    epoch: int
    rows: list[dict[str, Any]]
    val: EvalResult
    improved: bool
    cached: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


class Session:
    """The mutable parts of a run (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        spec: ModelSpec,
        runtime: Runtime,
        data: PreparedData,
        processes: Processes = ALONE,
    ):
        self.config, self.model, self.spec = config, model, spec
        self.runtime, self.data = runtime, data
        self.processes = processes
        self.shard = Shard(processes.rank, processes.world)
        self.stages = Stages(config, model, spec)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.augment = train_augment(
            config.data.augment, data.preprocessing, hflip=config.data.hflip
        )
        self.normalize = Normalizer(data.preprocessing, runtime.device, runtime.memory_format)
        train = config.train
        self.mixer = (
            BatchMixer(train.mixup, train.cutmix, train.label_smoothing, len(data.classes))
            if train.mixup or train.cutmix
            else None
        )
        self.entry = find_head_entry(model, spec)
        # torch.compile wraps the forward only: the model object, its state_dict keys, hooks
        # and freezing stay as they are (a compiled module would prefix every key).
        self.forward = self._compiled(model)
        self._replica: tuple[tuple[int, tuple[str, ...]], nn.Module] | None = None
        self.cache: FeatureCache | None = None
        self.trainer: Trainer | None = None
        self.history: list[dict[str, Any]] = []
        self.policies: list[dict[str, Any]] = []
        self.stage_steps: list[int] = []
        self.best: dict[str, Any] = {}
        self.stale = 0
        self.notes: list[str] = []  # said once to the user (the engine prints them)
        # What the engine chose and why (decisions.json): functions of the model, the data,
        # the dtype and the device — never of a time measured during the run.
        self.decisions: list[dict[str, Any]] = []
        self._evaluators: dict[tuple[str, bool], Evaluator] = {}
        self._cache_note: str | None = None
        self._refusal: tuple[tuple[str, ...], str | None] | None = None  # (stage, refusal)

    # --- setting up ----------------------------------------------------------------------
    @property
    def train_batches(self) -> int:
        """Training batches per epoch (of each process)."""
        count = len(self.data.source.splits["train"])
        return batch_count(count, self.config.data.batch_size, shard=self.shard)

    def _compiled(self, module: nn.Module) -> nn.Module:
        return torch.compile(module) if self.config.model.compile else module

    def _synchronised(self, module: nn.Module) -> tuple[Callable, Callable | None]:
        """``(forward, no_sync)`` that train ``module``: itself when alone; with several
        processes a DistributedDataParallel replica over its trainable parameters (see the
        module docstring) and the replica's ``no_sync``."""
        trainable = tuple(n for n, p in module.named_parameters() if p.requires_grad)
        if self.processes.alone or not trainable:
            return (self.forward if module is self.model else module), None
        key = (id(module), trainable)
        if self._replica is None or self._replica[0] != key:
            device = self.runtime.device
            replica = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None
            )
            self._replica = (key, replica)
        replica = self._replica[1]
        forward = self._compiled(replica) if module is self.model else replica
        return forward, replica.no_sync

    def begin(self, state: dict[str, Any] | None = None, origin: str = "the resume state") -> int:
        """Build optimizer (and, when resuming, everything else) for the first epoch to run.

        Args:
            state: a resume state (:func:`.resume.load_state`), or None for a new run.
            origin: the state's file, as an error names it.

        Returns:
            that epoch (0, or the one after the saved state's).
        """
        first = 0 if state is None else state["epoch"] + 1
        optimizer, summary = self.stages.start(max(0, first - 1))
        train = self.config.train
        ema = ModelEmaV3(self.model, decay=train.ema) if train.ema else None
        self.trainer = Trainer(
            self.model,
            optimizer,
            None,
            SoftTargetCrossEntropy()
            if self.mixer
            else nn.CrossEntropyLoss(label_smoothing=train.label_smoothing),
            self.runtime,
            self.runtime.grad_scaler(),
            ema=ema,
            mixup=self.mixer,
            grad_accum=train.grad_accum,
            clip_grad_norm=train.clip_grad_norm,
            max_steps=train.max_steps,
        )
        if state is not None:
            restore_session(self, state, first, origin)
        elif summary is not None:
            self._log_policy(0, summary)
        return first

    # --- one epoch -----------------------------------------------------------------------
    def run_epoch(self, epoch: int, progress=None) -> EpochResult:
        """Stage change, one pass over the training data, validation, bookkeeping."""
        started = time.perf_counter()
        trainer = self.trainer
        entry, rescale = self.stages.enter(trainer.optimizer, epoch)
        trainer.processes = self.processes
        steps = trainer.steps_per_epoch(self.train_batches)
        if entry.new_stage:
            trainer.scheduler = self.stages.scheduler(trainer.optimizer, epoch, steps)
            self.stage_steps.append(trainer.step)
            if entry.summary is not None:
                self._log_policy(epoch, entry.summary)
        elif rescale:
            self.stages.rebase(trainer.scheduler)
        cached = self._use_cache(entry.trainable, progress)
        if progress is not None:
            progress.start_epoch(self._title(epoch, cached), steps)
        with timed(progress, "training"):
            train_row = self._train(epoch, cached, progress)
            average_buffers(self.model, self.processes)  # DDP leaves each its own statistics
            _check_weights(self.model, epoch)
        val = self._validate(epoch, cached, progress)
        improved = self._update_best(epoch, val)
        seconds = time.perf_counter() - started
        rows = self._rows(epoch, train_row, val, cached, seconds)
        self.history += rows
        notes, self.notes = self.notes, []
        return EpochResult(epoch, rows, val, improved, cached, seconds, notes)

    def _use_cache(self, stage: tuple[str, ...], progress=None) -> bool:
        """Train on cached features when allowed and possible; compute them on first use.
        Whether they can be used depends only on the stage (what is frozen): asked once each."""
        setting = self.config.train.feature_cache
        if self._refusal is None or self._refusal[0] != stage:
            deterministic = self.augment is None and self.mixer is None
            self._refusal = (
                stage,
                cache_refusal(self.model, self.spec, self.entry, deterministic_input=deterministic),
            )
        refusal = self._refusal[1]
        if setting is True and refusal is not None and refusal != self._cache_note:
            self.notes.append(f"feature cache not used: {refusal}")
            self._cache_note = refusal
        if setting is False or refusal is not None:
            self.cache = None
            return False
        if self.cache is None:
            self._fill_cache(progress)
        return True

    def _fill_cache(self, progress) -> None:
        """Run the frozen body over the images once (with a bar of ``progress``, a
        :class:`~.console.RunConsole`, when given) and note how."""
        bar = nullcontext() if progress is None else progress.task("feature cache", unit="images")
        with timed(progress, "feature cache"), bar as on_step:
            self.cache = FeatureCache(
                self.model,
                self.entry,
                self.data,
                self.runtime,
                batch_size=self.config.data.eval_batch,
                processes=self.processes,
                on_step=on_step,
            )
        count = sum(len(f) for f in self.cache.features.values())
        self.notes.append(
            f"feature cache: {count:,} images through the frozen body, {self.cache.note}"
        )
        traced = self.cache.note.startswith("traced")
        self.decisions.append(
            {
                "what": "feature cache body",
                "chosen": "traced" if traced else "eager",
                "why": self.cache.note,
                "images": count,
            }
        )

    def _train(self, epoch: int, cached: bool, progress) -> dict[str, float]:
        trainer, batch_size = self.trainer, self.config.data.batch_size
        if cached:
            batches = self.cache.batches(
                "train", batch_size, shuffle=True, generator=self.generator, shard=self.shard
            )
            running = self.cache.head
            head, no_sync = self._synchronised(running)
            prepare = lambda x: x  # noqa: E731
            forward = lambda features: self.cache.logits(features, head)  # noqa: E731
        else:
            batches = self.data.loader(
                "train",
                batch_size,
                shuffle=True,
                generator=self.generator,
                augment=self.augment,
                shard=self.shard,
            )
            running = self.model
            forward, no_sync = self._synchronised(running)
            prepare = self.normalize
        on_step = None
        if progress is not None:
            on_step = lambda done, total: progress.advance(done, total)  # noqa: E731
        return train_one_epoch(
            trainer,
            batches,
            self.train_batches,
            prepare=prepare,
            forward=forward,
            module=running,
            epoch=epoch,
            on_step=on_step,
            no_sync=no_sync,
        )

    def evaluation_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA's when EMA is on."""
        return self.trainer.ema.module if self.trainer.ema is not None else self.model

    def _validate(self, epoch: int, cached: bool, progress=None) -> EvalResult:
        """The epoch's pass over the validation split. With ``progress`` (a
        :class:`~.console.RunConsole`) it is timed as ``validation`` and shows a bar of its
        own, with the time left: the epoch's training bar is closed first (one at a time)."""
        if progress is None:
            return self.evaluate("val", cached)
        progress.stop_progress()
        label = f"epoch {epoch + 1}/{self.config.train.epochs} validation"
        with progress.clock.phase("validation"), progress.task(label, unit="images") as on_step:
            return self.evaluate("val", cached, on_step=on_step)

    def evaluate(
        self,
        split: str,
        cached: bool = False,
        model: nn.Module | None = None,
        *,
        alone: bool = False,
        on_step: OnStep | None = None,
    ) -> EvalResult:
        """Metrics on ``split`` of ``model`` (default: the evaluation model), from cached
        features when ``cached`` and the cache holds the split. Every process evaluates its
        share and all get the totals (each must call this), unless ``alone``: then this
        process evaluates the whole split by itself. ``on_step(done, total)``, when given, is
        called before the first batch and after each with the images this process has
        evaluated and its share of the split (a progress bar's callback)."""
        model = model if model is not None else self.evaluation_model()
        processes = ALONE if alone else self.processes
        shard = Shard(processes.rank, processes.world)
        if (split, alone) not in self._evaluators:  # torchmetrics objects: built once
            self._evaluators[split, alone] = Evaluator(
                self.data.classes, self.runtime.device, processes
            )
        evaluator = self._evaluators[split, alone].reset()
        batch_size = self.config.data.eval_batch
        if cached and self.cache is not None and split in self.cache.features:
            head = model.get_submodule(self.entry.path)
            batches = self.cache.batches(
                split, batch_size, shuffle=False, generator=None, shard=shard
            )
            prepare, forward = (lambda x: x), head
        else:
            batches = self.data.loader(split, batch_size, shard=shard)
            prepare, forward = self.normalize, model
        if on_step is not None:
            start, stop = shard_slice(len(self.data.source.splits[split]), shard)
            batches = counting(batches, stop - start, on_step)
        return evaluate(
            batches,
            evaluator,
            prepare=prepare,
            forward=forward,
            runtime=self.runtime,
            modules=[forward],
        )

    def _update_best(self, epoch: int, val: EvalResult) -> bool:
        monitor = self.config.train.monitor
        value = val.acc1 if monitor == "val/acc1" else val.loss
        better = not self.best or (
            value > self.best["value"] if monitor == "val/acc1" else value < self.best["value"]
        )
        if better:
            self.best = {
                "value": value,
                "epoch": epoch,
                "monitor": monitor,
                "metrics": val.scalars(),
            }
            self.stale = 0
        else:
            self.stale += 1
        return better

    def should_stop(self) -> bool:
        patience = self.config.train.early_stopping
        return patience is not None and self.stale >= patience

    def _rows(self, epoch, train_row, val: EvalResult, cached, seconds) -> list[dict[str, Any]]:
        lr = self._head_lr()
        stage = self.stages.describe(epoch)
        common = {"epoch": epoch, "stage": stage, "lr": lr, "cached": cached}
        return [
            {**common, "split": "train", **train_row, "seconds": round(seconds - val.seconds, 3)},
            {
                **common,
                "split": "val",
                **val.scalars(),
                "seconds": round(val.seconds, 3),
                "per_class": val.per_class,
                "confusion": val.confusion,
            },
        ]

    def _head_lr(self) -> float:
        groups = self.trainer.optimizer.param_groups
        head = [g["lr"] for g in groups if g.get("layer_group") == "head"]
        return float(head[0] if head else groups[0]["lr"])

    def _title(self, epoch: int, cached: bool) -> str:
        suffix = ", cached features" if cached else ""
        return (
            f"epoch {epoch + 1}/{self.config.train.epochs} ({self.stages.describe(epoch)}{suffix})"
        )

    def _log_policy(self, epoch: int, summary) -> None:
        audit = audit_optimizer(self.trainer.optimizer, self.model, warn=False)
        self.policies.append(
            {"epoch": epoch, "freeze": summary.to_dict(), "groups": audit.to_dict()}
        )

    # --- saving --------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to resume after ``epoch`` (:func:`.resume.session_state`)."""
        return session_state(self, epoch)


def _check_weights(model: nn.Module, epoch: int) -> None:
    """A finite loss can still leave non-finite weights or statistics (an exploding
    BatchNorm variance); such a model must never become the saved best or last one. The
    loop checks after every step (:mod:`.loop`); this end-of-epoch check is the backstop for
    what changes outside a step (an unfreeze, a statistics refresh)."""
    bad = non_finite(changing_tensors(model))
    if bad:
        raise TrainingError(
            f"weights became non-finite during epoch {epoch + 1} ({', '.join(bad[:3])}); the run "
            "stopped and nothing of this epoch was saved. Lower optim.lr or set "
            "train.clip_grad_norm"
        )
