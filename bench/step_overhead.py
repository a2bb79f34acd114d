"""What the engine's training step costs beyond a hand-written PyTorch loop, side by side.

Run: ``python bench/step_overhead.py [--rounds 16] [--steps 6]`` (writes the "Training step
overhead" section of docs/benchmarks.md).

One model (the embedded default: tf_efficientnet_lite0 with the grafted Lite0 weights, 10
classes, every layer training, channels-last), one batch (32 uint8 images of 64 px), one
process. The hand-written loop normalises the batch, runs forward, cross-entropy with label
smoothing, backward, SGD (momentum, Nesterov, weight decay) step, zero_grad — what a user
writes. The engine runs its own `train_one_epoch` over the same batch: named parameter
groups, LR scheduler step, EMA off, finite-loss check, running metrics, LR trace. The two
alternate in rounds (hand then engine, engine then hand, …) so that machine noise hits
both; the figure is the median of the per-round ratios. Bar (issue 7): ≤ 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_section  # noqa: E402
from torchgraft.data.transforms import Normalizer, resolve_preprocessing  # noqa: E402
from torchgraft.engine.config.load import load_config  # noqa: E402
from torchgraft.engine.loop import Trainer, train_one_epoch  # noqa: E402
from torchgraft.engine.runtime import resolve_runtime  # noqa: E402
from torchgraft.engine.setup import build_run_model  # noqa: E402
from torchgraft.engine.stages import Stages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    options = parser.parse_args()
    config = load_config(
        None, {"freeze.policy": "none", "freeze.bn": "train", "schedule.name": "cosine"}
    )
    setup = build_run_model(config, tuple(str(d) for d in range(10)))
    model = setup.model
    runtime = resolve_runtime(
        model, device="cpu", precision="auto", threads="auto", channels_last="auto"
    )
    model.to(memory_format=runtime.memory_format).train()
    pre = resolve_preprocessing(setup.spec.preprocessing, image_size=64, crop_pct=1.0)
    normalize = Normalizer(pre, runtime.device, runtime.memory_format)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)

    stages = Stages(config, model, setup.spec)
    optimizer, _ = stages.start(0)
    trainer = Trainer(
        model,
        optimizer,
        None,
        torch.nn.CrossEntropyLoss(label_smoothing=0.1),
        runtime,
        runtime.grad_scaler(),
    )
    trainer.scheduler = stages.scheduler(optimizer, 0, options.rounds * options.steps + 100)
    hand_optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    mean, std = normalize.mean, normalize.std

    def hand(steps: int) -> None:
        for _ in range(steps):
            inputs = ((images.float() - mean) / std).contiguous(memory_format=runtime.memory_format)
            loss = F.cross_entropy(model(inputs), labels, label_smoothing=0.1)
            hand_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            hand_optimizer.step()

    def engine(steps: int) -> None:
        batches = [(images, labels)] * steps
        train_one_epoch(trainer, batches, steps, prepare=normalize, forward=model, epoch=0)

    hand(3)
    engine(3)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"hand": [], "engine": []}
    ratios = []
    for round_ in range(options.rounds):
        # ABBA: alternate which loop goes first, so a drift of the machine's speed within a
        # round does not favour either; each round gives one ratio.
        order = (("hand", hand), ("engine", engine))
        per_round = {}
        for name, function in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            function(options.steps)
            per_round[name] = (time.perf_counter() - started) / options.steps
            times[name].append(per_round[name])
        ratios.append(per_round["engine"] / per_round["hand"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    print({k: f"{v * 1000:.1f} ms" for k, v in medians.items()}, f"ratio {ratio:.3f}", quartiles)
    body = [
        "One full fine-tuning step of the embedded default model (batch 32 × 3 × 64 × 64, every",
        f"layer training, {runtime.describe()}): the engine's `train_one_epoch` against a",
        f"hand-written loop, {options.rounds} rounds of {options.steps} steps each, the order",
        "alternating per round; the ratio is the median of the per-round ratios.",
        "",
        "| loop | median step | min step |",
        "|---|---|---|",
        f"| hand-written PyTorch | {medians['hand'] * 1000:.1f} ms | {min(times['hand']) * 1000:.1f} ms |",
        f"| torchgraft engine | {medians['engine'] * 1000:.1f} ms | {min(times['engine']) * 1000:.1f} ms |",
        "",
        f"Ratio engine / hand: **{ratio:.3f}** (quartiles {quartiles[0]:.3f}–{quartiles[2]:.3f}; "
        "bar ≤ 1.05).",
    ]
    write_section(
        "Training step overhead",
        f"python bench/step_overhead.py --rounds {options.rounds} --steps {options.steps}",
        body,
    )


if __name__ == "__main__":
    main()
