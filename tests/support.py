"""Helpers shared by test modules (imported as ``from support import ...``; a module of
its own, since two folders have a ``conftest`` and ``from conftest import`` would pick
whichever was imported first)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def write_digit_folder(root: Path, classes=(0, 1, 2), per_class: int = 12, size: int = 16) -> Path:
    """A folder of class subfolders holding real PNG files: UCI digits, upscaled."""
    from PIL import Image

    from torchgraft.data.digits import load_digits

    images, labels = load_digits()
    for digit in classes:
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for count, index in enumerate(i for i, label in enumerate(labels) if label == digit):
            if count == per_class:
                break
            picture = Image.fromarray(images[index]).resize((size, size), Image.BICUBIC)
            picture.convert("RGB").save(folder / f"{index:04d}.png")
    return root


def tiny_config(images: Path, out: Path, **sections) -> dict:
    """A fast run of the hand-written TinyCNN (tests/handmade_models.py) on ``images``.

    Precision is pinned to fp32: tests compare numbers at fp32 tolerances, whatever ``auto``
    picks on the machine (tests/engine/test_precision.py runs ``auto`` and ``bf16``).
    Augmentation is pinned to ``none``: the fixtures are tiny for speed, not few-shot data
    (left unset, a few images a class would choose ``light``: tests/cli/test_data_defaults.py)."""
    config = {
        "model": {"name": "handmade_models:TinyCNN", "channels_last": False},
        "weights": {"source": None},
        "graft": {"verify_with": None},
        "freeze": {"policy": "none"},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine"},
        "data": {
            "source": str(images),
            "image_size": 16,
            "batch_size": 8,
            "workers": 0,
            "augment": "none",
        },
        "train": {"epochs": 2, "threads": 1, "precision": "fp32"},
        "output": {"dir": str(out), "name": "run", "plots": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def export_sidecar(path: Path, fmt: str, **changes) -> dict:
    """A valid export sidecar for ``path`` as ``fmt`` (3 classes, 16 px; its sha256 matches
    the file), with ``changes`` applied — what a test writes beside a crafted export."""
    from torchgraft.checkpoint.write import sha256_file

    record = {
        "format": "torchgraft.export/1",
        "export": fmt,
        "file": path.name,
        "sha256": sha256_file(path),
        "classes": ["0", "1", "2"],
        "preprocessing": {
            "input_size": [3, 16, 16],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "fixed_input_size": False,
        },
    }
    record.update(changes)
    return record


def perturbed(model, scale: float = 0.02, seed: int = 0, statistics: bool = False):
    """``model`` in eval mode with every parameter moved by seeded noise (so a swapped tensor
    shows); with ``statistics``, BatchNorm running statistics that describe something too."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
        for module in model.modules() if statistics else ():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.running_mean.normal_(0, 0.1, generator=generator)
    return model.eval()


def save_sorted(model, path) -> Path:
    """``model``'s state_dict written with safetensors (which stores keys sorted by name)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def assert_same_function(target, source, size: int, tolerance: float = 1e-4) -> None:
    """Both models give the same outputs on one seeded batch of ``size`` px images."""
    import torch

    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images), rtol=tolerance, atol=tolerance)


def run_cli(console_script, *args, env, cwd=None, timeout=600):
    """The installed ``torchgraft`` with ``args`` in a subprocess; output captured as text."""
    import subprocess

    return subprocess.run(
        [*console_script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


#: Runs ``python -m torchgraft ARGS`` and writes the names in ``sys.modules`` at exit to a file.
RUNNER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
def record():
    with open(out, "w") as handle:
        json.dump(sorted(sys.modules), handle)
atexit.register(record)
sys.argv[0] = "torchgraft"
runpy.run_module("torchgraft", run_name="__main__", alter_sys=True)
"""


def run_light(tmp_path: Path, env: dict, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``torchgraft ARGS`` in a fresh interpreter: the finished process and the top-level
    packages it had imported when it exited."""
    record = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(record), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    modules = json.loads(record.read_text()) if record.exists() else []
    return done, {m.partition(".")[0] for m in modules}
