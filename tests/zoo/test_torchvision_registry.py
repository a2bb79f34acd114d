"""Registry-wide contract: every torchvision classification builder, head surgery included.

For each name in ``torchvision.models.list_models(module=torchvision.models)``:
``create_model`` builds it without weights, ``replace_head`` gives it 5 outputs (aux heads
too), the old head parameters are gone, the forward pass has the right shape, and both the
declared head table and the probe-based detection agree with the table written below.

Random initialisation is replaced by zero-filling (fixture ``skip_random_init``) and torch
runs on one thread (``one_torch_thread``): values do not matter to anatomy or shapes, and
together they cut this file from ~8 to ~2 minutes on two shared CPU cores.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import torchgraft as tg
from torchgraft.model.anatomy import infer_spec

pytestmark = pytest.mark.usefixtures("skip_random_init", "one_torch_thread")

# Head paths per family, written from torchvision's model definitions (main head first).
_FAMILIES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("classifier.6",): (
        "alexnet",
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
    ),
    ("fc",): (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
        "regnet_x_400mf",
        "regnet_x_800mf",
        "regnet_x_1_6gf",
        "regnet_x_3_2gf",
        "regnet_x_8gf",
        "regnet_x_16gf",
        "regnet_x_32gf",
        "regnet_y_400mf",
        "regnet_y_800mf",
        "regnet_y_1_6gf",
        "regnet_y_3_2gf",
        "regnet_y_8gf",
        "regnet_y_16gf",
        "regnet_y_32gf",
        "regnet_y_128gf",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_x2_0",
    ),
    ("classifier",): ("densenet121", "densenet161", "densenet169", "densenet201"),
    ("classifier.1",): (
        "mobilenet_v2",
        "mnasnet0_5",
        "mnasnet0_75",
        "mnasnet1_0",
        "mnasnet1_3",
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_b2",
        "efficientnet_b3",
        "efficientnet_b4",
        "efficientnet_b5",
        "efficientnet_b6",
        "efficientnet_b7",
        "efficientnet_v2_s",
        "efficientnet_v2_m",
        "efficientnet_v2_l",
        # SqueezeNet: a 1x1 Conv2d head, followed by ReLU and global pooling.
        "squeezenet1_0",
        "squeezenet1_1",
    ),
    ("classifier.3",): ("mobilenet_v3_small", "mobilenet_v3_large"),
    ("classifier.2",): ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    ("head",): ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"),
    ("heads.head",): ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"),
    ("classifier.5",): ("maxvit_t",),
    ("fc", "aux1.fc2", "aux2.fc2"): ("googlenet",),
    ("fc", "AuxLogits.fc"): ("inception_v3",),
}
EXPECTED_HEADS: dict[str, tuple[str, ...]] = {
    name: paths for paths, names in _FAMILIES.items() for name in names
}

#: Builds or forwards that take ~10 s or more on two CPU cores.
SLOW = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}
#: Smallest square input each model accepts in eval mode (32 for everything else).
INPUT_SIZE = {
    "alexnet": 64,  # three stride-2 max-pools leave nothing of 32x32
    "inception_v3": 75,
    "maxvit_t": 224,  # window partitions fix the resolution
    **{name: 224 for name in EXPECTED_HEADS if name.startswith("vit_")},  # image_size is checked
}
#: Builder arguments: GoogLeNet's aux heads are asked for explicitly.
BUILD_KWARGS = {"googlenet": {"aux_logits": True}}
#: Train-mode input for the aux heads (Inception's aux branch needs a 17x17 Mixed_6e map).
AUX_INPUT_SIZE = {"googlenet": 32, "inception_v3": 299}

ALL_NAMES = torchvision.models.list_models(module=torchvision.models)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    assert isinstance(module, nn.Conv2d), type(module)
    return module.out_channels


def test_expected_table_covers_the_whole_registry():
    # A model added to torchvision must be added to the table (and checked) on purpose.
    assert sorted(EXPECTED_HEADS) == sorted(ALL_NAMES)
    assert len(ALL_NAMES) >= 80


def test_zoo_listing_reports_the_expected_heads():
    entries = {e.spec: e.head_paths for e in tg.list_models(library="torchvision")}
    assert entries == {f"torchvision:{n}": paths for n, paths in EXPECTED_HEADS.items()}


@pytest.mark.parametrize("name", _params(ALL_NAMES))
def test_create_model_and_replace_head(name):
    model = tg.create_model(f"torchvision:{name}", **BUILD_KWARGS.get(name, {}))
    expected = EXPECTED_HEADS[name]
    assert model.torchgraft_spec.head_paths == expected
    assert model.torchgraft_spec.num_classes == 1000

    old_modules = {path: model.get_submodule(path) for path in expected}
    old_types = {path: type(m) for path, m in old_modules.items()}
    assert all(_width(m) == 1000 for m in old_modules.values())
    old_params = [p for m in old_modules.values() for p in m.parameters()]
    assert old_params

    tg.replace_head(model, num_classes=5)

    spec = model.torchgraft_spec
    assert spec.head_paths == expected
    assert spec.num_classes == 5
    assert spec.group_names[-1] == "head"
    assert len(set(spec.group_names)) == len(spec.group_names)
    names = [n for n, _ in model.named_parameters()]
    owner = spec.group_of(names)  # raises if a parameter has no group
    in_head = {n for n in names if any(n.startswith(p + ".") for p in expected)}
    assert {n for n, g in owner.items() if g == "head"} == in_head
    for path in expected:
        new = model.get_submodule(path)
        assert new is not old_modules[path]
        assert type(new) is old_types[path], f"{path} changed kind"
        assert _width(new) == 5
    if name.startswith("squeezenet"):
        conv = model.get_submodule("classifier.1")
        assert type(conv) is nn.Conv2d
        assert conv.kernel_size == (1, 1)
        assert conv.out_channels == 5

    # The old head is gone: not a parameter, and no state_dict entry shares its storage.
    live = {id(p) for p in model.parameters()}
    assert not any(id(p) in live for p in old_params)
    old_storage = {p.untyped_storage().data_ptr() for p in old_params}
    shared = [
        k
        for k, v in model.state_dict().items()
        if v.numel() and v.untyped_storage().data_ptr() in old_storage
    ]
    assert shared == []
    modules = {id(m) for m in model.modules()}
    assert not any(id(m) in modules for m in old_modules.values())

    size = INPUT_SIZE.get(name, 32)
    batch = 1 if size >= 224 else 2  # transformer inputs are large enough one at a time
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (batch, 5)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_heads_are_replaced_too(name):
    model = tg.create_model(f"torchvision:{name}", **BUILD_KWARGS.get(name, {}))
    tg.replace_head(model, num_classes=5)
    size = AUX_INPUT_SIZE[name]
    model.train()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, size, size))
    # GoogLeNetOutputs(logits, aux_logits2, aux_logits1) / InceptionOutputs(logits, aux_logits)
    assert len(outputs) == len(EXPECTED_HEADS[name])
    assert [tuple(o.shape) for o in outputs] == [(2, 5)] * len(outputs)


@pytest.mark.parametrize("name", _params(ALL_NAMES))
def test_probe_detection_agrees_with_the_table(name):
    # A plain torchvision model, never touched by torchgraft: detection from behaviour only.
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    spec = infer_spec(model)
    assert spec.head_paths == EXPECTED_HEADS[name]
    assert spec.num_classes == 1000
    main = model.get_submodule(EXPECTED_HEADS[name][0])
    width = main.in_features if isinstance(main, nn.Linear) else main.in_channels
    assert spec.feature_dim == width
    assert spec.in_chans == 3
