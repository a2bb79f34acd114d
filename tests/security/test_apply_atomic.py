"""A graft is all-or-nothing: a value that cannot be written, anywhere in the checkpoint,
is found before the first one is written; the error names its key; the model is bitwise
as it was.

The bad value sits at the *last* key the plan loads, so every other value has already been
computed (and, before the fix, copied) when it is met. The models are real torchvision
builders without weights; the checkpoints are their own state_dicts with other values.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

import torchgraft as tg
from torchgraft.errors import GraftError
from torchgraft.grafting.apply import apply_plan
from torchgraft.grafting.graft_plan import Action


def _model() -> torch.nn.Module:
    return torchvision.models.mobilenet_v3_small(weights=None)


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    """The model's keys and shapes with values no fresh model has (BN counters too)."""
    generator = torch.Generator().manual_seed(1234)
    state = {}
    for key, value in _model().state_dict().items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator)
            state[key] = noise.abs() + 0.5 if key.endswith("running_var") else noise
        else:
            state[key] = torch.full_like(value, 7)
    return state


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert changed == [], f"{len(changed)} tensors were written, e.g. {changed[:3]}"


LAST = "classifier.3.weight"  # the last weight of mobilenet_v3_small's state_dict order


def _bad(kind: str, value: torch.Tensor) -> torch.Tensor:
    if kind == "meta":
        return torch.empty(value.shape, device="meta")
    if kind == "sparse":
        return value.to_sparse()
    if kind == "sparse_csr":
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            return value.to_sparse_csr()
    if kind == "quantized":
        with warnings.catch_warnings():  # quantize_per_tensor's deprecation notice
            warnings.simplefilter("ignore")
            return torch.quantize_per_tensor(value, 0.05, 0, torch.qint8)
    if kind == "complex":
        return torch.complex(value, torch.ones_like(value))
    raise AssertionError(kind)


WORDS = {
    "meta": "meta tensor",
    "sparse": "sparse",
    "sparse_csr": "sparse",
    "quantized": "quantized",
    "complex": "imaginary part",
}


def test_the_bad_key_is_the_last_one_loaded(source_state):
    assert list(source_state)[-2] == LAST  # then classifier.3.bias
    assert len(source_state) > 200


@pytest.mark.parametrize("kind", list(WORDS))
def test_a_value_that_cannot_be_written_leaves_the_model_bitwise_untouched(kind, source_state):
    model = _model()
    before = _snapshot(model)
    source = dict(source_state)
    source[LAST] = _bad(kind, source[LAST])

    with pytest.raises(GraftError) as raised:
        tg.graft(model, source)

    message = str(raised.value)
    assert f"'{LAST}'" in message
    assert WORDS[kind] in message
    _assert_untouched(model, before)


def test_the_same_source_without_the_bad_value_loads_everything(source_state):
    # The control: the model and source above graft fine, so the refusal is the bad value's.
    model = _model()
    report = tg.graft(model, dict(source_state))
    assert report.coverage == 1.0
    assert torch.equal(model.state_dict()[LAST], source_state[LAST])


def test_a_fraction_into_an_integer_tensor_is_refused_a_whole_number_is_not(source_state):
    counter = next(k for k in source_state if k.endswith("num_batches_tracked"))
    model = _model()
    before = _snapshot(model)
    source = dict(source_state)
    source[counter] = torch.tensor(2.5)
    with pytest.raises(GraftError, match="fractional part") as raised:
        tg.graft(model, source)
    assert counter in str(raised.value)
    _assert_untouched(model, before)

    source[counter] = torch.tensor(3.0)  # a counter saved as float: nothing is lost
    tg.graft(model, source)
    assert model.state_dict()[counter].dtype == torch.int64
    assert int(model.state_dict()[counter]) == 3


def test_non_finite_values_are_not_refused(source_state):
    # Finiteness is the checkpoint author's business (verification and training show it).
    source = dict(source_state)
    source[LAST] = torch.full_like(source[LAST], float("nan"))
    model = _model()
    tg.graft(model, source)
    assert torch.isnan(model.state_dict()[LAST]).all()


def test_a_model_on_the_meta_device_is_refused_not_silently_left_empty(source_state):
    with torch.device("meta"):
        model = _model()
    with pytest.raises(GraftError, match="meta device"):
        tg.graft(model, dict(source_state))


def test_a_plan_whose_last_adaptation_does_not_fit_writes_nothing(source_state):
    model = _model()
    plan = tg.plan_graft(model, dict(source_state))
    entry = next(e for e in plan.entries if e.target == LAST)
    assert entry.action is Action.COPY
    source = dict(source_state)
    source[LAST] = source[LAST][:, :10]  # the plan was made for another shape
    before = _snapshot(model)
    with pytest.raises(GraftError, match=f"'{LAST}'"):
        apply_plan(model, plan, source)
    _assert_untouched(model, before)


@pytest.mark.slow
def test_cli_complex_checkpoint_exits_2_naming_the_key_and_writes_nothing(
    tmp_path: Path, subprocess_env
):
    """Before: exit 0, the imaginary part silently dropped and the result written."""
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    last = list(state)[-1]
    state[last] = torch.complex(state[last], torch.ones_like(state[last]))
    torch.save(state, tmp_path / "complex.pt")
    out = tmp_path / "out" / "grafted.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft", "graft", "complex.pt", "--into",
         "torchvision:squeezenet1_1", "-o", str(out)],
        cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("torchgraft graft: error: ")
    assert f"'{last}'" in lines[0]
    assert "imaginary part" in lines[0]
    assert "internal error" not in result.stderr
    assert not out.exists()
    assert not out.with_name(out.name + ".json").exists()  # its sidecar
