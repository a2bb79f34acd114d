"""``torchgraft lr-find`` run as users run it: a sweep of a tiny run from its YAML file with
``--apply`` and an override, the files it leaves, and numbers refused before torch loads."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from support import TESTS, run_cli, write_digit_folder
from torchgraft.engine.config.load import load_config

CONFIG = """\
# a tiny run for the LR finder
model:
  name: handmade_models:TinyCNN   # hand-written, trains in a second
  channels_last: false
weights:
  source: null
graft:
  verify_with: null
freeze:
  policy: none
optim:
  name: sgd
  lr: 0.05          # the head's
  backbone_lr: 0.01
schedule:
  name: cosine
data:
  source: DATA
  image_size: 16
  batch_size: 8
  workers: 0
train:
  epochs: 2
  threads: 1
output:
  dir: RUNS
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep: --config run.yaml --apply, with an override and -o."""
    root = tmp_path_factory.mktemp("lr-find-cli")
    images = write_digit_folder(root / "digits")
    config = root / "run.yaml"
    config.write_text(CONFIG.replace("DATA", str(images)).replace("RUNS", str(root / "runs")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as subprocess_env, for the whole module
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    before = config.read_text()
    console_script = [shutil.which("torchgraft") or str(Path(sys.executable).parent / "torchgraft")]
    result = run_cli(
        console_script,
        "lr-find", "--config", config, "--steps", "30", "--start-lr", "1e-5",
        "--train.seed", "1", "-o", root / "found", "--apply",
        env=env, cwd=root,
    )  # fmt: skip
    return result, root, config, before, env


@pytest.mark.slow
def test_lr_find_prints_the_rules_and_writes_its_files(swept):
    result, root, _, _, _ = swept
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr
    assert "sweeping optim.lr from 1e-05 to 10 over at most 30 steps" in out
    for rule in ("steep", "valley", "minimum"):
        assert f"  {rule} " in out
    assert "← the suggestion" in out
    assert "optimizer groups follow optim.lr: ×0.2: stem" in out  # backbone_lr / lr
    folder = root / "found"
    document = json.loads((folder / "lr_find.json").read_text())
    assert document["rule"] == "steep"  # auto, for SGD
    assert document["steps"] == 30
    assert f"suggested optim.lr {document['suggestion']:.3g} (steep, the rule for SGD)" in out
    with (folder / "lr_find.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == document["recorded"] > 0
    assert {"step", "lr", "loss", "smoothed", "lr/head", "lr/stem"} <= set(rows[0])
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (root / "runs").exists()  # -o given: nothing in output.dir


@pytest.mark.slow
def test_apply_rewrites_the_config_file_that_train_then_accepts(swept, console_script):
    result, root, config, before, env = swept
    document = json.loads((root / "found" / "lr_find.json").read_text())
    lr = float(f"{document['suggestion']:.3g}")
    assert f"applied: {config}: optim.lr 0.05 → {lr:g}" in result.stdout
    assert "note: the overrides given here are not written" in result.stdout  # --train.seed
    text = config.read_text()
    assert "# the head's" in text
    assert "# hand-written, trains in a second" in text
    old, new = yaml.safe_load(before), yaml.safe_load(text)
    old["optim"].update(lr=lr, backbone_lr=float(f"{0.01 * lr / 0.05:.3g}"))
    assert new == old  # every other key as it was
    assert load_config(config, check_names=False).optim.lr == lr  # no torch import here
    printed = run_cli(console_script, "train", "--print-config", "--config", config, env=env)
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["optim"]["lr"] == lr


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr 1.0 must be below --end-lr 0.1"),
        (["--steps", "7"], "--steps 7: the sweep takes 8 to 500 steps"),
        (["--steps", "501"], "--steps 501"),
        (["--start-lr", "0"], "argument --start-lr: expected a number > 0"),
        (["--end-lr", "nan"], "argument --end-lr: expected a finite number"),
        (["--rule", "slide"], "argument --rule: invalid choice"),
    ],
)
def test_bad_numbers_exit_2_naming_the_flag(console_script, subprocess_env, tmp_path, words, named):
    result = run_cli(console_script, "lr-find", *words, env=subprocess_env, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was built or written
