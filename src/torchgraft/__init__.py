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
    AdapterError,
    AdapterMergeError,
    CheckpointError,
    ConfigError,
    DataError,
    ExportCheckError,
    ExportError,
    GraftError,
    GraftWarning,
    HeadError,
    InexactGraftError,
    MissingExtraError,
    OutputError,
    SpecError,
    TorchgraftError,
    TrainingError,
    UnsafeCheckpointError,
    UntrustedExportError,
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
    "graft": ".zoo.grafts",
    "load_rules": ".grafting",
    "plan_graft": ".zoo.grafts",
    "read_checkpoint": ".checkpoint",
    "ReaderLimits": ".checkpoint",
    "verify_graft": ".zoo.grafts",
    "Head": ".model.heads",
    "HeadReplacement": ".model.heads",
    "find_head": ".model.heads",
    "replace_head": ".model.heads",
    "LayerGroup": ".model.spec",
    "ModelSpec": ".model.spec",
    "Preprocessing": ".model.spec",
    "spec_of": ".model.anatomy",
    "replace_input_channels": ".model.stem",
    "build_model": ".zoo",
    "create_model": ".zoo",
    "list_models": ".zoo",
    "FreezeSummary": ".policies.freezing",
    "freeze": ".policies.freezing",
    "unfreeze": ".policies.freezing",
    "OptimizerAudit": ".policies.optimizer_groups",
    "audit_optimizer": ".policies.optimizer_groups",
    "check_param_groups": ".policies.optimizer_groups",
    "param_groups": ".policies.optimizer_groups",
    "load_optimizer_state_by_name": ".policies.optimizer_state",
    "optimizer_state_by_name": ".policies.optimizer_state",
    "InitSummary": ".policies.initializers",
    "init_new_layers": ".policies.initializers",
    "Progressive": ".policies.schedules",
    "TwoPhase": ".policies.schedules",
    "UnfreezeAt": ".policies.schedules",
    "schedule_from_config": ".policies.schedules",
    "Run": ".engine.fit",
    "fit": ".engine.fit",
    "lr_find": ".engine.lr_find.run",
    "RunConfig": ".engine.config.sections",
    "load_config": ".engine.config.load",
    "load": ".engine.artifacts",
    "Prediction": ".engine.inference",
    "predict": ".engine.inference",
    "export_run": ".engine.export.write",
    "load_exported": ".engine.export.load",
    "AdapterSummary": ".adapters",
    "MergeReport": ".adapters",
    "add_adapters": ".adapters",
    "adapter_config": ".adapters",
    "adapter_state_dict": ".adapters",
    "load_adapters": ".adapters",
    "merge_adapters": ".adapters",
    "read_adapters": ".adapters",
    "save_adapters": ".adapters",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .adapters import (
        AdapterSummary,
        MergeReport,
        adapter_config,
        adapter_state_dict,
        add_adapters,
        load_adapters,
        merge_adapters,
        read_adapters,
        save_adapters,
    )
    from .checkpoint import ReaderLimits, read_checkpoint
    from .engine.artifacts import load
    from .engine.config.load import RunConfig, load_config
    from .engine.export.load import load_exported
    from .engine.export.write import export_run
    from .engine.fit import Run, fit
    from .engine.inference import Prediction, predict
    from .engine.lr_find.run import lr_find
    from .grafting import (
        GraftPlan,
        GraftReport,
        RenameRules,
        Verification,
        apply_plan,
        load_rules,
    )
    from .model.anatomy import spec_of
    from .model.heads import Head, HeadReplacement, find_head, replace_head
    from .model.spec import LayerGroup, ModelSpec, Preprocessing
    from .model.stem import replace_input_channels
    from .policies.freezing import FreezeSummary, freeze, unfreeze
    from .policies.initializers import InitSummary, init_new_layers
    from .policies.optimizer_groups import (
        OptimizerAudit,
        audit_optimizer,
        check_param_groups,
        param_groups,
    )
    from .policies.optimizer_state import load_optimizer_state_by_name, optimizer_state_by_name
    from .policies.schedules import Progressive, TwoPhase, UnfreezeAt, schedule_from_config
    from .zoo import build_model, create_model, list_models
    from .zoo.grafts import graft, plan_graft, verify_graft

# Written out (not derived from _EXPORTS) so linters and readers see the names.
__all__ = [
    "AdapterError",
    "AdapterMergeError",
    "AdapterSummary",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportCheckError",
    "ExportError",
    "FreezeSummary",
    "GraftError",
    "GraftPlan",
    "GraftReport",
    "GraftWarning",
    "Head",
    "HeadError",
    "HeadReplacement",
    "InexactGraftError",
    "InitSummary",
    "LayerGroup",
    "MergeReport",
    "MissingExtraError",
    "ModelSpec",
    "OptimizerAudit",
    "OutputError",
    "Prediction",
    "Preprocessing",
    "Progressive",
    "ReaderLimits",
    "RenameRules",
    "Run",
    "RunConfig",
    "SpecError",
    "TorchgraftError",
    "TrainingError",
    "TwoPhase",
    "UnfreezeAt",
    "UnsafeCheckpointError",
    "UntrustedExportError",
    "Verification",
    "VerificationError",
    "__version__",
    "adapter_config",
    "adapter_state_dict",
    "add_adapters",
    "apply_plan",
    "audit_optimizer",
    "build_model",
    "check_param_groups",
    "create_model",
    "export_run",
    "find_head",
    "fit",
    "freeze",
    "graft",
    "init_new_layers",
    "list_models",
    "load",
    "load_adapters",
    "load_config",
    "load_exported",
    "load_optimizer_state_by_name",
    "load_rules",
    "lr_find",
    "merge_adapters",
    "optimizer_state_by_name",
    "param_groups",
    "plan_graft",
    "predict",
    "read_adapters",
    "read_checkpoint",
    "replace_head",
    "replace_input_channels",
    "save_adapters",
    "schedule_from_config",
    "spec_of",
    "unfreeze",
    "verify_graft",
]
