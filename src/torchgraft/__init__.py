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
    "GraftPlan": ".grafting",
    "GraftReport": ".grafting",
    "RenameRules": ".grafting",
    "Verification": ".grafting",
    "apply_plan": ".grafting",
    "graft": ".grafting",
    "load_rules": ".grafting",
    "plan_graft": ".grafting",
    "read_checkpoint": ".grafting",
    "verify_graft": ".grafting",
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
    "FreezeSummary": ".freezing",
    "freeze": ".freezing",
    "unfreeze": ".freezing",
    "OptimizerAudit": ".optimizer_groups",
    "audit_optimizer": ".optimizer_groups",
    "check_param_groups": ".optimizer_groups",
    "param_groups": ".optimizer_groups",
    "load_optimizer_state_by_name": ".optimizer_state",
    "optimizer_state_by_name": ".optimizer_state",
    "InitSummary": ".initializers",
    "init_new_layers": ".initializers",
    "Progressive": ".schedules",
    "TwoPhase": ".schedules",
    "UnfreezeAt": ".schedules",
    "schedule_from_config": ".schedules",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .freezing import FreezeSummary, freeze, unfreeze
    from .grafting import (
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
    from .initializers import InitSummary, init_new_layers
    from .optimizer_groups import OptimizerAudit, audit_optimizer, check_param_groups, param_groups
    from .optimizer_state import load_optimizer_state_by_name, optimizer_state_by_name
    from .schedules import Progressive, TwoPhase, UnfreezeAt, schedule_from_config
    from .spec import LayerGroup, ModelSpec, Preprocessing, spec_of
    from .stem import replace_input_channels
    from .zoo import build_model, create_model, list_models

# Written out (not derived from _EXPORTS) so linters and readers see the names.
__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FreezeSummary",
    "GraftError",
    "GraftPlan",
    "GraftReport",
    "Head",
    "HeadError",
    "HeadReplacement",
    "InitSummary",
    "LayerGroup",
    "ModelSpec",
    "OptimizerAudit",
    "Preprocessing",
    "Progressive",
    "RenameRules",
    "SpecError",
    "TorchgraftError",
    "TwoPhase",
    "UnfreezeAt",
    "UnsafeCheckpointError",
    "Verification",
    "VerificationError",
    "__version__",
    "apply_plan",
    "audit_optimizer",
    "build_model",
    "check_param_groups",
    "create_model",
    "find_head",
    "freeze",
    "graft",
    "init_new_layers",
    "list_models",
    "load_optimizer_state_by_name",
    "load_rules",
    "optimizer_state_by_name",
    "param_groups",
    "plan_graft",
    "read_checkpoint",
    "replace_head",
    "replace_input_channels",
    "schedule_from_config",
    "spec_of",
    "unfreeze",
    "verify_graft",
]
