"""torchgraft: fine-tune pretrained PyTorch models correctly, and graft weights between them.

The public API, re-exported (lazily, so the command line starts fast) from the modules that
implement it::

    import torchgraft as tg
    model = tg.create_model("torchvision:resnet50", num_classes=37, weights="DEFAULT")
    report = tg.graft(model, "colleague.ckpt", strategy="auto")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GraftError,
    HeadError,
    SpecError,
    TorchgraftError,
    UnsafeCheckpointError,
    VerificationError,
)

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "GraftPlan": ".graft",
    "GraftReport": ".graft",
    "RenameRules": ".graft",
    "Verification": ".graft",
    "apply_plan": ".graft",
    "graft": ".graft",
    "load_rules": ".graft",
    "plan_graft": ".graft",
    "read_checkpoint": ".graft",
    "verify_graft": ".graft",
    "Head": ".heads",
    "HeadReplacement": ".heads",
    "find_head": ".heads",
    "replace_head": ".heads",
    "LayerGroup": ".spec",
    "ModelSpec": ".spec",
    "Preprocessing": ".spec",
    "spec_of": ".spec",
    "replace_input_channels": ".stem",
    "build_model": ".zoo",
    "create_model": ".zoo",
    "list_models": ".zoo",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .graft import (
        GraftPlan,
        GraftReport,
        RenameRules,
        Verification,
        apply_plan,
        graft,
        load_rules,
        plan_graft,
        read_checkpoint,
        verify_graft,
    )
    from .heads import Head, HeadReplacement, find_head, replace_head
    from .spec import LayerGroup, ModelSpec, Preprocessing, spec_of
    from .stem import replace_input_channels
    from .zoo import build_model, create_model, list_models

# Written out (not derived from _EXPORTS) so linters and readers see the names.
__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GraftError",
    "GraftPlan",
    "GraftReport",
    "Head",
    "HeadError",
    "HeadReplacement",
    "LayerGroup",
    "ModelSpec",
    "Preprocessing",
    "RenameRules",
    "SpecError",
    "TorchgraftError",
    "UnsafeCheckpointError",
    "Verification",
    "VerificationError",
    "__version__",
    "apply_plan",
    "build_model",
    "create_model",
    "find_head",
    "graft",
    "list_models",
    "load_rules",
    "plan_graft",
    "read_checkpoint",
    "replace_head",
    "replace_input_channels",
    "spec_of",
    "verify_graft",
]
