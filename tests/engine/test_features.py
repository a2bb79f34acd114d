"""The feature cache's pieces: where features are taken, when caching is refused, the
traced extractor that is used only when it is exact, and the pass's progress."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from torch import nn

import torchgraft as tg
from handmade_models import TinyCNN
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.engine.features import FeatureCache, cache_refusal, find_head_entry
from torchgraft.engine.frozen_body import BodyFeatures, FeatureExtractor
from torchgraft.engine.runtime import Runtime
from torchgraft.model.spec import Preprocessing


def test_head_entry_climbs_to_a_container_of_dropout_and_linear():
    model = torchvision.models.efficientnet_b0(num_classes=5)
    entry = find_head_entry(model, tg.spec_of(model))
    assert entry.path == "classifier"  # Sequential(Dropout, Linear): the dropout still runs
    assert entry.dropout == 0.0


def test_timm_drop_rate_is_applied_to_cached_features():
    model = tg.create_model("timm:tf_efficientnet_lite0", num_classes=4, drop_rate=0.2)
    entry = find_head_entry(model, tg.spec_of(model))
    assert entry.path == "classifier"
    assert entry.dropout == pytest.approx(0.2)  # timm's forward_head dropout


def test_resnet_head_entry_is_the_linear_itself():
    model = torchvision.models.resnet18(num_classes=3)
    assert find_head_entry(model, tg.spec_of(model)).path == "fc"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda m: tg.freeze(m, "none"), "more than the head trains"),
        (lambda m: tg.freeze(m, "all"), "nothing trains"),
        (lambda m: tg.freeze(m, "head", bn="stats"), "more than the head trains"),
    ],
    ids=["everything-trains", "nothing-trains", "bn-affine-trains"],
)
def test_cache_is_refused_when_more_than_the_head_trains(setup, reason):
    model = TinyCNN()
    setup(model)
    spec = tg.spec_of(model)
    refusal = cache_refusal(model, spec, find_head_entry(model, spec), deterministic_input=True)
    assert reason in refusal


def test_cache_is_refused_for_random_input_and_random_layers():
    model = TinyCNN()
    tg.freeze(model, "head")
    spec = tg.spec_of(model)
    entry = find_head_entry(model, spec)
    assert cache_refusal(model, spec, entry, deterministic_input=True) is None
    assert "random" in cache_refusal(model, spec, entry, deterministic_input=False)
    model.block1.append(nn.Dropout(0.5))  # dropout inside the frozen body
    assert "block1.3" in cache_refusal(model, spec, entry, deterministic_input=True)


def test_traced_extractor_gives_the_eager_features():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=3).eval()
    extractor = FeatureExtractor(model, "classifier")  # total unknown: traces
    images = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        first = extractor(images)  # checked against eager
        second = extractor(images)  # now traced
        eager = BodyFeatures(model, "classifier")(images)
    assert extractor.note.startswith("traced")
    assert first.shape == (4, 1280)
    torch.testing.assert_close(second, eager, atol=1e-4, rtol=1e-4)


def test_a_small_pass_is_not_worth_tracing():
    model = TinyCNN().eval()
    extractor = FeatureExtractor(model, "classifier", total=40)
    with torch.inference_mode():
        extractor(torch.randn(8, 3, 16, 16))
    assert not extractor.trace
    assert "pay off" in extractor.note


class Branchy(nn.Module):
    """Data-dependent control flow: a trace records one branch only."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.body(x)
        h = h * 10 if float(h.sum()) > 0 else h
        return self.head(h)


def test_a_trace_that_would_be_wrong_is_not_used():
    model = Branchy().eval()
    extractor = FeatureExtractor(model, "head")
    positive = torch.full((2, 4), 5.0)
    with torch.no_grad():
        model.body.weight.fill_(0.1)
        model.body.bias.zero_()
        extractor(positive)  # traced on the positive branch
        negative = -positive
        got = extractor(negative[:1])  # another shape: checked again, and the trace is wrong
        want = BodyFeatures(model, "head")(negative[:1])
    assert torch.equal(got, want)
    assert not extractor.trace
    assert extractor.note.startswith("eager")


def test_the_cache_pass_reports_its_images_and_computes_the_same_features(digit_folder):
    model = torchvision.models.resnet18(num_classes=3).eval()  # weights=None: random
    data = prepare_data(discover(str(digit_folder)), Preprocessing(input_size=(3, 16, 16)))
    entry = find_head_entry(model, tg.spec_of(model))
    cpu = Runtime(torch.device("cpu"), "fp32", 1, False)
    calls = []
    watched = FeatureCache(
        model, entry, data, cpu, batch_size=8, on_step=lambda *call: calls.append(call)
    )
    plain = FeatureCache(model, entry, data, cpu, batch_size=8)
    train, val = (len(data.source.splits[name]) for name in ("train", "val"))
    assert {total for _, total in calls} == {train + val}
    done = [d for d, _ in calls]
    assert (done[0], done[-1]) == (0, train + val)  # before the first batch, after the last
    assert done == sorted(set(done))  # rising at every call
    assert len(calls) == 1 + math.ceil(train / 8) + math.ceil(val / 8)  # one call a batch
    for split in ("train", "val"):  # watching changes nothing
        assert torch.equal(watched.features[split], plain.features[split])
