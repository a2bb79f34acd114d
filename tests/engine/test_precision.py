"""``train.precision: auto`` on both kinds of CPU: bf16 where the CPU computes it natively
(AVX512-BF16 or AMX), fp32 elsewhere — and a run under each choice computes what fp32 does
within that precision's tolerance.

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
    # bf16 weights differ from fp32 ones by rounding of 8-bit mantissas: 2^-8 relative, which
    # three epochs of a linear probe accumulate to ~1e-3 absolute on weights of size ~0.1.
    "avx512-bf16": ("bf16", {"atol": 3e-3, "rtol": 3e-2}),
    "avx2-only": ("fp32", {"atol": 1e-5, "rtol": 1e-4}),
}


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


def test_auto_precision_follows_the_cpus_bf16_arithmetic(cpu_kind):
    chosen = runtime.resolve_runtime(
        torch.nn.Linear(2, 2), device="cpu", precision="auto", threads="auto", channels_last=False
    )
    assert chosen.precision == KINDS[cpu_kind][0]
    assert (
        runtime.resolve_runtime(
            torch.nn.Linear(2, 2),
            device="cpu",
            precision="fp32",
            threads="auto",
            channels_last=False,
        ).precision
        == "fp32"
    )  # an explicit choice is kept on either kind


def test_the_auto_choice_trains_as_fp32_does_within_its_tolerance(cpu_kind, digit_folder, tmp_path):
    """A linear probe on cached features under the auto choice against one in fp32 with full
    forward passes: the head agrees within the chosen precision's tolerance, the frozen body
    (BatchNorm statistics included) is bitwise untouched in both."""
    from handmade_models import TinyCNN

    precision, tolerance = KINDS[cpu_kind]
    source = tmp_path / "weights.safetensors"
    torch.manual_seed(3)
    save_file(TinyCNN().state_dict(), source)
    settings = {
        "weights": {"source": str(source)},
        "freeze": {"policy": "head", "bn": "frozen"},
        "optim": {"lr": 0.1},
    }
    printed = io.StringIO()
    auto = tg.fit(
        tiny_config(
            digit_folder, tmp_path / "auto", train={"epochs": 3, "precision": "auto"}, **settings
        ),
        console=RunConsole(printed),
    )
    assert f"runtime: cpu · {precision} ·" in printed.getvalue()
    reference = tg.fit(
        tiny_config(
            digit_folder, tmp_path / "fp32", train={"epochs": 3, "feature_cache": False}, **settings
        ),
        console=RunConsole(quiet=True),
    )
    assert all(row["cached"] for row in auto.history)
    a, b = load_state(auto.dir)["model"], load_state(reference.dir)["model"]
    for key in a:
        if key.startswith("classifier."):
            torch.testing.assert_close(a[key], b[key], **tolerance)
        else:
            assert torch.equal(a[key], b[key]), key
    accuracy = [row["acc1"] for row in auto.history if row["split"] == "val"]
    expected = [row["acc1"] for row in reference.history if row["split"] == "val"]
    assert accuracy[-1] == pytest.approx(expected[-1], abs=0.1)
