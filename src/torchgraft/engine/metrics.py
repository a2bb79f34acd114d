"""Classification metrics: torchmetrics does the counting (and the reduction across
processes); this module picks the metrics and turns them into plain, JSON-ready numbers.

Several processes (``torchrun``) each see their share of a split; :meth:`Evaluator.compute`
and :meth:`RunningMetrics.compute` sum the counts over all of them, so every process reports
the same numbers, each sample counted once (the shares do not overlap, see
:func:`torchgraft.data.loaders.batch_order`).

Evaluation reports loss, top-1, top-5 (with five classes or more), macro and per-class
precision / recall / F1, and the confusion matrix. Training reports loss and top-1, counted
in tensors on the device (no per-step synchronisation), as :class:`RunningMetrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from .distributed import ALONE, Processes

__all__ = ["EvalResult", "Evaluator", "RunningMetrics"]


@dataclass
class EvalResult:
    """Metrics of one pass over a split.

    Attributes:
        loss: mean loss per sample.
        acc1, acc5: top-1 and top-5 accuracy in [0, 1] (acc5 None below five classes).
        precision, recall, f1: macro averages.
        per_class: ``{class: {"precision", "recall", "f1", "support"}}``.
        confusion: rows = true class, columns = predicted.
        count: samples seen.
    """

    loss: float
    acc1: float
    acc5: float | None
    precision: float
    recall: float
    f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    count: int = 0
    seconds: float = 0.0

    def scalars(self) -> dict[str, Any]:
        """The one-number metrics (a row of metrics.csv)."""
        return {
            "loss": self.loss,
            "acc1": self.acc1,
            "acc5": self.acc5,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "count": self.count,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.scalars(), "per_class": self.per_class, "confusion": self.confusion}


class Evaluator:
    """Accumulates logits and targets of one split; :meth:`compute` gives an :class:`EvalResult`.

    ``processes``: whose counts :meth:`compute` sums (every process must call it); the default
    counts this process's batches alone.
    """

    def __init__(
        self, classes: tuple[str, ...], device: torch.device, processes: Processes = ALONE
    ):
        self.classes, self.processes = classes, processes
        count = len(classes)
        # torchmetrics gathers its states across an initialised process group at compute();
        # an evaluation of one process's data alone must not wait for the others.
        sync = {"sync_on_compute": not processes.alone}
        metrics = {
            "acc1": MulticlassAccuracy(count, top_k=1, average="micro", **sync),
            "precision": MulticlassPrecision(count, average=None, **sync),
            "recall": MulticlassRecall(count, average=None, **sync),
            "f1": MulticlassF1Score(count, average=None, **sync),
            "confusion": MulticlassConfusionMatrix(count, **sync),
        }
        if count >= 5:
            metrics["acc5"] = MulticlassAccuracy(count, top_k=5, average="micro", **sync)
        self.metrics = MetricCollection(metrics).to(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def reset(self) -> Evaluator:
        """Forget every batch (so one evaluator serves every epoch); returns itself."""
        self.metrics.reset()
        self.loss_sum.zero_()
        self.count = 0
        return self

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Add one batch (``loss_sum``: the batch's summed, not averaged, loss)."""
        self.metrics.update(logits.float(), targets)
        self.loss_sum += loss_sum.detach().double()
        self.count += len(targets)

    def compute(self) -> EvalResult:
        values = self.metrics.compute()
        totals = self.processes.sum(
            torch.stack(
                [
                    self.loss_sum,
                    torch.tensor(
                        float(self.count), device=self.loss_sum.device, dtype=torch.float64
                    ),
                ]
            )
        )
        loss_sum, count = float(totals[0]), int(totals[1])
        support = values["confusion"].sum(dim=1)
        per_class = {
            name: {
                "precision": float(values["precision"][i]),
                "recall": float(values["recall"][i]),
                "f1": float(values["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(self.classes)
        }
        present = support > 0  # classes absent from the split do not drag macro means to 0
        return EvalResult(
            loss=loss_sum / max(1, count),
            acc1=float(values["acc1"]),
            acc5=float(values["acc5"]) if "acc5" in values else None,
            precision=_mean(values["precision"], present),
            recall=_mean(values["recall"], present),
            f1=_mean(values["f1"], present),
            per_class=per_class,
            confusion=values["confusion"].int().tolist(),
            count=count,
        )


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    chosen = values[mask]
    return float(chosen.mean()) if len(chosen) else math.nan


class RunningMetrics:
    """Training loss and top-1 over an epoch, kept on the device until read."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """``targets``: class indices, or soft targets (mixup) whose argmax counts as the label."""
        labels = targets if targets.ndim == 1 else targets.argmax(dim=1)
        self.loss_sum += loss.detach().double() * len(labels)
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.count += len(labels)

    def compute(self, processes: Processes = ALONE) -> dict[str, float]:
        """Loss and top-1 over the epoch, summed over ``processes`` (each must call it)."""
        device = self.loss_sum.device
        totals = processes.sum(
            torch.stack(
                [
                    self.loss_sum,
                    self.correct.to(torch.float64),
                    torch.tensor(float(self.count), dtype=torch.float64, device=device),
                ]
            )
        )
        count = max(1.0, float(totals[2]))
        return {"loss": float(totals[0]) / count, "acc1": float(totals[1]) / count}
