"""Every comment in configs/*.yaml is true.

Each file loads and validates; every dotted key its comments name is a config key; every
``torchgraft …`` command its comments give runs as a real subprocess: the ``--print-config``
ones as written, in a folder without the placeholder data and with an empty weight cache
and no network (printing reads neither the data nor the weights), the training ones
resolved through ``--print-config`` with their PATH filled in, and — slow — run for real,
reduced to a few steps, where the comment says they run offline. What each file's comments
promise about its recipe is checked on the resolved configuration and on what
``--print-config`` shows (:data:`PROMISES`).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from support import TESTS, run_cli, write_digit_folder
from torchgraft.engine.config.load import DEFAULT_WEIGHTS, RunConfig, load_config

CONFIGS = sorted((TESTS.parent / "configs").glob("*.yaml"))
#: ``data.source``'s default: the built-in digits, which need no placeholder.
BUILT_IN = RunConfig().data.source
#: ``#   torchgraft train --config … # what it shows``: the command, without its comment.
COMMAND = re.compile(r"^#[ \t]+(torchgraft [^#\n]*?)[ \t]*(?:#.*)?$", re.M)
#: ``data.val_fraction``, ``--model.name``: a dotted config key named in a comment.
DOTTED = re.compile(r"(?<![\w/.])([a-z_]+)\.([a-z_]+)\b")
#: What the run's environment has of the network and the weight cache: nothing.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


def comments(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if "#" in line)


def commands(path: Path) -> list[list[str]]:
    """The ``torchgraft`` commands in ``path``'s comments, as words."""
    return [shlex.split(found) for found in COMMAND.findall(path.read_text())]


@pytest.fixture
def folder(tmp_path, subprocess_env):
    """A working folder holding a copy of configs/ and nothing else (no data/), an empty
    weight cache and no network: ``(folder, env)``."""
    shutil.copytree(TESTS.parent / "configs", tmp_path / "configs")
    env = {**subprocess_env, **OFFLINE, "TORCH_HOME": str(tmp_path / "torch_home")}
    (tmp_path / "torch_home").mkdir()
    return tmp_path, env


def run(console_script, words: list[str], folder: Path, env: dict):
    assert words[0] == "torchgraft"
    return run_cli(console_script, *words[1:], env=env, cwd=folder, timeout=300)


def printed_config(stdout: str, folder: Path) -> RunConfig:
    """What ``--print-config`` printed, loaded again as a ``--config`` (comments and all)."""
    path = folder / "printed.yaml"
    path.write_text(stdout)
    return load_config(path, check_paths=False, check_names=False)


def stage_lines(stdout: str) -> list[str]:
    start = stdout.index("# planned stages")
    return stdout[start:].splitlines()


def flat(lines: list[str]) -> str:
    """Comment lines as one line of text (wrapping undone)."""
    return " ".join(" ".join(line.lstrip("#").split()) for line in lines)


# ---- what each file promises, checked --------------------------------------------------


def _image_folder(config: RunConfig, out: str) -> None:
    # "Everything trains from the first epoch (freeze.policy: none, no unfreezing schedule),
    # the pretrained backbone at a tenth of the new head's learning rate"
    assert config.freeze.schedule is None
    assert config.freeze.policy == "none"
    assert config.optim.backbone_lr == pytest.approx(config.optim.lr / 10)
    assert "no unfreezing schedule: freeze.policy 'none' holds for all 10 epochs" in out
    assert config.train.early_stopping == 3
    assert config.train.monitor == "val/acc1"


def _csv(config: RunConfig, out: str) -> None:
    # "the two-phase schedule (the first epoch the head alone, on cached features; then
    # every layer)": the default schedule; augmentation chosen from the data ("none", so
    # cached features, unless the classes are few-shot: "light").
    assert config.freeze.schedule == RunConfig().freeze.schedule
    assert config.data.augment is None
    assert config.data.on_bad_image == "skip"
    lines = stage_lines(out)
    assert re.search(r"#   epoch 1 +head × 1$", "\n".join(lines), re.M)
    assert any("epochs 2–8  all 9 groups: stem × 0.0035" in line for line in lines)


