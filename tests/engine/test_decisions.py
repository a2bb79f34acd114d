"""What a run chooses is a function of the model, the data, the dtype and the device — never
of a time measured during the run — and it is recorded with its reason (decisions.json)."""

from __future__ import annotations

import json
import time

import torch
from torch import nn

import torchgraft as tg
from handmade_models import TinyCNN
from support import tiny_config
from torchgraft.engine.console import RunConsole
from torchgraft.engine.frozen_body import TRACE_WORTH_FLOPS, FeatureExtractor, forward_flops


class Slow(nn.Module):
    """A model whose every forward first waits: a busy machine, as the run sees it."""

    def __init__(self, model: nn.Module, seconds: float):
        super().__init__()
        self.model, self.seconds = model, seconds

    def forward(self, images):
        time.sleep(self.seconds)
        return self.model(images)


def _decide(model: nn.Module, total: int) -> tuple[bool, str]:
    extractor = FeatureExtractor(model, "model.classifier", total=total)
    with torch.inference_mode():
        extractor(torch.randn(8, 3, 16, 16))
    return extractor.trace, extractor.note


def test_a_slow_first_batch_does_not_change_the_trace_decision():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    small, large = 40, 10**9  # images of the pass: too few to pay for a trace; plenty
    for total in (small, large):
        assert _decide(Slow(model, 0.0), total) == _decide(Slow(model, 0.5), total)
    assert _decide(Slow(model, 0.5), small)[0] is False  # a slow batch used to make it trace
    assert "pay off" in _decide(Slow(model, 0.5), small)[1]
    assert _decide(Slow(model, 0.0), large)[0] is True


def test_the_trace_threshold_is_arithmetic_not_time():
    model = TinyCNN().eval()
    per_image = forward_flops(model, torch.randn(1, 3, 16, 16))
    assert per_image > 0
    enough = int(TRACE_WORTH_FLOPS // per_image) + 1
    wrapped = Slow(model, 0.0)
    assert _decide(wrapped, enough - 2)[0] is False
    assert _decide(wrapped, enough)[0] is True


def test_a_run_records_its_choices_with_their_reasons(digit_folder, tmp_path):
    config = tiny_config(
        digit_folder,
        tmp_path / "runs",
        freeze={"policy": "head", "bn": "frozen"},
        train={"epochs": 1, "precision": "auto"},
    )
    run = tg.fit(config, console=RunConsole(quiet=True))
    decisions = json.loads((run.dir / "decisions.json").read_text())
    chosen = {d["what"]: d for d in decisions}
    assert chosen["precision"]["chosen"] == "fp32"
    assert "bf16" in chosen["precision"]["why"]
    assert chosen["threads"]["why"] == "asked for (train.threads)"
    cache = chosen["feature cache body"]
    assert cache["chosen"] == "eager"  # 36 tiny images: too little arithmetic for a trace
    assert "pay off" in cache["why"]
    assert cache["images"] == 36
