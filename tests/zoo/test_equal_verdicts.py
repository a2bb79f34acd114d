"""Verdicts shipped for builders that share one table: true to a live comparison with other
weights, used by ``inspect`` without importing a model library, and never trusted when the
file is not one."""

from __future__ import annotations

import json

import pytest
import timm
import torchvision

from support import perturbed, run_light
from torchgraft.zoo import build_model, equal_verdicts
from torchgraft.zoo.equal_tables import settle_equal_tables
from torchgraft.zoo.equal_verdicts import verdict, verdicts_path
from torchgraft.zoo.identify import identify

RESNET50 = ("torchvision:resnet50", "timm:resnet50", "timm:resnetaa50", "timm:resnetblur50")
#: (builders, a model of their table): one group that computes one function, one that does not.
GROUPS = (
    (("torchvision:densenet121", "timm:densenet121"), lambda: torchvision.models.densenet121()),
    (
        ("timm:efficientnet_b0", "timm:efficientnet_blur_b0", "timm:tf_efficientnet_b0"),
        lambda: timm.create_model("efficientnet_b0", pretrained=False),
    ),
)


def test_the_package_ships_verdicts_for_the_versions_it_installs():
    assert verdicts_path().is_file(), verdicts_path()
    found = verdict(["timm:deit_base_patch16_224", "timm:vit_base_patch16_224"])
    assert found is not None
    assert found["same_function"] is True  # DeiT is a ViT with other training
    assert verdict(list(RESNET50))["same_function"] is False  # anti-aliasing, blur pools


@pytest.mark.parametrize(("specs", "build"), GROUPS, ids=["densenet121", "efficientnet_b0"])
def test_a_shipped_verdict_is_what_running_the_builders_with_other_weights_says(specs, build):
    """Generic weights decide code differences: a live comparison with the test's own
    perturbed weights (another seed, other statistics) agrees with the shipped one."""
    model = perturbed(build(), scale=0.05, seed=7, statistics=True)
    tensors = model.state_dict()
    found = identify({k: tuple(t.shape) for k, t in tensors.items()}, architectures=specs)
    assert set(found.exact_all) == set(specs)
    live = settle_equal_tables(
        found, tensors, lambda spec, classes: build_model(spec, num_classes=classes).model
    )
    assert live.same_function is verdict(found.exact_all)["same_function"]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"format": 99, "groups": []}),
        json.dumps({"format": 1, "groups": [{"specs": "timm:a", "same_function": True}]}),
        json.dumps({"format": 1, "groups": [{"specs": ["a", "b"], "same_function": "yes"}]}),
    ],
    ids=["garbage", "other format", "specs not a list", "verdict not a bool"],
)
def test_a_file_that_is_not_one_gives_no_verdict(tmp_path, text):
    verdicts_path(tmp_path).write_text(text)
    equal_verdicts._CACHE.clear()
    try:
        assert verdict(list(RESNET50), tmp_path) is None
    finally:
        equal_verdicts._CACHE.clear()


def test_inspect_names_equal_builders_from_the_shipped_verdict_without_timm(
    tmp_path, subprocess_env
):
    """A ResNet-50 checkpoint has the table of four builders: inspect says which compute
    the same function without building or importing any of them."""
    import torch

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    env = {
        **subprocess_env,
        "TORCHGRAFT_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("TORCHGRAFT_IDENTIFY_ARCHS", None)
    done, imported = run_light(tmp_path, env, "inspect", "--json", path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["architecture"]
    assert set(found["exact_all"]) == set(RESNET50)
    assert found["same_function"] is False
    assert "decided when the package was built" in found["comparison"]
    assert not imported & {"timm", "torchvision"}
