"""Inference speed of the eager model and of each export, side by side in one process.

Run: ``python bench/export.py [--models lite0 resnet18] [--threads 1] [--rounds 5]`` (writes
the "Export" section of docs/benchmarks.md).

Each model is a real run made here by ``tg.fit`` and reduced to a couple of steps (export
does not care how well a model was trained): ``lite0`` is the embedded default (the
EfficientNet-Lite0 ImageNet weights grafted into ``timm:tf_efficientnet_lite0``, digits at
64 px), ``resnet18`` is ``torchvision:resnet18`` without pretrained weights at 224 px. Every
format is exported with ``export_run`` (so each export is also checked, and the table gives
the method used and the difference measured), then the eager model and every export run the
same normalised batch, in rotating order, ``--rounds`` times; the figure is the median time
per call. onnxruntime gets as many intra-op threads as torch (``--threads``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import torchgraft as tg  # noqa: E402
from _report import write_section  # noqa: E402
from torchgraft.data.transforms import Normalizer  # noqa: E402
from torchgraft.engine.console import RunConsole  # noqa: E402
from torchgraft.engine.export.load import load_exported  # noqa: E402
from torchgraft.engine.export.write import export_run  # noqa: E402

#: name -> (overrides of the embedded default, what the table calls it)
MODELS = {
    "lite0": ({}, "timm:tf_efficientnet_lite0 (the default run), 64 px"),
    "resnet18": (
        {
            "model.name": "torchvision:resnet18",
            "weights.source": None,
            "graft.verify_with": None,
            "data.image_size": 224,
        },
        "torchvision:resnet18, 224 px",
    ),
}
FORMATS = ("torchscript", "pt2", "onnx")
BATCHES = (1, 32)


def make_run(overrides: dict, out: Path) -> Path:
    settings = {
        "train.epochs": 1,
        "train.max_steps": 2,
        "output.dir": str(out),
        "output.plots": False,
        **overrides,
    }
    return Path(tg.fit(None, settings, console=RunConsole(quiet=True)).dir)


def median_ms(runners: dict, batch: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median milliseconds per call of each runner, the runners in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    with torch.inference_mode():
        for run in runners.values():  # warm-up: first calls allocate and plan
            for _ in range(2):
                run(batch)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                started = time.perf_counter()
                for _ in range(calls):
                    runners[name](batch)
                times[name].append((time.perf_counter() - started) / calls * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    formats = FORMATS if has_onnx() else FORMATS[:2]
    out = Path(tempfile.mkdtemp(prefix="torchgraft-export-bench-"))
    exports, speed = [], []
    for key in args.models:
        overrides, label = MODELS[key]
        run = make_run(overrides, out / key)
        eager = tg.load(run)
        runners = {"eager": eager}
        for fmt in formats:
            result = export_run(run, fmt)
            size = result.path.stat().st_size / 2**20
            exports.append(
                f"| {label} | {fmt} | {result.method} | {result.seconds:.1f} s | {size:.1f} MiB | "
                f"{result.max_abs_diff:.1e} (allowed {result.allowed:.1e}) |"
            )
            print(exports[-1])
            runners[fmt] = load_exported(result.path, threads=args.threads, trust=True)  # ours
        pixels = torch.randint(0, 256, (max(BATCHES), *eager.preprocessing.input_size))
        images = Normalizer(eager.preprocessing, torch.device("cpu"))(pixels.to(torch.uint8))
        for batch in BATCHES:
            calls = 20 if batch == 1 else 2
            ms = median_ms(runners, images[:batch].clone(), args.rounds, calls)
            cells = [f"{ms['eager']:.1f} ms"] + [
                f"{ms[f]:.1f} ms ({ms['eager'] / ms[f]:.2f}×)" for f in formats
            ]
            speed.append(f"| {label} | {batch} | " + " | ".join(cells) + " |")
            print(speed[-1])
    body = [
        "Eager PyTorch against each export of the same trained run, one process, the same",
        "normalised batch, in rotating order; median milliseconds per call over the rounds",
        f"({args.threads} intra-op thread(s) for torch and for onnxruntime). In brackets: the",
        "export's speed relative to eager (above 1× is faster). The machine (2 cores) was shared",
        "with other jobs while this ran, so differences of a few percent are noise.",
        "",
        "| model | batch | eager | " + " | ".join(formats) + " |",
        "|---|---|" + "---|" * (len(formats) + 1),
        *speed,
        "",
        "How each was exported (`export_run`: first method that passes the check; time includes",
        "the check), its size, and the largest logit difference from the eager model measured at",
        "batch sizes 1 and 3 on images of the run's validation data:",
        "",
        "| model | format | method | export + check | file | max \\|Δ logit\\| |",
        "|---|---|---|---|---|---|",
        *exports,
    ]
    if len(formats) < len(FORMATS):
        body += [
            "",
            'ONNX left out: the [onnx] extra is not installed (pip install "torchgraft[onnx]").',
        ]
    command = (
        f"python bench/export.py --models {' '.join(args.models)} --threads {args.threads} "
        f"--rounds {args.rounds}"
    )
    write_section("Export", command, body)


if __name__ == "__main__":
    main()
