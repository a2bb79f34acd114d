"""The measure behind bench/peft.py's training-memory goal (bench/_training_memory.py).

The goal "LoRA trains in less memory than full fine-tuning" is decided by these two counts;
they are checked here against tensors of known sizes, not against the bench's own output.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "_training_memory.py"
MIB = 2**20


def harness():
    spec = importlib.util.spec_from_file_location("bench_training_memory", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_growth_is_the_highest_rise_of_live_bytes_not_their_sum():
    before = torch.ones(8 * MIB, dtype=torch.uint8)  # allocated before: never counted
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        first = torch.ones(4 * MIB, dtype=torch.uint8)
        second = torch.ones(2 * MIB, dtype=torch.uint8)
        del first, second
        third = torch.ones(1 * MIB, dtype=torch.uint8)
    growth = harness().growth_bytes(profiler)
    assert 6 * MIB <= growth < 6 * MIB + 64 * 1024
    assert before.numel() + third.numel() == 9 * MIB


def test_held_counts_weights_gradients_and_optimizer_state_each_storage_once():
    model = nn.Sequential(nn.Linear(100, 10), nn.BatchNorm1d(10))
    weights = (100 * 10 + 10 + 10 + 10) * 4  # linear, BatchNorm affine
    statistics = (10 + 10) * 4 + 8  # running mean and var (fp32), batches tracked (int64)
    optimizer = torch.optim.AdamW(model.parameters())
    measure = harness()
    assert measure.held_bytes(model, optimizer) == weights + statistics

    model(torch.randn(4, 100)).sum().backward()
    optimizer.step()
    gradients, moments, step_counts = weights, 2 * weights, 4 * 4  # a fp32 count per tensor
    expected = weights + statistics + gradients + moments + step_counts
    assert measure.held_bytes(model, optimizer) == expected

    shared = nn.Sequential(model, model)  # one module twice: its tensors count once
    assert measure.held_bytes(shared, optimizer) == expected
