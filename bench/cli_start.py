"""How fast the light commands start: each a fresh process, beside ``import torch``.

Run: ``python bench/cli_start.py [--rounds 5] [--compare SRC]`` (writes the "Command-line
start" section of docs/benchmarks.md).

Every command runs as users run it, ``python -m torchgraft ARGS`` in a new interpreter, on
files made here first: a small safetensors file, a one-epoch run of a small CNN defined in a
module of its own (a ``package.module:callable`` model, so building it needs neither timm nor
torchvision), that run exported to ONNX (with the ``[onnx]`` extra) and one of its images.
``inspect`` identifies the checkpoint from an index of two architectures
(``TORCHGRAFT_IDENTIFY_ARCHS``) in a private cache, built before the timing: what a user's
second ``inspect`` does with the full index. Beside them run ``python -c pass`` (the
interpreter) and ``python -c "import torch"``, the floor of every command that reads tensors,
and, for scale, the import of torch, timm and torchvision that every command paid before.

All commands run once per round in rotating order (the machine is shared: its load moves
every figure, a ratio within a round much less). Each row gives the median wall time and
its ratio to the ``import torch`` median, the median CPU time (user + system of the process)
and its ratio, and which of the costly packages the command imported (from one more run that
records ``sys.modules`` at exit). ``--compare SRC`` runs every command with another
``src`` folder first on ``PYTHONPATH`` too (``git archive HEAD src | tar -x -C /tmp/old``):
the figures before a change, side by side with the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from _report import write_section  # noqa: E402

#: Packages that cost seconds to import, reported per command when it imports them.
COSTLY = ("timm", "torchvision", "torch._dynamo", "torchmetrics", "matplotlib", "onnx")

#: The model of the benchmark's run: a module of its own, found on PYTHONPATH.
MODEL_MODULE = "cli_start_models"
MODEL_SOURCE = '''
"""A small CNN for bench/cli_start.py: a package.module:callable model."""

from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 3, in_chans: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''

#: Runs ``python -m torchgraft ARGS`` and writes ``sys.modules`` at exit to a file.
RECORDER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "torchgraft"
runpy.run_module("torchgraft", run_name="__main__", alter_sys=True)
"""


