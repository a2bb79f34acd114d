"""Typed errors: every user-facing failure is one of these.

Each error says what was found, what was expected and what to do. The CLI turns them into
one line on stderr; ``exit_code`` tells it which status to use (2: bad input, 1: a failure
of the operation itself).
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AdapterMergeError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportCheckError",
    "ExportError",
    "GraftError",
    "GraftWarning",
    "HeadError",
    "InexactGraftError",
    "MissingExtraError",
    "OutputError",
    "SpecError",
    "TorchgraftError",
    "TrainingError",
    "UnsafeCheckpointError",
    "UntrustedExportError",
    "UntrustedRunError",
    "VerificationError",
]


class TorchgraftError(Exception):
    """Base class of every error torchgraft raises on purpose."""

    exit_code = 2


class SpecError(TorchgraftError, ValueError):
    """A model spec, weights name or model anatomy request that cannot be satisfied."""


class HeadError(TorchgraftError, ValueError):
    """The classifier head cannot be found or replaced as asked."""


class CheckpointError(TorchgraftError, ValueError):
    """A checkpoint file that cannot be read: missing, empty, truncated, corrupt or unknown."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that wants globals outside the safe allow-list; never retried unsafely."""

    def __init__(self, message: str, globals_wanted: list[str]):
        super().__init__(message)
        self.globals_wanted = globals_wanted


class UntrustedExportError(CheckpointError):
    """An exported program (TorchScript, ``torch.export``) that would run code when loaded,
    refused because the caller did not opt in (``trust=True``, ``--trust-export``). Raised
    before the file reaches its loader; its sha256 matching the sidecar proves integrity, not
    trust."""


class UntrustedRunError(CheckpointError):
    """A record read from a file (a run's ``model.json``, the record inside a
    ``model.safetensors``, a resume state) names a model builder that is not ``torchvision:``
    or ``timm:``: building it would import and run code the file chose. Refused unless the
    caller opts in (``trust=True``, ``--trust-run``); raised before anything is imported."""


class GraftError(TorchgraftError, ValueError):
    """Weights that cannot be matched or loaded into the target as asked."""


class InexactGraftError(GraftError):
    """A graft that would not be exact: target keys outside the new head left unloaded, or
    paired on evidence that does not prove the pairing. Nothing was loaded."""

    exit_code = 1


class GraftWarning(UserWarning):
    """A graft accepted on purpose although not everything in it is proven."""


class VerificationError(GraftError):
    """A graft that changed the function the source model computes.

    A :class:`GraftError` (``except GraftError`` catches every graft that failed), but a failed
    operation rather than bad input: exit status 1.
    """

    exit_code = 1


class AdapterError(TorchgraftError, ValueError):
    """Adapters (LoRA/DoRA) that cannot be added, loaded or merged as asked: a bad setting, a
    target that matches nothing or cannot carry an adapter, a model adapted twice or not at
    all, adapter tensors that do not fit the model."""


class AdapterMergeError(AdapterError):
    """Merged weights that do not compute what the adapted model computed (the measured
    difference is in the message and in ``difference``). A failed operation, exit status 1;
    the model was put back as it was before the merge, adapters and all."""

    exit_code = 1

    def __init__(self, message: str, difference: float):
        super().__init__(message)
        self.difference = difference


class ConfigError(TorchgraftError, ValueError):
    """An invalid run configuration (every problem found is listed)."""


class OutputError(TorchgraftError, OSError):
    """A file or folder torchgraft was asked to write cannot be written (a full disk, a
    read-only folder, a file-size limit). What was saved before is intact."""

    def __str__(self) -> str:  # OSError would print its args tuple
        return str(self.args[0]) if self.args else ""


class DataError(TorchgraftError, ValueError):
    """A dataset that cannot be read as asked."""


class TrainingError(TorchgraftError):
    """Training itself failed (a non-finite loss): the run stops, its last good state kept."""

    exit_code = 1


class MissingExtraError(TorchgraftError, ImportError):
    """An optional dependency the request needs is not installed (exit status 2)."""


class ExportError(TorchgraftError):
    """An export failed as an operation (exit status 1): no method of the format could
    convert the model (nothing was written; a previous export at the same path is kept), or
    an exported model that matches its sidecar failed inside its runtime when run."""

    exit_code = 1


class ExportCheckError(ExportError):
    """The exported model ran but its outputs differ from the eager model's by more than
    the tolerance (exit status 1); the message gives the measured difference."""
