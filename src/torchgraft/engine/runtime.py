"""Where and how the numbers are computed: device, precision, threads, memory format.

``auto`` choices, each from what the hardware can do rather than a guess:

* device: the first CUDA device when there is one, else the CPU;
* precision: on a GPU, bf16 autocast where the GPU supports it (Ampere and newer), else fp16
  with a gradient scaler; on a CPU, fp32. bf16 autocast on a CPU without native bf16
  arithmetic is many times *slower* than fp32 (measured 3–34× on an AVX2 machine), and on
  one with AVX512-BF16 it was not faster either (the main job: full epochs 7.6–8.5 s in bf16
  against 5.8–6.7 s in fp32), so no CPU is known where it pays; ``train.precision: bf16``
  asks for it explicitly;
* threads: torch's default (one per physical core), which ``bench/main_job.py`` measured as
  the faster choice for training on the 2-core reference machine;
* channels-last: on for models with 2-D convolutions (measured 1.57× faster training of
  EfficientNet-Lite0 on that CPU), off otherwise.

On the CPU, runs are deterministic: the same seed gives bitwise-equal weights.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "FAST_BF16_FLAGS",
    "Runtime",
    "auto_precision",
    "cpu_flags",
    "cpu_has_fast_bf16",
    "precision_reason",
    "resolve_runtime",
    "runtime_decisions",
]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved choices of one run.

    Attributes:
        device: where the model and batches live.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast dtype; parameters stay fp32).
        threads: torch's intra-op threads.
        channels_last: inputs and model in channels-last memory format.
    """

    device: torch.device
    precision: str
    threads: int
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward pass (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> str:
        layout = ", channels-last" if self.channels_last else ""
        return f"{self.device} · {self.precision} · {self.threads} thread(s){layout}"


def resolve_runtime(
    model: nn.Module, *, device: str, precision: str, threads: int | str, channels_last: bool | str
) -> Runtime:
    """The run's device, precision, threads and memory format (see the module docstring).

    Side effects: sets torch's thread count, and on the CPU asks for deterministic algorithms.

    Raises:
        ConfigError: CUDA asked for but not available, or a precision the device cannot run.
    """
    chosen = _device(device)
    chosen_precision = _precision(precision, chosen)
    if threads != "auto":
        torch.set_num_threads(int(threads))
    if chosen.type == "cpu":
        # CPU kernels are deterministic already; this makes any that are not raise.
        torch.use_deterministic_algorithms(True, warn_only=True)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    layout = has_conv if channels_last == "auto" else bool(channels_last)
    return Runtime(chosen, chosen_precision, torch.get_num_threads(), layout)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: {name!r} asked for, but torch sees no CUDA device here "
                "(use train.device=cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def auto_precision(device: torch.device) -> str:
    """What ``precision: auto`` means on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def runtime_decisions(runtime: Runtime, train: Any, channels_last: bool | str) -> list[dict]:
    """The run's runtime choices with their reasons, for ``decisions.json``: each a function
    of the device, the model and the settings (``train``: the ``train`` config section)."""
    return [
        {
            "what": "precision",
            "chosen": runtime.precision,
            "why": precision_reason(runtime.device, runtime.precision, train.precision),
        },
        {
            "what": "channels_last",
            "chosen": runtime.channels_last,
            "why": "asked for (model.channels_last)"
            if channels_last != "auto"
            else "the model has 2-D convolutions"
            if runtime.channels_last
            else "the model has no 2-D convolutions",
        },
        {
            "what": "threads",
            "chosen": runtime.threads,
            "why": "asked for (train.threads)"
            if train.threads != "auto"
            else "torch's default: one per physical core",
        },
    ]


def precision_reason(device: torch.device, precision: str, asked: str) -> str:
    """Why a run computes in ``precision`` (for the run header and decisions.json)."""
    if asked != "auto":
        return "asked for (train.precision)"
    if device.type == "cuda":
        return "the GPU computes bf16" if precision == "bf16" else "the GPU has no bf16: fp16"
    kind = "with" if cpu_has_fast_bf16() else "without"
    return f"a CPU ({kind} native bf16): bf16 autocast measured no faster than fp32 here"


def _precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return auto_precision(device)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(FAST_BF16_FLAGS & cpu_flags())


#: CPU flags (as /proc/cpuinfo spells them) that make bf16 arithmetic native.
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none (not Linux:
    no cheap way to tell, and fp32 is the safe choice)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()
