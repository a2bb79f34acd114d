"""Models that make an export go wrong on purpose (build specs ``trap_models:NAME``).

Each keeps TinyCNN's parameters, so a copy of a TinyCNN run whose ``model.json`` names one of
these loads the trained weights unchanged.
"""

from __future__ import annotations

import torch

from handmade_models import TinyCNN


class Noisy(TinyCNN):
    """Adds fresh noise to its logits on every call: no exported copy can reproduce them
    (a model left with dropout active at inference behaves the same way)."""

    def forward(self, x):
        out = super().forward(x)
        return out + 0.05 * torch.randn_like(out)


class Unscriptable(TinyCNN):
    """``*args`` in ``forward``: torch.jit.script refuses it, torch.jit.trace does not."""

    def forward(self, x, *args):
        return super().forward(x)
