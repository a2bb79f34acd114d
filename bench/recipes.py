"""Validation accuracy around the stage change, for candidate default recipes.

Run: ``python bench/recipes.py [--recipes NAME ...] [--datasets NAME ...] [--seeds 0 1 2]
[--no-write]`` (writes the "Recipes at the stage change" section of docs/benchmarks.md).

The default recipe trains the head alone on cached features, then every layer. Where the
second stage starts, validation accuracy may fall before it recovers; the bar (issue 19) is
that no epoch after the change loses more than 2 points against the last head-only epoch,
on every dataset of bench/peers.py (bench/peer_data.py builds them) and on the built-in
digits, and that the built-in main job stays at or above 99 %. Each candidate is a set of
config overrides over the embedded default; each run is ``tg.fit`` in this process, fp32
(the default on a CPU), with the data settings chosen from the data as usual. The table
gives every epoch's validation top-1, the largest fall after the change (``fall``), the
validation loss of the last head-only epoch and of the first epoch after the change, and the
last epoch's accuracy; with several seeds, a row per dataset gives the mean over the seeds
(every epoch's mean accuracy, and the fall of that mean curve). On 200 validation images one
image is half a point: a fall of a few images while the validation loss falls too is the
noise of the arg-max over borderline images, not a collapse (which the loss shows as well).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peer_data  # noqa: E402
import torchgraft as tg  # noqa: E402
from _report import write_section  # noqa: E402


def two_phase(freeze_epochs: int, unfrozen_scale: float, lr_mult: float, bn: str) -> dict:
    schedule = {
        "kind": "two_phase",
        "freeze_epochs": freeze_epochs,
        "unfrozen_scale": unfrozen_scale,
        "lr_mult": lr_mult,
    }
    return {"freeze": {"bn": bn, "schedule": schedule}}


def with_sgd(recipe: dict, lr: float = 0.01) -> dict:
    return {**recipe, "optim": {"name": "sgd", "lr": lr}}


#: Candidates: name -> config overrides. "default" is the embedded default as it is (AdamW,
#: fastai's fine_tune stages, the head at 0.35 x lr once the body trains); "adamw-s0.5" has
#: fastai's own 0.5 there; the others are the defaults it replaced, with SGD.
RECIPES = {
    "default": {},
    "adamw-s0.5": two_phase(1, 0.5, 100.0, "fixed"),
    "sgd-f1-s1-m100-fixed": with_sgd(two_phase(1, 1.0, 100.0, "fixed")),
    "sgd-f1-s0.5-m100-fixed": with_sgd(two_phase(1, 0.5, 100.0, "fixed")),
    "sgd-f3-s10-m10-frozen": with_sgd(two_phase(3, 10.0, 10.0, "frozen")),
}
DATASETS = ("builtin-digits", *peer_data.DATASETS)


def run(dataset: str, overrides: dict, seed: int, cache: Path, out: Path):
    """Validation top-1 and loss of every epoch, and the epoch the stage changed at."""
    source = (
        "digits" if dataset == "builtin-digits" else str(peer_data.build(dataset, cache, False))
    )
    config = {
        "data": {"source": source},
        "train": {"seed": seed, "precision": "fp32"},
        "output": {"dir": str(out), "name": f"{dataset}-{seed}-{time.time_ns()}", "plots": False},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    result = tg.fit(config)
    with open(result.dir / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    accuracy = [100 * float(r["acc1"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    head_only = sum(r["stage"] == "head only" for r in rows)
    return accuracy, loss, head_only


def fall_after(accuracy: list[float], change: int) -> float:
    """Points lost by the worst epoch after the change against the last head-only one."""
    return max(0.0, accuracy[change - 1] - min(accuracy[change:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tgpeers")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tgrecipes-"))
    rows = [
        "| recipe | dataset | seed | validation top-1 by epoch | fall after the change "
        "| val loss: head only → after | last |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.recipes:
        for dataset in args.datasets:
            curves = []
            for seed in args.seeds:
                accuracy, loss, change = run(dataset, RECIPES[name], seed, args.cache, out)
                curves.append(accuracy)
                epochs = " ".join(f"{a:.1f}" for a in accuracy)
                rows.append(
                    f"| {name} | {dataset} | {seed} | {epochs} "
                    f"| {fall_after(accuracy, change):.1f} "
                    f"| {loss[change - 1]:.3f} → {loss[change]:.3f} | {accuracy[-1]:.1f} |"
                )
                print(rows[-1], flush=True)
            if len(curves) > 1:
                mean = [sum(epoch) / len(epoch) for epoch in zip(*curves, strict=True)]
                rows.append(
                    f"| {name} | **{dataset}** | mean of {len(curves)} "
                    f"| {' '.join(f'{a:.1f}' for a in mean)} "
                    f"| **{fall_after(mean, change):.1f}** | | {mean[-1]:.1f} |"
                )
                print(rows[-1], flush=True)
    if not args.no_write:
        command = "python bench/recipes.py " + " ".join(sys.argv[1:])
        body = [__doc__.split("\n\n")[2].replace("\n", " "), "", *rows]
        write_section("Recipes at the stage change", command.strip(), body)


if __name__ == "__main__":
    main()
