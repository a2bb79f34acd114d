"""``graft_into``: ``torchgraft graft`` as one library call (tests/cli/test_graft_cmd.py runs
the command itself). A real torchvision model without weights, real files in tmp_path."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from torchgraft.errors import GraftError
from torchgraft.grafting.plan_file import read_plan_file
from torchgraft.grafting.verify import VERIFY_STEPS
from torchgraft.zoo.grafts import graft_into

INTO = "torchvision:squeezenet1_1"


@pytest.fixture
def source_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    return {"net." + k: torch.randn(v.shape, generator=generator) for k, v in state.items()}


@pytest.fixture
def source_file(tmp_path, source_state):
    path = tmp_path / "colleague.pt"
    torch.save(source_state, path)
    return path


def test_a_dry_run_writes_the_plan_file_and_loads_nothing(tmp_path, source_file):
    outcome = graft_into(
        str(source_file), INTO, dry_run=True, plan_out=tmp_path / "p" / "plan.yaml"
    )
    assert outcome.dry_run
    assert outcome.refusals == []
    assert outcome.output is None
    assert outcome.plan_file == (tmp_path / "p" / "plan.yaml").resolve()
    assert read_plan_file(outcome.plan_file).mapping == outcome.plan.mapping
    assert outcome.plan.mapping["features.0.weight"] == "net.features.0.weight"


def test_the_plan_file_applied_writes_the_grafted_weights(tmp_path, source_file, source_state):
    plan = graft_into(str(source_file), INTO, dry_run=True, plan_out=tmp_path / "plan.yaml")
    out = tmp_path / "out" / "grafted.safetensors"
    outcome = graft_into(str(source_file), INTO, plan_file=plan.plan_file, output=out)
    assert not outcome.dry_run
    assert outcome.ok
    assert outcome.plan.strategy == "plan"
    assert outcome.output == out.resolve()
    written = load_file(out)
    assert sorted(written) == sorted(k.removeprefix("net.") for k in source_state)
    for key, value in source_state.items():
        assert torch.equal(written[key.removeprefix("net.")], value), key
    assert (tmp_path / "out" / "grafted.safetensors.json").is_file()


def test_a_dry_run_says_what_the_graft_would_refuse(tmp_path, source_state):
    partial = {k: v for k, v in source_state.items() if k.startswith("net.features.0.")}
    torch.save(partial, tmp_path / "partial.pt")
    outcome = graft_into(str(tmp_path / "partial.pt"), INTO, dry_run=True)
    assert outcome.refusals[0].startswith("it loads 0.1% of the target's parameter elements")
    assert outcome.refusals[0].endswith("below min_coverage=0.5")
    assert "strategy 'auto'" not in outcome.refusals[0]
    assert len(outcome.refusals) == 2  # and not exact: keys outside the head left unloaded


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"plan_file": "plan.yaml", "strategy": "exact"},
            "plan_file gives every pairing itself, so strategy would be ignored",
        ),
        ({"tolerance": 1e-3}, "tolerance applies to the output comparison with source_model"),
        ({"rules": "r.yaml", "strategy": "order"}, "rules are used only by strategy="),
    ],
    ids=["plan-and-strategy", "tolerance-alone", "rules-and-order"],
)
def test_options_that_would_be_ignored_are_refused_before_anything_is_read(options, words):
    with pytest.raises(GraftError) as refused:
        graft_into("absent.pt", INTO, **options)
    assert words in str(refused.value)


def test_reader_options_with_a_model_spec_source_are_refused():
    with pytest.raises(GraftError) as refused:
        graft_into(INTO, INTO, ema=True, trust=True)
    assert str(refused.value) == (
        "ema and trust apply to a checkpoint file, and source 'torchvision:squeezenet1_1' is "
        "a model spec (its library loads the weights); drop them or give a file"
    )


def test_the_verification_reports_its_steps_to_on_step(source_file):
    calls = []
    outcome = graft_into(
        str(source_file), INTO, source_model=INTO, on_step=lambda *call: calls.append(call)
    )
    assert outcome.verification.ok
    assert calls == [(done, VERIFY_STEPS) for done in range(VERIFY_STEPS + 1)]
