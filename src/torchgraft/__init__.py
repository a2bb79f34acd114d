"""torchgraft: fine-tune pretrained PyTorch models correctly, and graft weights between them.

The public API, re-exported from the modules that implement it::

    import torchgraft as tg
    model = tg.create_model("torchvision:resnet50", num_classes=37, weights="DEFAULT")
    report = tg.graft(model, "colleague.ckpt", strategy="auto")
"""

from __future__ import annotations

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
from .graft import (
    GraftPlan,
    GraftReport,
    RenameRules,
    apply_plan,
    graft,
    load_rules,
    plan_graft,
    read_checkpoint,
)
from .heads import Head, HeadReplacement, find_head, replace_head
from .spec import LayerGroup, ModelSpec, Preprocessing, spec_of
from .stem import replace_input_channels
from .zoo import build_model, create_model, list_models

__version__ = "0.1.0"

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
]