def _gradual(config: RunConfig, out: str) -> None:
    # "one more layer group joins every `every` epochs, from the head down to the stem, each
    # group at `layer_decay` times the LR of the group above it ... 18 epochs reach the stem
    # in the last two"
    schedule = config.freeze.schedule
    assert (schedule.kind, schedule.every, schedule.layer_decay) == ("progressive", 2, 0.5)
    text = "\n".join(stage_lines(out))
    assert re.search(r"#   epochs 1–2 +head × 1$", text, re.M)
    assert re.search(r"#   epochs 3–4 +neck × 0.5, head × 1$", text, re.M)
    assert "epochs 17–18  all 9 groups: stem × 0.00391" in text
    assert "never trained" not in text


def _layer_decay(config: RunConfig, out: str) -> None:
    # "everything trains from the first epoch; the head at optim.lr and every layer group
    # below at 0.75 times the LR of the group above it"
    assert config.freeze.schedule is None
    assert config.freeze.policy == "none"
    assert (config.optim.name, config.optim.layer_decay) == ("adamw", 0.75)
    assert "no unfreezing schedule" in out


def _linear_probe(config: RunConfig, out: str) -> None:
    # "only the new classifier trains; ... BatchNorm statistics included (bn: frozen). With
    # no augmentation the backbone's features are computed once and cached"
    assert (config.freeze.policy, config.freeze.bn, config.freeze.schedule) == (
        "head",
        "frozen",
        None,
    )
    assert config.data.augment == "none"
    assert config.train.feature_cache is True


def _torchvision_resnet(config: RunConfig, out: str) -> None:
    # "the first epoch the head alone, then every layer, the stem at a hundredth of the
    # head's LR", with torchvision's own DEFAULT weights
    assert (config.model.name, config.weights.source) == ("torchvision:resnet18", "DEFAULT")
    text = "\n".join(stage_lines(out))
    assert "for the 6 layer groups of torchvision:resnet18;" in flat(stage_lines(out))
    assert re.search(r"#   epoch 1 +head × 1$", text, re.M)
    assert "epochs 2–8  all 6 groups: stem × 0.0035," in text
    assert "head × 0.35" in text  # a hundredth: 0.0035 of optim.lr against the head's 0.35


def _lora(config: RunConfig, out: str) -> None:
    # "the embedded default with LoRA adapters ... rank 4"; the two-phase recipe gives the
    # adapters one rate (no hundredth for the stem: they start at zero)
    assert (config.peft.method, config.peft.rank, config.peft.targets) == ("lora", 4, "auto")
    assert config.model.name == RunConfig().model.name
    assert config.freeze.schedule.lr_mult == 1.0
    assert "epochs 2–6  all 9 groups × 0.35" in "\n".join(stage_lines(out))


#: file name -> a check of its comments' promises on (resolved config, --print-config output).
PROMISES = {
    "lora.yaml": _lora,
    "csv.yaml": _csv,
    "gradual_unfreezing.yaml": _gradual,
    "image_folder.yaml": _image_folder,
    "layer_decay.yaml": _layer_decay,
    "linear_probe.yaml": _linear_probe,
    "torchvision_resnet.yaml": _torchvision_resnet,
}
#: Files whose weights ship with torchgraft (the bundled Lite0 weights): they run offline.
BUNDLED = [
    p
    for p in CONFIGS
    if load_config(p, check_paths=False, check_names=False).weights.source == DEFAULT_WEIGHTS
]


