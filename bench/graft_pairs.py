"""Grafting across libraries: every torchvision classifier with a timm twin, in five forms.

Run: ``python bench/graft.py --only pairs`` (or ``python bench/graft_pairs.py [NAME ...]``);
writes the "Grafting across libraries" section of docs/benchmarks.md.

For each (torchvision builder, timm architecture) pair the source gets random weights (every
parameter perturbed, so a swapped tensor shows) and BatchNorm statistics measured on smooth
random images (so they describe the weights, as trained statistics do). It is saved five
ways — a plain ``torch.save`` state_dict (registration order kept), name-sorted safetensors
(order lost), a training checkpoint (``module.`` prefixes under ``model``, beside the epoch
and optimizer), a Hugging Face style folder (``model.safetensors`` and ``config.json``), and
module names rewritten then sorted (numbers kept, letters replaced:
``layer1`` → ``qzkfjw1``) — and grafted into a fresh timm model the way a user would:
``tg.graft(model, path)``, no source model given (the source architecture is identified from
the file when order cannot decide). The grafted model and the source then see one input:

- **exact**: the graft was accepted and the outputs agree (relative difference ≤ 1e-4);
- **refused**: the graft was refused (InexactGraftError / GraftError), the model untouched;
  for an InexactGraftError the same graft is then accepted on purpose (``allow_uncertain``,
  ``allow_partial``) to show what the unproven suggestions were worth ("accepted: exact");
- **wrong**: accepted, and the outputs differ. The bar is 0 wrong on the twins.

Traps are pairs with the same tensors and a different function (BatchNorm eps, TF "same"
padding, other widths): no file can show that, so they must end refused or, when the user
verifies against the source architecture (``--verify-with``), in a failed verification.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

#: (torchvision builder, timm architecture, input size): same function, found by grafting
#: with the source model known and comparing outputs (difference 0 or float rounding).
TWINS = (
    ("resnet18", "resnet18", 64),
    ("resnet50", "resnet50", 64),
    ("resnet152", "resnet152", 64),
    ("wide_resnet50_2", "wide_resnet50_2", 64),
    ("resnext50_32x4d", "resnext50_32x4d", 64),
    ("densenet121", "densenet121", 64),
    ("densenet161", "densenet161", 64),
    ("mobilenet_v2", "mobilenetv2_100", 64),
    ("mnasnet1_0", "mnasnet_100", 64),
    ("efficientnet_b0", "efficientnet_b0", 64),
    ("efficientnet_b3", "efficientnet_b3", 64),
    ("regnet_y_400mf", "regnety_004", 64),
    ("regnet_y_1_6gf", "regnety_016", 64),
    ("convnext_tiny", "convnext_tiny", 64),
    ("convnext_small", "convnext_small", 64),
    ("inception_v3", "inception_v3", 160),
    ("vgg11_bn", "vgg11_bn", 64),
    ("vit_b_16", "vit_base_patch16_224", 224),
    ("vit_b_32", "vit_base_patch32_224", 224),
    ("swin_t", "swin_tiny_patch4_window7_224", 224),
)
#: Same tensors (or nearly), another function.
TRAPS = (
    ("mobilenet_v3_large", "mobilenetv3_large_100", 64),  # BatchNorm eps 1e-3 vs 1e-5
    ("efficientnet_b0", "tf_efficientnet_b0", 64),  # TF "same" padding
    ("efficientnet_v2_s", "tf_efficientnetv2_s", 64),  # TF "same" padding
    ("regnet_x_400mf", "regnetx_004", 64),  # other stage widths
)
FORMS = (
    "state_dict",
    "sorted safetensors",
    "training checkpoint",
    "HF folder",
    "renamed + sorted",
)
EXACT = 1e-4


def source_model(builder: str, size: int, seed: int = 0) -> torch.nn.Module:
    """The torchvision model with perturbed weights and BatchNorm statistics measured on
    smooth random images (see the module docstring)."""
    import torchvision

    options = {"aux_logits": False} if builder == "inception_v3" else {}
    model = getattr(torchvision.models, builder)(weights=None, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.mul_(1 + 0.2 * noise).add_(0.02 * torch.randn(p.shape, generator=generator))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            low = torch.rand(4, 3, 7, 7, generator=generator)
            model(F.interpolate(low, size=(size, size), mode="bicubic") * 2 - 1)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def write_form(state: dict, form: str, folder: Path) -> Path:
    from safetensors.torch import save_file

    from graft import renamed_sorted

    if form == "state_dict":
        path = folder / "model.pth"
        torch.save(state, path)
        return path
    if form == "training checkpoint":
        # What a training script saves: the weights of a DistributedDataParallel replica
        # (``module.`` prefixes) beside the epoch and the optimizer's state.
        path = folder / "last.ckpt"
        weights = {f"module.{k}": v for k, v in state.items()}
        torch.save({"epoch": 3, "model": weights, "optimizer": {"state": {}, "lr": 0.1}}, path)
        return path
    if form == "HF folder":
        # A Hugging Face style folder: model.safetensors (sorted by name) and config.json.
        path = folder / "hf-model"
        path.mkdir()
        save_file({k: v.contiguous() for k, v in sorted(state.items())}, path / "model.safetensors")
        (path / "config.json").write_text('{"architectures": ["unknown"]}')
        return path
    if form == "renamed + sorted":
        state, _ = renamed_sorted(state)
    path = folder / f"{form.split()[0]}.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, path)
    return path


def graft_outcome(builder: str, arch: str, size: int, form: str, source, folder: Path):
    """``(outcome, detail)`` of grafting one form into a fresh timm model."""
    import timm

    import torchgraft as tg
    from torchgraft.errors import GraftError, InexactGraftError, VerificationError

    path = write_form(source.state_dict(), form, folder)
    target = timm.create_model(arch).eval()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    try:
        plan = tg.plan_graft(target, str(path))  # planned once, as tg.graft would plan it
        report = tg.graft(target, str(path), plan=plan)
    except InexactGraftError:
        untouched = all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
        # what the suggestions were worth: the same graft accepted on purpose
        tg.graft(target, str(path), plan=plan, allow_uncertain=True, allow_partial=True)
        accepted = "exact" if difference_from(source, target, size) <= EXACT else "WRONG"
        return "refused", f"accepted: {accepted}" + ("" if untouched else ", MODEL CHANGED")
    except (GraftError, VerificationError) as exc:
        # VerificationError: the automatic check ran the graft against the identified source
        # architecture and refused it before loading.
        untouched = all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
        return "refused", type(exc).__name__ + ("" if untouched else ", MODEL CHANGED")
    difference = difference_from(source, target, size)
    if difference <= EXACT:
        identified = any("identified as" in note for note in report.notes)
        return "exact", "identified" if identified else ""
    verified = tg.verify_graft(target, source, str(path))
    caught = "verification fails" if not verified.ok else "VERIFICATION PASSES"
    return "wrong", f"difference {difference:.2g}; {caught}"


def difference_from(source, target, size: int) -> float:
    """Largest output difference over the largest output magnitude, on one random input."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = source(x), target(x)
    return float((got - want).abs().max() / want.abs().max())


