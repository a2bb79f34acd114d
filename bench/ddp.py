"""Training throughput on one process vs several (torchrun, gloo on this CPU), side by side.

Run: ``python bench/ddp.py [--model torchvision:resnet18] [--epochs 3] [--nproc 2]`` (writes
the "Multi-process training" section of docs/benchmarks.md).

Each configuration is the installed ``torchgraft train`` (``--nproc N`` runs torchrun) on the
bundled digits, random initialisation, full fine-tuning, no augmentation, in a fresh folder.
Images/s = training images of an epoch / that epoch's training seconds (metrics.csv), the
median over the epochs after the first (which pays for start-up). One process uses torch's
default threads (one per core); N processes use one thread each (torchrun's default), so
both use every core. Wall time is the whole command, imports and process start included.

On a 2-core machine little gain is expected: one process already uses both cores for its
convolutions, and two processes add the gradient all-reduce. The figure is for honesty; the
same command on a machine with GPUs (nccl) is where several processes pay off.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_section  # noqa: E402


def train(nproc: int, model: str, epochs: int, batch: int, size: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="torchgraft-ddp-bench-"))
    script = shutil.which("torchgraft") or str(Path(sys.executable).parent / "torchgraft")
    arguments = [script, "train", "--model.name", model, "--weights.source", "null"]
    arguments += ["--graft.verify_with", "null", "--freeze.schedule", "null"]
    arguments += ["--freeze.policy", "none", "--data.augment", "none", "--output.plots", "false"]
    arguments += ["--train.epochs", str(epochs), "--data.batch_size", str(batch)]
    arguments += ["--data.image_size", str(size), "--train.feature_cache", "false"]
    if nproc > 1:
        arguments += ["--nproc", str(nproc)]
    try:
        started = time.perf_counter()
        done = subprocess.run(arguments, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"{' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
        run_dir = next((folder / "runs").iterdir())
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        train_rows = [r for r in rows if r["split"] == "train"]
        seconds = [float(r["seconds"]) for r in train_rows[1:]] or [float(train_rows[0]["seconds"])]
        val = [r for r in rows if r["split"] == "val"][-1]
        return {
            "wall": wall,
            "epoch_seconds": statistics.median(seconds),
            "acc": float(val["acc1"]),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    options = parser.parse_args()
    from torchgraft.data.sources import discover
    from torchgraft.engine.config.load import RunConfig

    source = discover(RunConfig().data.source, val_fraction=RunConfig().data.val_fraction)
    train_images = len(source.splits["train"])
    results = {}
    for nproc in (1, options.nproc):
        results[nproc] = train(nproc, options.model, options.epochs, options.batch, options.size)
        seconds = results[nproc]["epoch_seconds"]
        print(
            f"{nproc} process(es): {train_images / seconds:.1f} images/s "
            f"({seconds:.1f} s per epoch), wall {results[nproc]['wall']:.0f} s, "
            f"final val top-1 {results[nproc]['acc']:.1%}"
        )
    one = train_images / results[1]["epoch_seconds"]
    several = train_images / results[options.nproc]["epoch_seconds"]
    body = [
        f"{options.model}, random weights, full fine-tuning of {train_images:,} training images "
        f"of the bundled digits at {options.size} px, global batch {options.batch}, "
        f"{options.epochs} epochs; training images per second of an epoch (median after the "
        "first), whole-command wall time.",
        "",
        "| processes | images/s | s per epoch | wall (s) | final val top-1 |",
        "|---|---|---|---|---|",
    ]
    for nproc, result in results.items():
        rate = train_images / result["epoch_seconds"]
        body.append(
            f"| {nproc} | {rate:.1f} | {result['epoch_seconds']:.1f} | {result['wall']:.0f} "
            f"| {result['acc']:.1%} |"
        )
    body += [
        "",
        f"{options.nproc} processes / 1: **{several / one:.2f}×** the throughput on this "
        "machine (gloo, one thread per process; one process uses all cores itself). The same "
        "command on GPUs uses nccl and one GPU per process.",
    ]
    write_section(
        "Multi-process training",
        f"python bench/ddp.py --model {options.model} --epochs {options.epochs} "
        f"--nproc {options.nproc} --batch {options.batch} --size {options.size}",
        body,
    )


if __name__ == "__main__":
    main()
