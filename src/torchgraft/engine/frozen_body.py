"""The frozen body as a fast feature extractor, for the feature cache's one pass.

A frozen body in inference is a constant function, so it can be compiled as one: on a CPU it
is traced and frozen with TorchScript (``torch.jit.trace`` + ``torch.jit.freeze``), which
folds every BatchNorm into the convolution before it and fuses the activations: measured
about 2× faster than eager mode for EfficientNet-Lite0 at 64 px on the reference CPU, with
TorchScript's simple executor (the default profiling executor spends its first runs
profiling; the setting is switched only around these calls and restored). Tracing and
freezing cost about a second there, so the extractor traces only when the whole pass does at
least :data:`TRACE_WORTH_FLOPS` of arithmetic: the forward FLOPs of one image (counted by
torch's FLOP counter on the first image, not timed) times the images of the pass. The
decision is a function of the model, the image size and the number of images — never of how
long something took, which would make a run's path depend on how busy the machine is.
``torch.compile`` would fuse too, but its compile time (tens of seconds on a CPU) is longer
than most passes.

Exact, or not used: the traced extractor is checked against the eager one on the first batch
of every input shape it meets (largest relative difference ≤ :data:`TOLERANCE`); a model that
cannot be traced, or whose traced features differ, is run eagerly — the note says why.
The caller traces in fp32 only: a traced bf16 body differs from the eager one far beyond the
tolerance (0.14–0.17 measured), so trying would only cost the trace.
TorchScript is deprecated in recent torch; when it goes, this falls back to eager by itself.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..model.passes import hooked

__all__ = ["TOLERANCE", "TRACE_WORTH_FLOPS", "BodyFeatures", "FeatureExtractor", "forward_flops"]

#: Largest accepted relative difference between traced and eager features (float32).
TOLERANCE = 1e-4
#: Trace only when the whole pass does at least this much arithmetic (forward FLOPs):
#: tracing and freezing cost about a second on the reference CPU, where the eager body runs
#: at roughly 25 GFLOP/s — below ~2 s of eager work the trace does not pay for itself.
TRACE_WORTH_FLOPS = 50e9


class BodyFeatures(nn.Module):
    """The features entering the head (module ``entry``): the model run up to its head."""

    def __init__(self, model: nn.Module, entry: str):
        super().__init__()
        self.model, self.entry = model, entry

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        head = self.model.get_submodule(self.entry)
        # Hooks only: the modes (eval, for the feature cache) and autograd are the caller's.
        with hooked([(head, "pre", lambda _m, args: captured.append(args[0]))]):
            self.model(images)
        return captured[0]


class FeatureExtractor:
    """``images -> features``: traced and frozen when that is exact (see the module docstring)."""

    def __init__(self, model: nn.Module, entry: str, *, trace: bool = True, total: int = 0):
        self.eager = BodyFeatures(model, entry)
        self.trace = trace
        self.traced: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.checked: set[tuple[int, ...]] = set()
        self.note = "eager"
        self.total = total  # images of the whole pass (0: unknown, trace when allowed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.trace:
            return self.eager(images)
        shape = tuple(images.shape)
        if shape in self.checked:
            with _simple_executor():
                return self.traced(images)
        want = self.eager(images)
        if self.traced is None:
            work = forward_flops(self.eager, images[:1]) * self.total
            if self.total and work < TRACE_WORTH_FLOPS:
                self.trace = False
                self.note = (
                    f"eager ({work / 1e9:.3g} GFLOP for the whole pass, under "
                    f"{TRACE_WORTH_FLOPS / 1e9:.0f}: too little for tracing to pay off)"
                )
                return want
            # Traced on two images (tracing cost grows with the batch), checked on the full one.
            self.traced = self._build(images[:2])
        if self.traced is not None and self._agrees(self._run_traced(images), want):
            self.checked.add(shape)
        else:
            self.trace = False
        return want

    def _run_traced(self, images: torch.Tensor) -> torch.Tensor:
        with _simple_executor():
            return self.traced(images)

    def _build(self, example: torch.Tensor):
        try:
            with warnings.catch_warnings(), torch.no_grad(), _simple_executor():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and trace warnings
                traced = torch.jit.trace(self.eager, example, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
        except Exception as exc:  # any model code can fail to trace
            self.note = f"eager (tracing failed: {type(exc).__name__})"
            self.trace = False
            return None
        self.note = "traced and frozen (BatchNorm folded)"
        return frozen

    def _agrees(self, got: torch.Tensor, want: torch.Tensor) -> bool:
        if got.shape != want.shape:
            self.note = "eager (traced features had another shape)"
            return False
        scale = want.abs().max().clamp_min(1e-12)
        difference = float((got - want).abs().max() / scale)
        if difference > TOLERANCE:
            self.note = f"eager (traced features differed by {difference:.1e})"
            return False
        return True


@contextlib.contextmanager
def _simple_executor():
    """TorchScript's simple executor for the calls inside, the previous setting restored."""
    executor = torch._C._jit_set_profiling_executor(False)
    profiling = torch._C._jit_set_profiling_mode(False)
    try:
        yield
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(profiling)


def forward_flops(function: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> int:
    """The floating-point operations of ``function`` on ``image`` (a batch of one), as
    torch's FLOP counter counts them (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        function(image)
    return counter.get_total_flops()
