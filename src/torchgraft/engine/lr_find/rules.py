"""The arithmetic of the learning-rate range test: the sweep's LRs, the smoothed loss, when
to stop, and the rules that read a suggestion off the curve. Plain numbers in, plain numbers
out — no torch, no numpy — so the command line checks its flags instantly and the rules are
testable on any synthetic curve.

The test (Leslie Smith, "Cyclical Learning Rates for Training Neural Networks", 2015, as
fastai's ``lr_find`` runs it): train for at most ``steps`` optimizer steps while the LR grows
exponentially from ``start_lr`` to ``end_lr``; record each step's training loss; smooth it
with an exponential moving average (``beta`` 0.98, bias-corrected, so the first points are
not pulled towards zero); stop as soon as the smoothed loss exceeds ``diverge`` (4) times
the lowest seen so far. The suggestions are read off the smoothed curve after dropping its
first ``steps // 10`` points (the average is still settling) and its last 5 (the explosion),
as fastai does:

===========  ==================================================================
``steep``    where the loss falls fastest: the steepest downward slope per unit of
             log(LR), taken between neighbouring points.
``valley``   the longest descent of the loss — a decreasing subsequence, so that noise
             does not cut it short — and the point half-way along it (fastai's default).
``minimum``  one tenth of the LR at the lowest loss (at the minimum the LR is already
             about to be too large).
===========  ==================================================================

Which one is *the* suggestion (``auto``) depends on the optimizer: ``steep`` for SGD,
``valley`` for AdamW and other adaptive optimizers — the rules that trained best in the
measurements of docs/lr-find.md (fastai, whose default optimizer is Adam, defaults to
``valley``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ConfigError
from ...wording import option

__all__ = [
    "AUTO",
    "DEFAULT_END_LR",
    "DEFAULT_START_LR",
    "DEFAULT_STEPS",
    "MAX_STEPS",
    "MIN_STEPS",
    "RULES",
    "Suggestion",
    "check_sweep",
    "choose_rule",
    "diverged",
    "smooth",
    "suggest",
    "sweep_lrs",
]

DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
DEFAULT_STEPS = 100
#: The test is a quick look, not a training run: a few hundred steps at most.
MAX_STEPS = 500
#: Fewer steps could never give a suggestion: the rules skip the last 5 points and need 3.
MIN_STEPS = 8
#: The rules, in the order they are shown.
RULES = ("steep", "valley", "minimum")
#: The rule chosen by the optimizer (see the module docstring).
AUTO = "auto"
#: Optimizer -> its ``auto`` rule; any other optimizer (Adam, AdamW, …) gets ``valley``.
AUTO_RULES = {"sgd": "steep"}
#: Points dropped at the end of the curve before the rules read it (fastai's ``[:-5]``).
SKIP_END = 5


@dataclass(frozen=True)
class Suggestion:
    """One rule's reading of the curve.

    Attributes:
        rule: ``valley``, ``steep`` or ``minimum``.
        lr: the suggested learning rate.
        index: the point of the curve the rule picked (for ``minimum``, the lowest loss, whose
            LR is ten times the suggestion).
    """

    rule: str
    lr: float
    index: int


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """Refuse a sweep that cannot run: a range that does not grow, or a step count outside
    :data:`MIN_STEPS` … :data:`MAX_STEPS`.

    Raises:
        ConfigError: naming the option at fault (``--steps`` on the command line).
    """
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{option(name, value)}: a learning rate is a number > 0")
    if start_lr >= end_lr:
        raise ConfigError(
            f"{option('start_lr', start_lr)} must be below {option('end_lr', end_lr)}: the "
            "sweep grows the LR from the one to the other"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ConfigError(
            f"{option('steps', steps)}: the sweep takes {MIN_STEPS} to {MAX_STEPS} steps "
            f"({DEFAULT_STEPS} is usual)"
        )


def choose_rule(rule: str, optimizer: str) -> tuple[str, str]:
    """The rule to suggest with, and why: ``rule`` itself, or for ``auto`` the one
    :data:`AUTO_RULES` gives ``optimizer`` (a lowercase name such as ``sgd`` or ``adamw``).

    Raises:
        ConfigError: an unknown rule.
    """
    if rule == AUTO:
        chosen = AUTO_RULES.get(optimizer, "valley")
        return chosen, f"the rule for {'SGD' if optimizer == 'sgd' else 'adaptive optimizers'}"
    if rule not in RULES:
        raise ConfigError(f"{option('rule', rule)}: choose {AUTO} or one of {', '.join(RULES)}")
    return rule, "the rule asked for"


def sweep_lrs(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """The LR of each step: ``start_lr * (end_lr / start_lr) ** (k / (steps - 1))``, so the
    first step uses ``start_lr`` and the last ``end_lr``."""
    ratio = math.log(end_lr / start_lr)
    return [start_lr * math.exp(ratio * k / (steps - 1)) for k in range(steps)]


def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """The exponential moving average of ``losses``, bias-corrected.

    ``average_k = beta * average_(k-1) + (1 - beta) * loss_k`` from ``average_0 = 0``, and the
    smoothed value is ``average_k / (1 - beta ** k)``: without the division the first values
    would sit near zero.
    """
    average, smoothed = 0.0, []
    for count, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**count))
    return smoothed


def diverged(smoothed: Sequence[float], factor: float = 4.0) -> bool:
    """Has the last smoothed loss exceeded ``factor`` times the lowest so far?"""
    return bool(smoothed) and smoothed[-1] > factor * min(smoothed)


def suggest(lrs: Sequence[float], smoothed: Sequence[float], steps: int) -> dict[str, Suggestion]:
    """Every rule's suggestion for the curve (see the module docstring).

    Args:
        lrs: the LR of each recorded step.
        smoothed: the smoothed loss of each recorded step (finite values).
        steps: the steps the sweep was to take (what ``steps // 10`` is taken of).

    Returns:
        ``{rule: Suggestion}`` in :data:`RULES` order; empty when fewer than 3 points are left
        once the ends are dropped (the loss diverged almost at once).
    """
    first, last = steps // 10, len(smoothed) - SKIP_END
    if last - first < 3:
        return {}
    xs = [math.log(lr) for lr in lrs[first:last]]
    ys = list(smoothed[first:last])
    slopes = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(ys) - 1)]
    steep = first + slopes.index(min(slopes))  # the left end of the steepest stretch
    lowest = first + ys.index(min(ys))
    valley = first + _valley(ys)
    return {
        "steep": Suggestion("steep", float(lrs[steep]), steep),
        "valley": Suggestion("valley", float(lrs[valley]), valley),
        "minimum": Suggestion("minimum", float(lrs[lowest]) / 10, lowest),
    }


def _valley(ys: Sequence[float]) -> int:
    """The middle of the longest strictly decreasing subsequence of ``ys`` (its earliest
    longest one).

    ``longest[i]`` is the length of the longest decreasing subsequence ending at ``i``; the
    valley ends where that length peaks and begins that many points earlier (its first
    element can be no earlier), and the suggestion is half-way along.
    """
    longest = [1] * len(ys)
    for i in range(1, len(ys)):
        longer = [longest[j] for j in range(i) if ys[j] > ys[i]]
        if longer:
            longest[i] = max(longer) + 1
    end = longest.index(max(longest))
    start = end - longest[end] + 1
    return start + (end - start) // 2
