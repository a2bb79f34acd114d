"""tg.fit end to end on a hand-written CNN and real PNG files: the run directory, the saved
model, determinism, the feature cache, stages, non-finite losses, resume and Ctrl-C (in
process; the SIGKILL and SIGINT tests are in tests/cli/test_train_cmd.py)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.engine.artifacts import read_model_document
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import load_state
from torchgraft.errors import CheckpointError, ConfigError, DataError, TrainingError

QUIET = RunConsole(quiet=True)


def fit(config, *args, **kwargs):
    return tg.fit(config, *args, console=QUIET, **kwargs)


def final_weights(run_dir):
    return load_state(run_dir)["model"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_run_directory_holds_every_output(digit_folder, tmp_path):
    run = fit(
        tiny_config(digit_folder, tmp_path / "runs", output={"plots": True}, train={"epochs": 3})
    )
    names = {p.name for p in run.dir.iterdir()}
    assert {
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "model.safetensors",
        "model.json",
        "policy.json",
        "curves.png",
        "lr.png",
        "confusion.png",
        "state",
    } <= names
    lines = (run.dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,split,stage,loss,acc1")
    assert len(lines) == 1 + 3 * 2  # a train and a val row per epoch
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [0, 1, 2]
    assert set(val[0]["per_class"]) == {"0", "1", "2"}
    assert sum(map(sum, val[0]["confusion"])) == val[0]["count"] == 6
    # the resolved config reloads to the same config
    again = tg.load_config(run.dir / "config.yaml")
    assert again.train.epochs == 3
    assert again.data.source == str(digit_folder)
    assert not list(run.dir.glob(".*.tmp"))


def test_model_json_describes_the_saved_best_model(digit_folder, tmp_path):
    run = fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 3}))
    document, weights = read_model_document(run.dir, trust_run=True)
    import hashlib

    assert document["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert document["classes"] == ["0", "1", "2"]
    assert document["build"]["model"] == "handmade_models:TinyCNN"
    assert document["spec"]["preprocessing"]["input_size"] == [3, 16, 16]
    best_val = [r for r in run.history if r["split"] == "val" and r["epoch"] == run.best["epoch"]]
    assert document["metrics"]["acc1"] == pytest.approx(best_val[0]["acc1"])


def test_load_gives_the_model_back_with_classes_and_preprocessing(digit_folder, tmp_path):
    run = fit(
        tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 2, "monitor": "val/loss"})
    )
    model = tg.load(run.dir, trust_run=True)
    assert not model.training
    assert model.classes == ("0", "1", "2")
    assert model.preprocessing.input_size == (3, 16, 16)
    assert model.torchgraft_report.coverage == 1.0
    # Predicting the validation images again reproduces the accuracy recorded for the best
    # epoch: the weights, the classes and the preprocessing all came back.
    from torchgraft.engine.inference import evaluate_folder

    val_dir = tmp_path / "val_only"
    source = tg.load_config(run.dir / "config.yaml")
    from torchgraft.data.sources import discover

    split = discover(source.data.source).splits["val"]
    for path, label in zip(split.paths, split.labels, strict=True):
        target = val_dir / str(label) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    result, _ = evaluate_folder(model, val_dir)
    assert result.acc1 == pytest.approx(run.best["acc1"])
    assert result.loss == pytest.approx(run.best["loss"], rel=1e-4)


def test_a_test_split_is_evaluated_with_the_best_model(tmp_path):
    root = tmp_path / "splits"
    for split, count in (("train", 10), ("val", 3), ("test", 4)):
        write_digit_folder(root / split, per_class=count)
    run = fit(tiny_config(root, tmp_path / "runs", train={"epochs": 2}))
    assert run.test is not None
    assert run.test["count"] == 12
    saved = json.loads((run.dir / "test_metrics.json").read_text())
    assert saved["acc1"] == pytest.approx(run.test["acc1"])


def test_a_damaged_model_file_is_refused_by_load(digit_folder, tmp_path):
    run = fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}))
    path = run.dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256|hash"):
        tg.load(run.dir, trust_run=True)


def test_same_seed_gives_bitwise_equal_weights_and_another_seed_does_not(digit_folder, tmp_path):
    first = fit(tiny_config(digit_folder, tmp_path / "a", data={"augment": "light"}))
    second = fit(tiny_config(digit_folder, tmp_path / "b", data={"augment": "light"}))
    other = fit(
        tiny_config(digit_folder, tmp_path / "c", data={"augment": "light"}, train={"seed": 1})
    )
    assert_bitwise_equal(final_weights(first.dir), final_weights(second.dir))
    assert not torch.equal(
        final_weights(first.dir)["classifier.1.weight"],
        final_weights(other.dir)["classifier.1.weight"],
    )


class StopAfter(RunConsole):
    """A console that interrupts the run after ``epochs`` epochs (as a kill would)."""

    def __init__(self, epochs: int):
        super().__init__(quiet=True)
        self.left = epochs

    def end_epoch(self, summary: str) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "settings",
    [
        {"data": {"augment": "light"}, "schedule": {"name": "onecycle"}, "train": {"ema": 0.9}},
        {"freeze": {"schedule": {"kind": "two_phase", "freeze_epochs": 2}}, "weights": "file"},
    ],
    ids=["augment-onecycle-ema", "two-phase-cache"],
)
def test_resume_in_process_ends_where_an_uninterrupted_run_ends(digit_folder, tmp_path, settings):
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    if settings.pop("weights", None):
        from handmade_models import TinyCNN

        save_file(TinyCNN().state_dict(), tmp_path / "w.safetensors")
        settings["weights"] = {"source": str(tmp_path / "w.safetensors")}

    def config(out):
        made = tiny_config(digit_folder, tmp_path / out, **settings)
        made["train"]["epochs"] = 4
        if "schedule" in made["freeze"]:
            made["freeze"].pop("policy")
        return made

    whole = fit(config("whole"))
    with pytest.raises(KeyboardInterrupt):
        tg.fit(config("cut"), console=StopAfter(2))
    assert load_state(tmp_path / "cut" / "run")["epoch"] == 1
    resumed = fit(None, resume=tmp_path / "cut" / "run", trust_run=True)
    assert_bitwise_equal(final_weights(whole.dir), final_weights(resumed.dir))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]


def test_feature_cache_gives_the_same_probe_as_full_forward_passes(digit_folder, tmp_path):
    settings = {
        "freeze": {"policy": "head", "bn": "frozen"},
        "optim": {"lr": 0.1},
        "train": {"epochs": 3},
    }
    source = tmp_path / "weights.safetensors"
    from handmade_models import TinyCNN

    torch.manual_seed(3)
    save_file(TinyCNN().state_dict(), source)
    cached = fit(
        tiny_config(digit_folder, tmp_path / "cached", weights={"source": str(source)}, **settings)
    )
    settings["train"] = {**settings["train"], "feature_cache": False}
    full = fit(
        tiny_config(digit_folder, tmp_path / "full", weights={"source": str(source)}, **settings)
    )
    assert all(r["cached"] for r in cached.history)
    assert not any(r["cached"] for r in full.history)
    a, b = final_weights(cached.dir), final_weights(full.dir)
    for key in a:
        if key.startswith("classifier."):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
        else:  # the frozen body, BatchNorm statistics included, is untouched in both
            assert torch.equal(a[key], b[key]), key
    original = load_file(source)
    for key in original:
        if not key.startswith("classifier."):
            assert torch.equal(a[key], original[key]), key


def test_two_phase_caches_the_head_stage_then_trains_everything(digit_folder, tmp_path):
    source = tmp_path / "weights.safetensors"
    from handmade_models import TinyCNN

    save_file(TinyCNN().state_dict(), source)
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        weights={"source": str(source)},
        freeze={"policy": "none", "schedule": {"kind": "two_phase", "freeze_epochs": 2}},
        train={"epochs": 3},
        output={"plots": True},
    )
    config["freeze"].pop("policy")
    run = fit(config)
    train_rows = [r for r in run.history if r["split"] == "train"]
    assert [r["cached"] for r in train_rows] == [True, True, False]
    assert [r["stage"] for r in train_rows] == ["head only", "head only", "all layers"]
    policies = json.loads((run.dir / "policy.json").read_text())
    assert [p["epoch"] for p in policies] == [0, 2]
    assert policies[0]["freeze"]["trainable"] < policies[1]["freeze"]["trainable"]
    state = load_state(run.dir)
    assert len(state["stage_steps"]) == 2  # the LR scheduler was rebuilt once, at the unfreeze
    # fastai's fine_tune: after unfreezing the stem trains at lr / lr_mult of the head
    first_unfrozen = next(rates for _, rates in state["lr_trace"] if "stem" in rates)
    assert first_unfrozen["stem"] == pytest.approx(first_unfrozen["head"] / 100)


class StateWatcher(RunConsole):
    """Records, at the end of each epoch, which epoch the saved resume state holds."""

    def __init__(self, run_dir):
        super().__init__(quiet=True)
        self.run_dir, self.seen = run_dir, []

    def end_epoch(self, summary: str) -> None:
        from torchgraft.engine.resume import state_epoch

        self.seen.append(state_epoch(self.run_dir))


def test_cached_epochs_are_checkpointed_at_the_end_of_their_stage(digit_folder, tmp_path):
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        freeze={"schedule": {"kind": "two_phase", "freeze_epochs": 3}},
        train={"epochs": 4},
    )
    config["freeze"].pop("policy")
    watcher = StateWatcher(tmp_path / "runs" / "run")
    tg.fit(config, console=watcher)
    # epochs 1-2: cached, nothing saved yet; 3: the cached stage ends; 4: every epoch saves
    assert watcher.seen == [None, None, 2, 3]
    rows = (tmp_path / "runs" / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2


def test_a_non_finite_loss_stops_the_run_and_nothing_poisoned_is_saved(digit_folder, tmp_path):
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        optim={"lr": 1e12, "momentum": 0.0},
        schedule={"name": "constant"},
        train={"epochs": 2, "label_smoothing": 0.0},
    )
    with pytest.raises(TrainingError, match=r"non-finite|became (nan|inf)") as caught:
        fit(config)
    assert "epoch 1" in str(caught.value)
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "model.safetensors").exists()
    assert not (run_dir / "state" / "last.json").exists()


def test_a_nan_loss_names_the_step_and_the_last_good_epoch_stays(digit_folder, tmp_path):
    config = tiny_config(digit_folder, tmp_path / "runs", model={"name": "handmade_models:NaNAt"})
    with pytest.raises(
        TrainingError, match=r"became nan at epoch 2, step 6 \(batch 2 of the epoch\)"
    ):
        fit(config)
    run_dir = tmp_path / "runs" / "run"
    assert load_state(run_dir)["epoch"] == 0  # epoch 1's state, nothing of epoch 2
    model = tg.load(run_dir, trust_run=True)
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # only epoch 1's rows


def test_a_corrupt_image_stops_the_run_by_default_and_is_skipped_on_request(tmp_path):
    data = write_digit_folder(tmp_path / "d")
    broken = data / "1" / "broken.png"
    good = next((data / "1").glob("*.png")).read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a truncated PNG
    with pytest.raises(DataError, match=r"broken\.png") as stopped:
        fit(tiny_config(data, tmp_path / "runs"))
    assert 'run again with data.on_bad_image="skip"' in str(stopped.value)  # a config key
    run = fit(tiny_config(data, tmp_path / "runs2", data={"on_bad_image": "skip"}))
    listed = (run.dir / "bad_images.txt").read_text()
    assert "broken.png" in listed


def test_resume_refuses_a_changed_dataset(digit_folder, tmp_path):
    run = fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}))
    extra = next((digit_folder / "2").glob("*.png"))
    (digit_folder / "2" / "copy.png").write_bytes(extra.read_bytes())
    with pytest.raises(ConfigError, match="dataset changed"):
        fit(None, ["--train.epochs", "2"], resume=run.dir, trust_run=True)


def test_resume_refuses_a_changed_model_instead_of_ignoring_the_override(digit_folder, tmp_path):
    run = fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}))
    with pytest.raises(ConfigError, match=r"head\.dropout was None, now 0\.5"):
        fit(None, ["--head.dropout", "0.5"], resume=run.dir, trust_run=True)


@pytest.mark.slow
def test_torch_compile_trains_the_same_model_object(digit_folder, tmp_path):
    run = fit(
        tiny_config(digit_folder, tmp_path / "runs", model={"compile": True}, train={"epochs": 1})
    )
    assert not any(k.startswith("_orig_mod") for k in final_weights(run.dir))
    assert tg.load(run.dir, trust_run=True).classes == ("0", "1", "2")


def test_resume_of_a_finished_run_with_more_epochs_continues(digit_folder, tmp_path):
    run = fit(tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 1}))
    more = fit(None, ["--train.epochs", "2"], resume=run.dir, trust_run=True)
    assert [r["epoch"] for r in more.history if r["split"] == "val"] == [0, 1]
    assert tg.load_config(run.dir / "config.yaml").train.epochs == 2  # the run says so


def test_early_stopping_stops_after_patience(digit_folder, tmp_path):
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        optim={"lr": 1e-9},
        train={"epochs": 6, "early_stopping": 2, "monitor": "val/loss"},
    )
    run = fit(config)
    epochs = sorted({r["epoch"] for r in run.history})
    assert len(epochs) < 6


@pytest.mark.parametrize(
    "extra",
    [
        {"train": {"ema": 0.9}},
        {"train": {"mixup": 0.2, "cutmix": 1.0}},
        {"train": {"grad_accum": 2, "clip_grad_norm": 1.0}},
        {"optim": {"name": "adamw", "lr": 1e-3}, "schedule": {"name": "step", "step_epochs": 1}},
        {"freeze": {"schedule": {"kind": "progressive", "every": 1}}},
        {"freeze": {"schedule": {"kind": "unfreeze_at", "epoch": 1}}},
    ],
    ids=[
        "ema",
        "mixup-cutmix",
        "accumulation-clipping",
        "adamw-step",
        "progressive",
        "unfreeze-at",
    ],
)
def test_training_options_run_and_learn_something(digit_folder, tmp_path, extra):
    config = tiny_config(digit_folder, tmp_path / "runs", train={"epochs": 2})
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values}
        if section == "freeze":
            config["freeze"].pop("policy", None)
    run = fit(config)
    rows = [r for r in run.history if r["split"] == "train"]
    assert len(rows) == 2
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN
    assert (run.dir / "model.safetensors").exists()


def test_the_weight_check_covers_what_an_epoch_can_change():
    from torchgraft.engine.session import _check_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[1].eval()
    model[1].running_var.fill_(float("nan"))  # a pinned module's statistics: not this epoch's doing
    model[0].weight.requires_grad_(False)
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    _check_weights(model, 0)
    model[1].train()  # a BatchNorm that updates its statistics
    with pytest.raises(TrainingError, match=r"epoch 1 \(1\.running_var\)"):
        _check_weights(model, 0)
    model[1].eval()
    model[0].weight.requires_grad_(True)
    with pytest.raises(TrainingError, match=r"\(0\.weight\)"):
        _check_weights(model, 0)


class CtrlC(RunConsole):
    """Presses Ctrl-C as epoch ``at`` (1-based) starts; records the passes shown with
    :meth:`RunConsole.task` and keeps what the run printed."""

    def __init__(self, at: int):
        self.out = io.StringIO()
        super().__init__(self.out)
        self.at, self.started, self.passes = at, 0, []

    @contextlib.contextmanager
    def task(self, description, total=None, *, unit="steps"):
        calls = []
        self.passes.append((description, unit, calls))
        yield lambda done, total: calls.append((done, total))

    def start_epoch(self, description: str, steps: int) -> None:
        self.started += 1
        if self.started == self.at:
            raise KeyboardInterrupt


def two_phase(digit_folder, out):
    config = tiny_config(
        digit_folder,
        out,
        freeze={"schedule": {"kind": "two_phase", "freeze_epochs": 3}},
        train={"epochs": 4},
    )
    config["freeze"].pop("policy")
    return config


def test_ctrl_c_before_a_saved_epoch_says_there_is_nothing_to_resume(digit_folder, tmp_path):
    console = CtrlC(at=2)  # epochs 1-3 are cached: the first state is saved after epoch 3
    with pytest.raises(KeyboardInterrupt):
        tg.fit(two_phase(digit_folder, tmp_path), console=console)
    run_dir = tmp_path / "run"
    assert console.out.getvalue().splitlines()[-1] == (
        f"interrupted before an epoch was saved: nothing to resume in {run_dir}"
    )
    # the feature cache's pass was shown as it went: every image, train and val, once; then
    # epoch 1's validation pass, over the 6 validation images
    (description, unit, calls), validation = console.passes
    assert (description, unit) == ("feature cache", "images")
    assert calls[0] == (0, 36)
    assert calls[-1] == (36, 36)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert validation[:2] == ("epoch 1/4 validation", "images")
    assert validation[2][0] == (0, 6)
    assert validation[2][-1] == (6, 6)


def test_ctrl_c_prints_the_call_that_continues_the_run_and_it_does(digit_folder, tmp_path):
    console = CtrlC(at=4)
    with pytest.raises(KeyboardInterrupt):
        tg.fit(two_phase(digit_folder, tmp_path), console=console)
    run_dir = tmp_path / "run"
    # a model of one's own is rebuilt from the run's files only with trust_run
    assert console.out.getvalue().splitlines()[-1] == (
        f'interrupted; continue with: tg.fit(resume="{run_dir}", trust_run=True) '
        "(epoch 3 is the last saved)"
    )
    resumed = tg.fit(resume=str(run_dir), trust_run=True, console=QUIET)
    assert load_state(resumed.dir)["epoch"] == 3
    assert [r["epoch"] for r in resumed.history if r["split"] == "val"] == [0, 1, 2, 3]


def test_the_default_recipe_keeps_batchnorm_statistics_when_the_body_trains(digit_folder, tmp_path):
    # freeze.bn left unset under two_phase is "fixed": the body's norms keep their running
    # statistics through the all-layers stage (a freshly built TinyCNN's: mean 0, var 1),
    # while their affine weights train.
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        freeze={"schedule": {"kind": "two_phase", "freeze_epochs": 1}},
        train={"epochs": 2},
    )
    config["freeze"].pop("policy")
    run = fit(config)
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["freeze"]["bn"] == "fixed"
    state = load_state(run.dir)["model"]
    means = [k for k in state if k.endswith("running_mean")]
    assert means
    for key in means:
        assert torch.equal(state[key], torch.zeros_like(state[key])), key
        var = key.replace("running_mean", "running_var")
        assert torch.equal(state[var], torch.ones_like(state[var])), var
    weights = [k.replace("running_mean", "weight") for k in means]
    assert any(not torch.equal(state[k], torch.ones_like(state[k])) for k in weights)
