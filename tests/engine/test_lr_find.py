"""The LR range test: its arithmetic, fastai's rules as the reference on synthetic curves,
the model and optimizer left bitwise as they were, group ratios, stops, a run's sweep built
as train builds it, and ``apply`` into YAML files."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from handmade_models import TinyCNN
from support import tiny_config, write_digit_folder
from torchgraft.engine.config.load import load_config
from torchgraft.engine.lr_find.outputs import apply_suggestion, rounded
from torchgraft.engine.lr_find.rules import Suggestion, check_sweep, smooth, suggest, sweep_lrs
from torchgraft.engine.lr_find.run import lr_find
from torchgraft.engine.lr_find.sweep import LRFinderResult, lr_range_test
from torchgraft.errors import ConfigError, TrainingError

# --------------------------------------------------------------------- fastai, the reference
# fastai/callback/schedule.py (github.com/fastai/fastai, commit 0a049e8a) and the smoothing of
# fastai/learner.py (AvgSmoothLoss, Recorder), reproduced rule for rule so that torchgraft's
# suggestions can be compared with fastai's on the same curve. Test code only.


def fastai_lr_find(lrs, raw_losses, num_it, beta=0.98):
    """Recorder + LRFinder + Learner.lr_find on a given loss sequence: the recorded
    (lrs, smoothed) and the four suggestions {valley, slide, minimum, steep}."""
    val, best = torch.tensor(0.0), float("inf")
    rec_lrs, rec_losses = [], []
    for count, (lr, loss) in enumerate(zip(lrs, raw_losses, strict=False), start=1):
        val = torch.lerp(torch.tensor(loss), val, beta)  # AvgSmoothLoss.accumulate
        smooth_loss = val / (1 - beta**count)  # AvgSmoothLoss.value
        rec_lrs.append(lr)
        rec_losses.append(smooth_loss)
        if smooth_loss < best:  # LRFinder.after_batch
            best = smooth_loss
        if smooth_loss > 4 * best:
            break
    t_lrs = torch.tensor(rec_lrs[num_it // 10 : -5])
    t_losses = torch.tensor(rec_losses[num_it // 10 : -5])
    nan_idxs = torch.nonzero(torch.isnan(t_losses.view(-1)))
    if len(nan_idxs) > 0:
        t_lrs, t_losses = t_lrs[: min(nan_idxs)], t_losses[: min(nan_idxs)]
    rules = {"valley": _valley, "slide": _slide, "minimum": _minimum, "steep": _steep}
    return len(rec_lrs), {name: rule(t_lrs, t_losses, num_it)[0] for name, rule in rules.items()}


def _valley(lrs, losses, num_it):
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), (float(lrs[idx]), losses[idx])


def _slide(lrs, losses, num_it, lr_diff=15, thresh=0.005, adjust_value=1.0):
    losses = losses.numpy()
    loss_grad = np.gradient(losses)
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = lrs[l_idx]
    while (l_idx >= -len(losses)) and (abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh):
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    suggestion = float(local_min_lr) * adjust_value
    idx = np.interp(np.log10(suggestion), np.log10(lrs.numpy()), losses)
    return suggestion, (suggestion, idx)


def _minimum(lrs, losses, num_it):
    lr_min = lrs[losses.argmin()].item()
    loss_idx = losses[min(range(len(lrs)), key=lambda i: abs(lrs[i] - lr_min))]
    return lr_min / 10, (lr_min, loss_idx)


def _steep(lrs, losses, num_it):
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    lr_steep = lrs[grads.argmin()].item()
    loss_idx = losses[min(range(len(lrs)), key=lambda i: abs(lrs[i] - lr_steep))]
    return lr_steep, (lr_steep, loss_idx)


# ------------------------------------------------------------------------ synthetic curves


def curve(lr: float, valley_at: float) -> float:
    """A range test's usual shape: a plateau, a descent centred on ``valley_at``, a minimum
    a decade and a half above it, then an explosion."""
    x, centre = math.log10(lr), math.log10(valley_at)
    return 0.3 + 2.0 / (1 + math.exp(2.5 * (x - centre))) + 8.0 * max(0.0, x - centre - 1.5) ** 2


class SyntheticLoss:
    """A criterion whose value is ``curve`` at the optimizer's current LR, plus noise: the
    real sweep (schedule, smoothing, stop) runs over a curve of known shape."""

    def __init__(self, optimizer, valley_at: float, seed: int):
        self.optimizer, self.valley_at = optimizer, valley_at
        self.noise = np.random.default_rng(seed).normal(0, 0.03, 1000)
        self.seen: list[list[float]] = []  # every group's LR at each call

    def value(self, step: int, lr: float) -> float:
        return float(np.float32(curve(lr, self.valley_at) + self.noise[step]))

    def __call__(self, logits, targets):
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.seen.append(lrs)
        return logits.sum() * 0 + self.value(len(self.seen) - 1, lrs[0])


def linear_batches(count=3):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 2, generator=generator), torch.tensor([0, 1, 0, 1]))] * count


@pytest.mark.parametrize(("valley_at", "seed"), [(1e-3, 0), (1e-3, 1), (3e-5, 2), (3e-3, 3)])
def test_suggestions_agree_with_fastai_on_the_same_curve(valley_at, seed):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = SyntheticLoss(optimizer, valley_at, seed)
    found = lr_range_test(model, optimizer, linear_batches(), criterion=loss, steps=100)
    lrs = sweep_lrs(1e-7, 10.0, 100)
    raw = [loss.value(step, lr) for step, lr in enumerate(lrs)]
    assert found.losses == raw[: len(found.losses)]  # the loss of step k was taken at lrs[k]
    recorded, reference = fastai_lr_find(lrs, raw, 100)
    assert found.stop == "diverged"
    assert len(found.lrs) == recorded  # the same stop: smoothed loss > 4 x its lowest
    mine = {rule: s.lr for rule, s in found.suggestions.items()}
    assert mine["steep"] == pytest.approx(reference["steep"], rel=1e-6)
    assert mine["minimum"] == pytest.approx(reference["minimum"], rel=1e-6)
    one_step = math.log(lrs[1] / lrs[0])
    assert abs(math.log(mine["valley"] / reference["valley"])) <= one_step * 1.001
    # every rule, ours and fastai's, lands on the descent: below the minimum, above the plateau
    for lr in [*mine.values(), *reference.values()]:
        assert valley_at / 100 < lr < valley_at * 30
    assert found.suggestion == mine["steep"]  # auto: steep for SGD
    assert found.rule == "steep"


@pytest.mark.parametrize(
    ("make", "rule", "chosen"),
    [
        (lambda p: torch.optim.SGD(p, lr=1.0), "auto", "steep"),
        (lambda p: torch.optim.AdamW(p, lr=1.0), "auto", "valley"),
        (lambda p: torch.optim.Adam(p, lr=1.0), "auto", "valley"),
        (lambda p: torch.optim.AdamW(p, lr=1.0), "minimum", "minimum"),
    ],
)
def test_the_suggestion_follows_the_optimizer_unless_a_rule_is_asked_for(make, rule, chosen):
    model = nn.Linear(2, 2)
    optimizer = make(model.parameters())
    loss = SyntheticLoss(optimizer, 1e-3, seed=0)
    found = lr_range_test(model, optimizer, linear_batches(), criterion=loss, rule=rule)
    assert found.rule == chosen
    assert found.suggestion == found.suggestions[chosen].lr
    assert ("asked for" in found.why) == (rule != "auto")


def test_an_unknown_rule_is_refused():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match='rule="slide": choose auto or one of'):
        lr_range_test(model, torch.optim.SGD(model.parameters(), lr=1.0), [], rule="slide")


# ------------------------------------------------------------------------- the arithmetic


def test_the_sweep_runs_from_start_to_end_exponentially():
    lrs = sweep_lrs(1e-4, 1.0, 5)
    assert lrs[0] == 1e-4
    assert lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in itertools.pairwise(lrs)] == pytest.approx([10.0] * 4)


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    average = 0.02 * 1.0
    average = 0.98 * average + 0.02 * 3.0
    assert smooth([1.0, 3.0]) == pytest.approx([1.0, average / (1 - 0.98**2)])


def test_a_curve_too_short_for_the_rules_suggests_nothing():
    assert suggest([1e-3] * 8, [1.0] * 8, steps=100) == {}


@pytest.mark.parametrize(
    ("start", "end", "steps", "named"),
    [(1.0, 0.1, 10, "start_lr=1.0"), (1e-3, 1e-3, 10, "start_lr"), (1e-7, 10.0, 7, "steps=7"),
     (1e-7, 10.0, 501, "steps=501"), (0.0, 1.0, 10, "start_lr=0.0"),
     (1e-7, math.inf, 10, "end_lr=inf")],
)  # fmt: skip
def test_a_sweep_that_cannot_run_is_refused_naming_the_argument(start, end, steps, named):
    with pytest.raises(ConfigError, match=named):
        check_sweep(start, end, steps)


# ------------------------------------------------------- the model and optimizer untouched


def tiny_cnn_setup():
    torch.manual_seed(0)
    model = TinyCNN()
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    optimizer = torch.optim.SGD(
        [
            {"params": body, "lr": 0.01, "name": "body"},
            {"params": model.classifier.parameters(), "lr": 0.1, "name": "head"},
        ],
        momentum=0.9,
        weight_decay=1e-4,
    )
    generator = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(4, 3, 16, 16, generator=generator), torch.tensor([0, 1, 2, 0]))
        for _ in range(3)
    ]
    return model, optimizer, batches


def train_steps(model, optimizer, batches):
    model.train()
    for inputs, targets in batches:
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()


def everything(model, optimizer):
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    state = [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
        for g in optimizer.param_groups
        for p in g["params"]
    ]
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    modes = [m.training for m in model.modules()]
    return {k: v.detach().clone() for k, v in tensors.items()}, state, settings, modes


def assert_same(before, after):
    (tensors, state, settings, modes), (tensors2, state2, settings2, modes2) = before, after
    assert tensors.keys() == tensors2.keys()
    assert all(torch.equal(tensors[k], tensors2[k]) for k in tensors)  # bitwise
    assert len(state) == len(state2)
    for one, two in zip(state, state2, strict=True):
        assert one.keys() == two.keys()
        assert all(torch.equal(one[k], two[k]) for k in one)
    assert settings == settings2
    assert modes == modes2


def test_the_model_optimizer_and_generators_are_left_bitwise_as_they_were():
    model, optimizer, batches = tiny_cnn_setup()
    train_steps(model, optimizer, batches[:2])  # momentum buffers exist, BN statistics moved
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # as an LR scheduler leaves them
    model.eval()
    model.classifier.train()  # mixed modes must come back as they were
    twin_model, twin_optimizer = copy.deepcopy((model, optimizer))
    before = everything(model, optimizer)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = random.random(), np.random.rand(), torch.rand(2)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)

    found = lr_range_test(model, optimizer, batches, steps=20, end_lr=1.0)

    assert len(found.lrs) >= 15
    assert_same(before, everything(model, optimizer))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    # and training goes on exactly as if the sweep had never happened
    torch.manual_seed(9)
    train_steps(model, optimizer, batches)
    torch.manual_seed(9)
    train_steps(twin_model, twin_optimizer, batches)
    assert_same(everything(twin_model, twin_optimizer), everything(model, optimizer))


def test_every_group_follows_the_reference_lr_by_its_own_ratio():
    model, optimizer, batches = tiny_cnn_setup()
    seen = []

    def criterion(logits, targets):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return nn.functional.cross_entropy(logits, targets)

    found = lr_range_test(
        model, optimizer, batches, criterion=criterion, start_lr=1e-5, end_lr=1e-2, steps=12
    )
    assert found.reference_lr == 0.1  # the largest group's LR (no group named "head" layer)
    assert found.stop == "end"
    assert len(found.lrs) == 12
    assert found.lrs == pytest.approx(sweep_lrs(1e-5, 1e-2, 12))
    assert [
        [b, h] for b, h in zip(found.group_lrs["body"], found.group_lrs["head"], strict=False)
    ] == seen
    assert all(body / head == pytest.approx(0.1) for body, head in seen)  # 0.01 : 0.1 holds
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.1]


def test_batches_are_cycled_and_a_one_shot_iterator_ends_the_sweep():
    model, optimizer, batches = tiny_cnn_setup()
    cycled = lr_range_test(model, optimizer, batches, end_lr=1e-3, steps=8)
    assert cycled.stop == "end"
    assert len(cycled.lrs) == 8
    once = lr_range_test(model, optimizer, iter(batches), end_lr=1e-3, steps=8)
    assert once.stop == "data"
    assert len(once.lrs) == 3


def test_a_non_finite_loss_ends_the_sweep_and_the_model_is_still_restored():
    model, optimizer, batches = tiny_cnn_setup()
    before = everything(model, optimizer)
    calls = []

    def criterion(logits, targets):
        calls.append(1)
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * math.inf if len(calls) == 30 else loss

    found = lr_range_test(model, optimizer, batches, criterion=criterion, end_lr=1e-2, steps=40)
    assert found.stop == "non-finite"
    assert len(found.lrs) == 29
    assert all(math.isfinite(v) for v in found.smoothed)
    assert found.suggestions  # 29 points are enough for the rules
    assert_same(before, everything(model, optimizer))


# --------------------------------------------------------- a run's sweep, built as train's


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_digit_folder(tmp_path_factory.mktemp("lr-find") / "digits")


@pytest.fixture(scope="module")
def run_sweep(images, tmp_path_factory):
    """One sweep of a run with a backbone LR a tenth of the head's, applied to run.yaml."""
    out = tmp_path_factory.mktemp("sweep")
    config = tiny_config(images, out / "runs", optim={"lr": 0.05, "backbone_lr": 0.005})
    found = lr_find(config, start_lr=1e-5, end_lr=10, steps=30, output=out / "found", apply=True)
    return found, out / "found"