def make_files(folder: Path) -> dict[str, Path | None]:
    """The checkpoint, run, export and image the commands read."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    import torchgraft as tg
    from torchgraft.data.digits import load_digits
    from torchgraft.engine.console import RunConsole

    (folder / f"{MODEL_MODULE}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(folder))
    weights = folder / "weights.safetensors"
    save_file({"conv.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.zeros(3)}, str(weights))
    images, labels = load_digits()
    for digit in (0, 1, 2):
        (folder / "digits" / str(digit)).mkdir(parents=True)
        chosen = [i for i, label in enumerate(labels) if label == digit][:12]
        for index in chosen:
            picture = Image.fromarray(images[index]).resize((16, 16), Image.BICUBIC)
            picture.convert("RGB").save(folder / "digits" / str(digit) / f"{index:04d}.png")
    config = {
        "model": {"name": f"{MODEL_MODULE}:SmallCNN", "channels_last": False},
        "weights": {"source": None},
        "graft": {"verify_with": None},
        "freeze": {"policy": "none"},
        "data": {"source": str(folder / "digits"), "image_size": 16, "workers": 0},
        "train": {"epochs": 1, "threads": 1, "precision": "fp32"},
        "output": {"dir": str(folder / "runs"), "name": "run", "plots": False},
    }
    run = Path(tg.fit(config, console=RunConsole(quiet=True)).dir)
    onnx = None
    try:
        from torchgraft.engine.export.write import export_run

        onnx = export_run(run, "onnx", folder / "model.onnx", trust_run=True).path
    except Exception as exc:  # the [onnx] extra is optional
        print(f"no ONNX export ({type(exc).__name__}: {exc}); its row is left out")
    image = next((folder / "digits" / "0").iterdir())
    return {"weights": weights, "run": run, "onnx": onnx, "image": image}


def commands(files: dict[str, Path | None]) -> dict[str, list[str]]:
    """Label -> the arguments after ``python``."""
    tg = ["-m", "torchgraft"]
    run, image = str(files["run"]), str(files["image"])
    table = {
        "python -c pass": ["-c", "pass"],
        'python -c "import torch"': ["-c", "import torch"],
        "torchgraft --help": [*tg, "--help"],
        "torchgraft --version": [*tg, "--version"],
        "torchgraft inspect FILE.safetensors": [*tg, "inspect", str(files["weights"])],
        "torchgraft inspect FILE.safetensors --no-identify": [
            *tg,
            "inspect",
            str(files["weights"]),
            "--no-identify",
        ],
        "torchgraft report RUN --examples 0": [*tg, "report", run, "--examples", "0"],
        "torchgraft report RUN (16 worst images: builds and runs the model)": [
            *tg,
            "report",
            run,
            "--trust-run",
        ],
        "torchgraft predict RUN IMAGE (builds the model)": [
            *tg,
            "predict",
            run,
            image,
            "--trust-run",
        ],
    }
    if files["onnx"] is not None:
        table["torchgraft predict model.onnx IMAGE"] = [*tg, "predict", str(files["onnx"]), image]
    table['python -c "import torch, timm, torchvision" (for scale)'] = [
        "-c",
        "import torch, timm, torchvision",
    ]
    return table


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``python ARGS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def costly_imports(args: list[str], env: dict[str, str], folder: Path) -> str:
    """The packages of :data:`COSTLY` that ``python ARGS`` imported."""
    record = folder / "modules.json"
    if args[:2] == ["-m", "torchgraft"]:
        run = ["-c", RECORDER, str(record), *args[2:]]
    else:
        code = args[1] + f"\nimport sys, json; open({str(record)!r}, 'w').write("
        code += "json.dumps(sorted(sys.modules)))"
        run = ["-c", code]
    subprocess.run([sys.executable, *run], env=env, capture_output=True, check=True)
    modules = set(json.loads(record.read_text()))
    found = [p for p in COSTLY if p in modules]
    return ", ".join(found) or "—"


def measure(table: dict[str, list[str]], envs: dict[str, dict], rounds: int, folder: Path):
    """``{(version, label): (median wall, median cpu, costly imports)}``."""
    keys = [(version, label) for label in table for version in envs]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in keys}
    for version, label in keys:  # warm the file cache (and the index) before timing
        timed(table[label], envs[version])
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for version, label in keys[shift:] + keys[:shift]:
            samples[(version, label)].append(timed(table[label], envs[version]))
        print(f"round {round_ + 1}/{rounds} done")
    result = {}
    for key, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        result[key] = (wall, cpu, costly_imports(table[key[1]], envs[key[0]], folder))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--compare", type=Path, help="another src folder, run side by side (e.g. the last commit's)"
    )
    parser.add_argument(
        "--label", default="before", help="what the table calls the --compare version"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="torchgraft-cli-start-"))
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        TORCHGRAFT_CACHE_DIR=str(folder / "cache"),
        TORCHGRAFT_IDENTIFY_ARCHS="torchvision:resnet18,timm:resnet18",
    )
    os.environ.update(env)
    threads = torch.get_num_threads()
    files = make_files(folder)
    torch.set_num_threads(threads)  # the run set its own; the machine line says the machine's
    paths = [str(folder), env.get("PYTHONPATH", "")]
    envs = {"now": {**env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}}
    if args.compare is not None:
        before = [str(args.compare.resolve()), *paths]
        envs["before"] = {**env, "PYTHONPATH": os.pathsep.join(filter(None, before))}
    table = commands(files)
    found = measure(table, envs, args.rounds, folder)
    floor = {v: found[(v, 'python -c "import torch"')] for v in envs}
    head = "| command | wall | × import torch | CPU | × import torch | imports |"
    if args.compare is not None:
        head = (
            f"| command | wall {args.label} | wall now | × import torch now | CPU {args.label} "
            f"| CPU now | × import torch now | imports {args.label} | imports now |"
        )
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for label in table:
        now = found[("now", label)]
        ratios = f"{now[0] / floor['now'][0]:.2f}", f"{now[1] / floor['now'][1]:.2f}"
        if args.compare is None:
            cells = [f"{now[0]:.2f} s", ratios[0], f"{now[1]:.2f} s", ratios[1], now[2]]
        else:
            old = found[("before", label)]
            cells = [
                f"{old[0]:.2f} s",
                f"{now[0]:.2f} s",
                ratios[0],
                f"{old[1]:.2f} s",
                f"{now[1]:.2f} s",
                ratios[1],
                old[2],
                now[2],
            ]
        rows.append(f"| `{label}` | " + " | ".join(cells) + " |")
        print(rows[-1])
    body = [
        "Each command a new process (`python -m torchgraft …`), all of them once per round in",
        f"rotating order, {args.rounds} rounds; median wall seconds and median CPU seconds (user +",
        'system) of the process, each also as a ratio to `python -c "import torch"` of the same',
        "rounds, and the costly packages the command imported. The run is one epoch of a small",
        "CNN of its own module (a `package.module:callable` model); `inspect` identifies the",
        "checkpoint from an index built before the timing (two architectures). The machine (2",
        "cores) is shared with other jobs: wall times move with its load, the ratios much less.",
        "",
        *rows,
        "",
        "`import torch` is the floor of every command that reads tensors; `--help` and",
        "`--version` import no torch at all. What is left above the floor: `predict model.onnx`",
        "imports `onnx` to read the file's protobuf (its external data is checked before",
        "onnxruntime sees the file); a command that builds a model runs the anatomy probe",
        "(`torchgraft.model.probe`) on the `meta` device, where torch's BatchNorm imports",
        "`torch._dynamo` and sympy, and a timm or torchvision model imports its library.",
    ]
    command = f"python bench/cli_start.py --rounds {args.rounds}"
    if args.compare is not None:
        command += f" --compare SRC --label {args.label}"
        table_at = body.index(rows[0])
        body[table_at:table_at] = [
            f"“{args.label}”: the same commands with `SRC` first on `PYTHONPATH`, another",
            "version's `src` folder, in the same rounds.",
            "",
        ]
    write_section("Command-line start", command, body)


if __name__ == "__main__":
    main()