def run(pairs, kind: str) -> list[list[str]]:
    rows = []
    for builder, arch, size in pairs:
        start = time.perf_counter()
        source = source_model(builder, size)
        row = [f"torchvision:{builder} → timm:{arch}", kind]
        for form in FORMS:
            with tempfile.TemporaryDirectory() as folder:
                outcome, detail = graft_outcome(builder, arch, size, form, source, Path(folder))
            if kind == "trap" and outcome == "wrong" and "verification fails" in detail:
                outcome, detail = "verification fails", detail.split(";")[0]
            shown = f"**{outcome}**" if outcome == "wrong" else outcome
            row.append(f"{shown} ({detail})" if detail else shown)
        print(f"({time.perf_counter() - start:.0f} s)", end=" ", flush=True)
        print(" | ".join(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[list[str]]) -> list[str]:
    counts = {"exact": 0, "refused": 0, "wrong": 0}
    trap_wrong = 0
    lines = [
        "| pair | kind | " + " | ".join(FORMS) + " |",
        "|---|---|" + "---|" * len(FORMS),
    ]
    for row in rows:
        name, kind, *outcomes = row
        for outcome in outcomes:
            key = outcome.replace("*", "").split()[0]
            if kind == "twin":
                counts[key] += 1
            elif "VERIFICATION PASSES" in outcome:
                trap_wrong += 1
        lines.append(f"| {name} | {kind} | " + " | ".join(outcomes) + " |")
    summary = (
        f"Twins: {counts['exact']} exact, {counts['refused']} refused, **{counts['wrong']} "
        f"wrong** of {sum(counts.values())} grafts. Traps whose wrong function passed "
        f"verification: {trap_wrong}."
    )
    return [summary, "", *lines]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="torchvision builders to run (default: all)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # GraftWarnings are counted in the table instead

    def chosen(pairs):
        return [p for p in pairs if not args.only or p[0] in args.only]

    rows = run(chosen(TWINS), "twin") + run(chosen(TRAPS), "trap")
    return table(rows)


if __name__ == "__main__":
    body = main()
    print("\n".join(body))