def test_a_run_sweep_writes_its_curve_and_scales_every_group_with_optim_lr(run_sweep):
    found, folder = run_sweep
    assert found.dir == folder
    assert found.reference_lr == 0.05
    assert found.suggestion is not None
    assert found.rule == "steep"  # auto, for the run's SGD
    with (folder / "lr_find.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(found.lrs) >= 20
    for row in rows:
        lr = float(row["lr"])
        assert float(row["lr/head"]) == pytest.approx(lr)  # optim.lr is the head's
        assert float(row["lr/stem"]) == pytest.approx(lr / 10)  # backbone_lr's ratio holds
        assert float(row["smoothed"]) > 0
    document = json.loads((folder / "lr_find.json").read_text())
    assert document["suggestion"] == found.suggestion
    assert list(document["suggestions"]) == ["steep", "valley", "minimum"]
    assert (folder / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_apply_without_a_config_file_writes_a_run_yaml_train_accepts(run_sweep):
    found, folder = run_sweep
    config = load_config(folder / "run.yaml")
    assert config.optim.lr == rounded(found.suggestion)
    assert config.optim.backbone_lr == rounded(0.005 * config.optim.lr / 0.05)
    assert config.model.name == "handmade_models:TinyCNN"  # the rest of the run as it was


def test_a_run_sweep_trains_what_the_first_epoch_trains(images, tmp_path):
    config = tiny_config(images, tmp_path / "runs", freeze={"policy": "head"})
    found = lr_find(config, end_lr=1.0, steps=12, output=tmp_path / "head")
    assert set(found.group_lrs) <= {"head", "head.no_decay"}  # the frozen body is not swept


# --------------------------------------------------------------------------- apply to YAML

COMMENTED = """\
# my run
model:
  name: handmade_models:TinyCNN   # tiny
weights: {source: null}
graft:
  verify_with: null
optim:
  name: sgd
  lr: 0.05      # the head's
  backbone_lr: 0.005
  # no layer decay
data:
  source: DATA
"""


def result_with(suggestion: float) -> LRFinderResult:
    found = LRFinderResult([1e-3], [1.0], [1.0], {}, {}, "minimum", "end", 1e-7, 10, 100, 0.05)
    found.suggestions = {"minimum": Suggestion("minimum", suggestion, 0)}
    return found


def test_apply_rewrites_only_the_lrs_of_the_config_file_and_keeps_its_comments(images, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(COMMENTED.replace("DATA", str(images)))
    before = yaml.safe_load(path.read_text())
    lines = apply_suggestion(
        result_with(0.0123456), load_config(path), path, tmp_path, overrides=()
    )
    text = path.read_text()
    assert "lr: 0.0123      # the head's" in text
    assert "# my run" in text
    assert "# tiny" in text
    assert "# no layer decay" in text
    after = yaml.safe_load(text)
    before["optim"].update(lr=0.0123, backbone_lr=0.00123)  # the ratio 1:10 holds
    assert after == before
    assert load_config(path).optim.lr == 0.0123
    assert "optim.lr 0.05 → 0.0123" in lines[0]
    assert "not kept" not in lines[0]


def test_apply_adds_an_optim_section_and_rewrites_flow_style_whole(images, tmp_path):
    bare = tmp_path / "bare.yaml"
    document = tiny_config(images, tmp_path / "runs")
    del document["optim"]
    bare.write_text(yaml.safe_dump(document))
    apply_suggestion(result_with(2e-5), load_config(bare), bare, tmp_path)
    assert load_config(bare).optim.lr == 2e-5  # written as 2.0e-05: YAML reads it as a number

    flow = tmp_path / "flow.yaml"
    document = tiny_config(images, tmp_path / "runs", optim={"lr": 0.1, "name": "adamw"})
    flow.write_text(yaml.safe_dump(document, default_flow_style=True))
    lines = apply_suggestion(result_with(3e-3), load_config(flow), flow, tmp_path)
    assert "not kept" in lines[0]
    assert load_config(flow).optim.lr == 3e-3
    assert load_config(flow).optim.name == "adamw"


def test_a_sweep_that_diverges_at_once_writes_its_curve_and_says_what_to_do(images, tmp_path):
    config = tiny_config(images, tmp_path / "runs")
    with pytest.raises(TrainingError, match=r"no suggestion: the loss diverged after \d+ steps"):
        lr_find(config, start_lr=100.0, end_lr=1e6, steps=20)
    (folder,) = (tmp_path / "runs").iterdir()  # output.dir, a folder of its own
    assert folder.name.endswith("-TinyCNN-lr-find")
    assert {p.name for p in folder.iterdir()} >= {"lr_find.csv", "lr_find.json"}
    assert json.loads((folder / "lr_find.json").read_text())["suggestion"] is None