def test_every_config_is_covered_and_says_how_to_run_it():
    assert {p.name for p in CONFIGS} == set(PROMISES)
    for path in CONFIGS:
        found = commands(path)
        assert any("--print-config" in words for words in found), path.name
        assert any("--data.source" in words for words in found), path.name
        for words in found:
            assert words[:4] == ["torchgraft", "train", "--config", f"configs/{path.name}"]
        if "runs offline" in comments(path):
            assert path in BUNDLED, path.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_config_loads_validates_and_names_only_real_keys(path):
    config = load_config(path, check_paths=False)  # the zoo knows the model, too
    # The data is the built-in digits, or a placeholder the user replaces (so --print-config
    # runs without it).
    if config.data.source != BUILT_IN:
        assert "placeholder" in path.read_text()
        assert not (TESTS.parent / config.data.source).exists()
    sections = RunConfig.model_fields
    for section, key in DOTTED.findall(comments(path)):
        if section in sections:
            fields = sections[section].annotation.model_fields
            assert key in fields, f"{path.name}: comment names {section}.{key}, no such key"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_print_config_commands_run_without_the_data_the_weights_or_the_network(
    path, folder, console_script
):
    root, env = folder
    printing = [words for words in commands(path) if "--print-config" in words]
    for words in printing:
        result = run(console_script, words, root, env)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        config = load_config(path, check_paths=False, check_names=False)
        assert yaml.safe_load(out) == config.to_dict()
        assert printed_config(out, root) == config
        # Unset settings are marked, not filled in from data nobody read.
        assert "image_size: null  # chosen from the training images" in out
        if config.data.augment is None:
            assert "augment: null  # chosen from the training images per class" in out
        if config.data.source != BUILT_IN:
            assert f"data.source '{config.data.source}' does not exist (yet)" in out
        PROMISES[path.name](config, out)
    assert not any((root / "torch_home").iterdir())  # no weights fetched or cached
    assert sorted(p.name for p in root.iterdir()) == ["configs", "printed.yaml", "torch_home"]


def filled_in(words: list[str], root: Path) -> list[str]:
    """A training command with its PATH filled in: a folder of class subfolders
    (``root/photos``), or, in ``PATH/labels.csv``, ``root``."""
    return [str(root / "photos") if w == "PATH" else w.replace("PATH", str(root)) for w in words]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_training_commands_resolve_with_their_path_filled_in(path, folder, console_script):
    root, env = folder
    (root / "photos").mkdir()
    (root / "labels.csv").write_text("path,label\nphotos/a.png,0\nphotos/b.png,1\n")
    for words in commands(path):
        if "--print-config" in words or "--data.source" not in words:
            continue  # (a run on the built-in digits: the recipes' test runs it)
        filled = filled_in(words, root)
        result = run(console_script, [*filled, "--print-config"], root, env)
        assert result.returncode == 0, result.stderr
        source = filled[filled.index("--data.source") + 1]
        assert Path(source).exists()
        assert yaml.safe_load(result.stdout)["data"]["source"] == source
        assert "does not exist" not in result.stdout


def test_the_vision_transformer_variant_of_layer_decay_uses_its_own_weights(folder, console_script):
    # layer_decay.yaml: "add --model.name timm:vit_small_patch16_224 (downloads its weights)"
    root, env = folder
    words = ["torchgraft", "train", "--config", "configs/layer_decay.yaml", "--print-config"]
    result = run(console_script, [*words, "--model.name", "timm:vit_small_patch16_224"], root, env)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["weights"]["source"] == "DEFAULT"  # timm's own: downloaded by a run
    assert document["graft"]["verify_with"] is None
    assert document["optim"]["layer_decay"] == 0.75


@pytest.mark.slow
@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_recipes_with_the_bundled_weights_run_offline_as_their_comments_say(
    path, folder, console_script
):
    root, env = folder
    data = write_digit_folder(root / "photos", per_class=8, size=32)
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (root / "broken.png").write_bytes(b"not an image")
    (root / "labels.csv").write_text("\n".join(["path,label", *rows, "broken.png,0"]) + "\n")
    (train,) = [w for w in commands(path) if "--print-config" not in w and "--data.source" in w]
    reduced = ["--train.epochs", "1", "--train.max_steps", "2", "--output.dir", "out"]
    result = run(console_script, [*filled_in(train, root), *reduced], root, env)
    assert result.returncode == 0, result.stderr
    assert "OK: same function" in result.stdout  # the graft proven, offline
    assert not any((root / "torch_home").iterdir())
    run_dir = next((root / "out").iterdir())
    config = load_config(path, check_paths=False, check_names=False)
    if config.data.augment == "none":  # linear_probe: "on cached features"
        assert re.search(r"epoch 1: .*\(cached features\)", result.stdout)
    if config.data.augment is None:  # csv: chosen from the data, 8 images a class: "light"
        assert re.search(
            r"data.augment light: \d+ training images per class \(median\), fewer than 30",
            result.stdout,
        )
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["augment"] == "light"
    if path.name == "csv.yaml":  # "list unreadable files in the run's bad_images.txt"
        assert "broken.png" in (run_dir / "bad_images.txt").read_text()
