"""``train.precision: auto`` on both kinds of CPU is fp32 (bf16 autocast was measured no
faster than fp32 even on a CPU with AVX512-BF16), and a run under it computes what fp32 does;
an explicit bf16 is kept, and its feature cache runs the body eagerly (a traced bf16 body
differs from the eager one).

The machines tests run on differ (some have AVX512-BF16, some only AVX2), so each test runs
both kinds: the CPU's flags are the one thing replaced (at /proc/cpuinfo's reading), the
other kind's CPU cannot exist on this machine. Every other test that compares numbers pins
fp32 (tests/support.py tiny_config).
"""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save_file

import torchgraft as tg
from support import tiny_config
from torchgraft.engine import runtime
from torchgraft.engine.console import RunConsole
from torchgraft.engine.resume import load_state

KINDS = {
    "avx512-bf16": ("fp32", {"atol": 1e-5, "rtol": 1e-4}),
    "avx2-only": ("fp32", {"atol": 1e-5, "rtol": 1e-4}),
}
#: bf16 weights differ from fp32 ones by rounding of 8-bit mantissas: 2^-8 relative, which
#: three epochs of a linear probe accumulate to ~1e-3 absolute on weights of size ~0.1.
BF16_TOLERANCE = {"atol": 3e-3, "rtol": 3e-2}


@pytest.fixture(params=sorted(KINDS))
def cpu_kind(request, monkeypatch):
    """This machine presented as the CPU kind of the parameter (its flags with the native
    bf16 ones added or taken away)."""
    flags = runtime.cpu_flags() - runtime.FAST_BF16_FLAGS
    if request.param == "avx512-bf16":
        flags |= {"avx512_bf16"}
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    runtime.cpu_has_fast_bf16.cache_clear()
    yield request.param
    runtime.cpu_has_fast_bf16.cache_clear()


def _resolved(precision: str) -> str:
    chosen = runtime.resolve_runtime(
        torch.nn.Linear(2, 2),
        device="cpu",
        precision=precision,
        threads="auto",
        channels_last=False,
    )
    return chosen.precision


def test_auto_precision_is_fp32_on_either_kind_of_cpu(cpu_kind):
    assert _resolved("auto") == KINDS[cpu_kind][0]
    assert _resolved("fp32") == "fp32"  # an explicit choice is kept on either kind
    assert _resolved("bf16") == "bf16"


def _probe_against_fp32(precision, digit_folder, tmp_path):
    """A linear probe on cached features in ``precision`` and one in fp32 with full forward
    passes: what each printed, the heads, and whether the frozen body stayed bitwise."""
    from handmade_models import TinyCNN

    source = tmp_path / "weights.safetensors"
    torch.manual_seed(3)
    save_file(TinyCNN().state_dict(), source)
    settings = {
        "weights": {"source": str(source)},
        "freeze": {"policy": "head", "bn": "frozen"},
        "optim": {"lr": 0.1},
    }
    printed = io.StringIO()
    run = tg.fit(
        tiny_config(
            digit_folder, tmp_path / "run", train={"epochs": 3, "precision": precision}, **settings
        ),
        console=RunConsole(printed),
    )
    reference = tg.fit(
        tiny_config(
            digit_folder, tmp_path / "fp32", train={"epochs": 3, "feature_cache": False}, **settings
        ),
        console=RunConsole(quiet=True),
    )
    assert all(row["cached"] for row in run.history)
    return printed.getvalue(), run, reference


def _assert_heads_agree(run, reference, tolerance):
    a, b = load_state(run.dir)["model"], load_state(reference.dir)["model"]
    for key in a:
        if key.startswith("classifier."):
            torch.testing.assert_close(a[key], b[key], **tolerance)
        else:
            assert torch.equal(a[key], b[key]), key
    accuracy = [row["acc1"] for row in run.history if row["split"] == "val"]
    expected = [row["acc1"] for row in reference.history if row["split"] == "val"]
    assert accuracy[-1] == pytest.approx(expected[-1], abs=0.1)


def test_the_auto_choice_trains_as_fp32_does(cpu_kind, digit_folder, tmp_path):
    """The head agrees with fp32's within fp32's tolerance, the frozen body (BatchNorm
    statistics included) is bitwise untouched."""
    precision, tolerance = KINDS[cpu_kind]
    printed, run, reference = _probe_against_fp32("auto", digit_folder, tmp_path)
    assert f"runtime: cpu · {precision} ·" in printed
    _assert_heads_agree(run, reference, tolerance)


def test_an_explicit_bf16_run_caches_eagerly_within_bf16s_tolerance(digit_folder, tmp_path):
    printed, run, reference = _probe_against_fp32("bf16", digit_folder, tmp_path)
    assert "runtime: cpu · bf16 ·" in printed
    assert "a traced bf16 body differs from the eager one" in printed  # no trace was tried
    _assert_heads_agree(run, reference, BF16_TOLERANCE)
