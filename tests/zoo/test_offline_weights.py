"""Named pretrained weights, served from the libraries' own caches (no network).

Only the download is mocked, at the lowest level: a file is placed where torchvision
(``$TORCH_HOME/hub/checkpoints``) or timm (the Hugging Face hub cache) looks for it. The
weights in it are random but distinctive, so a test can tell they were the ones loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import ResNet18_Weights

import torchgraft as tg

IMAGENET = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _distinctive(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor (BatchNorm statistics too) filled with values no fresh model has."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            out[key] = noise.abs() + 0.5 if key.endswith("running_var") else noise
        else:
            out[key] = torch.full_like(value, 7)
    return out


@pytest.fixture
def resnet18_in_torch_cache(torch_home: Path) -> dict[str, torch.Tensor]:
    state = _distinctive(torchvision.models.resnet18().state_dict(), seed=1234)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url))
    return state


def test_torchvision_weights_come_from_the_torch_cache(resnet18_in_torch_cache):
    source = resnet18_in_torch_cache
    model = tg.create_model("torchvision:resnet18", weights="IMAGENET1K_V1", num_classes=7)

    state = model.state_dict()
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) > 100
    for key in backbone:
        assert torch.equal(state[key], source[key]), key
    assert model.fc.out_features == 7
    assert state["fc.weight"].shape == (7, 512)

    spec = model.torchgraft_spec
    assert spec.weights == "IMAGENET1K_V1"
    assert spec.num_classes == 7
    assert spec.classes is None or len(spec.classes) == 7

    report = model.torchgraft_report
    assert isinstance(report, tg.GraftReport)
    assert set(report.missing) == {"fc.weight", "fc.bias"}
    assert 0.9 < report.coverage < 1.0
    assert "fc.weight" not in report.mapping
    assert report.mapping["conv1.weight"] == "conv1.weight"

    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_torchvision_weights_without_a_new_head_keep_imagenet_classes(resnet18_in_torch_cache):
    model = tg.create_model("torchvision:resnet18", weights="DEFAULT")
    assert torch.equal(model.fc.weight, resnet18_in_torch_cache["fc.weight"])
    spec = model.torchgraft_spec
    assert spec.weights == "IMAGENET1K_V1"  # DEFAULT resolves to the one resnet18 has
    assert spec.classes == tuple(IMAGENET)
    assert model.torchgraft_report.missing == []


def test_torchvision_keep_classes_with_imagenet_names(resnet18_in_torch_cache):
    source = resnet18_in_torch_cache
    classes = ["goldfish", "a class ImageNet lacks", "tabby", "Egyptian cat"]
    model = tg.create_model(
        "torchvision:resnet18", weights="IMAGENET1K_V1", classes=classes, keep_classes=True
    )
    assert model.fc.out_features == 4
    for row, name in [(0, "goldfish"), (2, "tabby"), (3, "Egyptian cat")]:
        index = IMAGENET.index(name)
        assert torch.equal(model.fc.weight[row], source["fc.weight"][index]), name
        assert torch.equal(model.fc.bias[row], source["fc.bias"][index]), name
    new_row = model.fc.weight[1].detach()
    assert not bool((source["fc.weight"] == new_row).all(dim=1).any())
    assert model.torchgraft_spec.classes == tuple(classes)
    # The backbone still comes from the file.
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])


def test_torchvision_keep_classes_with_a_list(resnet18_in_torch_cache):
    source = resnet18_in_torch_cache
    model = tg.create_model(
        "torchvision:resnet18",
        weights="IMAGENET1K_V1",
        classes=["goldfish", "tabby"],
        keep_classes=["tabby"],
    )
    assert torch.equal(model.fc.weight[1], source["fc.weight"][IMAGENET.index("tabby")])
    goldfish = source["fc.weight"][IMAGENET.index("goldfish")]
    assert not torch.equal(model.fc.weight[0], goldfish)


def test_torchvision_weights_missing_from_cache_fail_without_network(torch_home, monkeypatch):
    # The cache is empty: torchvision would download. Cut the lowest network call.
    def no_network(url, *args, **kwargs):
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(OSError, match="network disabled"):
        tg.create_model("torchvision:resnet18", weights="IMAGENET1K_V1")


# --------------------------------------------------------------------------- timm via HF cache

TIMM_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    import torchgraft as tg

    def digest(t):
        return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()

    model = tg.create_model("timm:resnet18", weights="a1_in1k", num_classes=7)
    kept = tg.create_model(
        "timm:resnet18.a1_in1k", weights=True, classes=["tabby", "new", "goldfish"],
        keep_classes=True,
    )
    report = model.torchgraft_report
    json.dump({
        "digests": {k: digest(v) for k, v in model.state_dict().items()},
        "kept_rows": [digest(kept.fc.weight[i]) for i in range(3)],
        "num_classes": model.num_classes,
        "fc_shape": list(model.fc.weight.shape),
        "weights": model.torchgraft_spec.weights,
        "classes": model.torchgraft_spec.classes,
        "kept_classes": kept.torchgraft_spec.classes,
        "missing": report.missing,
        "coverage": report.coverage,
    }, sys.stdout)
    """
)


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture
def timm_hf_cache(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Hugging Face hub cache holding ``timm/resnet18.a1_in1k`` as timm requests it.

    timm resolves ``resnet18.a1_in1k`` to ``hf_hub_id='timm/resnet18.a1_in1k'`` and asks
    ``hf_hub_download`` for ``model.safetensors`` first (``_hub.load_state_dict_from_hf``);
    offline, the hub answers from ``<cache>/models--timm--resnet18.a1_in1k`` via ``refs/main``.
    """
    cfg = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    assert cfg.hf_hub_id == "timm/resnet18.a1_in1k"
    state = _distinctive(timm.create_model("resnet18").state_dict(), seed=4321)
    cache = tmp_path / "hf_cache"
    repo = cache / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return cache, state


@pytest.mark.slow
def test_timm_weights_come_from_the_hf_cache(timm_hf_cache, tmp_path):
    cache, source = timm_hf_cache
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf_home"),
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", TIMM_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)

    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) > 100
    assert {k: got["digests"][k] for k in backbone} == {k: _digest(source[k]) for k in backbone}
    assert got["num_classes"] == 7
    assert got["fc_shape"] == [7, 512]
    assert got["weights"] == "a1_in1k"
    assert got["classes"] is None or len(got["classes"]) == 7
    assert set(got["missing"]) == {"fc.weight", "fc.bias"}
    assert 0.9 < got["coverage"] < 1.0

    assert got["kept_classes"] == ["tabby", "new", "goldfish"]
    assert got["kept_rows"][0] == _digest(source["fc.weight"][IMAGENET.index("tabby")])
    assert got["kept_rows"][2] == _digest(source["fc.weight"][IMAGENET.index("goldfish")])
    assert got["kept_rows"][1] not in {_digest(row) for row in source["fc.weight"]}
