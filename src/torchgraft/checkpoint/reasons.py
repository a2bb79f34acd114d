"""The reason inside an exception's message, as one line a user can read.

torch and safetensors put paragraphs of advice around the reason a file could not be read;
a :class:`~torchgraft.errors.CheckpointError` quotes only the reason, escaped (it can hold
names from the file).
"""

from __future__ import annotations

import re

__all__ = ["short_reason"]

#: Lines of torch.load's error messages that give advice rather than the reason.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please")


def short_reason(exc: BaseException) -> str:
    """The reason inside an exception's message, without torch's paragraphs of advice."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    if match:
        return ascii(match.group(1)[:200])[1:-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    return ascii((reasons or lines or [type(exc).__name__])[0][:200])[1:-1]
