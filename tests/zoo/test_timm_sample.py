"""A broad timm sample: the smallest variant of many families, head surgery and layer groups.

Each architecture is built without weights, its head replaced by a 5-class one through
timm's own ``reset_classifier`` (so ``model.num_classes`` stays right), and checked for the
output shape, the head paths (against the table below and against ``get_classifier()``) and
layer groups that cover every parameter exactly once with the head last.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import torchgraft as tg

pytestmark = pytest.mark.usefixtures("skip_random_init", "one_torch_thread")

# (architecture, head paths written from timm's model code, input side used for the forward)
SAMPLE = [
    ("resnet18", ("fc",), 64),
    ("resnetv2_18", ("head.fc",), 64),
    ("efficientnet_b0", ("classifier",), 64),
    ("tf_efficientnet_lite0", ("classifier",), 64),
    ("mobilenetv3_small_050", ("classifier",), 64),
    ("mobilenetv4_conv_small", ("classifier",), 64),
    ("convnext_atto", ("head.fc",), 64),
    ("vit_tiny_patch16_224", ("head",), 224),
    ("deit_tiny_distilled_patch16_224", ("head", "head_dist"), 224),
    ("swin_tiny_patch4_window7_224", ("head.fc",), 224),
    ("maxvit_pico_rw_256", ("head.fc",), 256),
    ("coatnet_pico_rw_224", ("head.fc",), 224),
    ("regnetx_002", ("head.fc",), 64),
    ("regnety_002", ("head.fc",), 64),
    ("densenet121", ("classifier",), 64),
    ("inception_v3", ("fc",), 96),
    ("xception41", ("head.fc",), 64),
    ("dla46_c", ("fc",), 64),
    ("dpn48b", ("classifier",), 64),
    ("ghostnet_050", ("classifier",), 64),
    ("hrnet_w18_small", ("classifier",), 64),
    ("levit_128s", ("head", "head_dist"), 224),
    ("mixer_s32_224", ("head",), 224),
    ("poolformer_s12", ("head.fc",), 64),
    ("edgenext_xx_small", ("head.fc",), 64),
    ("efficientformer_l1", ("head", "head_dist"), 224),
    ("fastvit_t8", ("head.fc",), 64),
    ("repvgg_a0", ("head.fc",), 64),
    ("rexnet_100", ("head.fc",), 64),
    ("nf_resnet26", ("head.fc",), 64),
    ("cspresnet50", ("head.fc",), 64),
    ("res2net50_14w_8s", ("fc",), 64),
    ("mobilevit_xxs", ("head.fc",), 64),
    ("efficientvit_m0", ("head.linear",), 64),
    ("inception_next_atto", ("head.fc2",), 64),
    ("lcnet_050", ("classifier",), 64),
    ("pit_ti_distilled_224", ("head", "head_dist"), 224),
    ("starnet_s050", ("head",), 64),
    ("vgg11", ("head.fc",), 64),
    ("tresnet_m", ("head.fc",), 64),
    ("selecsls42", ("fc",), 64),
]


def _param(arch: str, heads: tuple[str, ...], size: int):
    return pytest.param(arch, heads, size, id=arch)


def _final_width(module: nn.Module) -> int:
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    last = layers[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def _classifier_paths(model: nn.Module) -> tuple[str, ...]:
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    by_id = {id(m): path for path, m in model.named_modules()}
    return tuple(by_id[id(h)] for h in heads)


def _under(name: str, paths) -> bool:
    return any(name == p or name.startswith(p + ".") for p in paths)


def test_sample_is_broad_and_names_exist():
    archs = [arch for arch, _, _ in SAMPLE]
    assert len(set(archs)) >= 30
    assert all(timm.is_model(a) for a in archs)


@pytest.mark.parametrize(("arch", "heads", "size"), [_param(*case) for case in SAMPLE])
def test_timm_replace_head(arch, heads, size):
    model = tg.create_model(f"timm:{arch}")
    assert model.torchgraft_spec.head_paths == heads
    assert model.torchgraft_spec.num_classes == 1000

    tg.replace_head(model, num_classes=5)

    spec = model.torchgraft_spec
    assert model.num_classes == 5  # timm's own bookkeeping
    assert spec.num_classes == 5
    assert spec.head_paths == heads
    assert _classifier_paths(model) == heads
    for path in heads:
        assert _final_width(model.get_submodule(path)) == 5

    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 5)

    # Layer groups: unique names, head last, every parameter in exactly one group, the head
    # group holding exactly the classifier's parameters, and no empty group.
    names = [n for n, _ in model.named_parameters()]
    assert len(set(spec.group_names)) == len(spec.group_names), spec.group_names
    assert spec.group_names[-1] == "head"
    owner = spec.group_of(names)
    assert sorted(owner) == sorted(names)
    assert {n for n, g in owner.items() if g == "head"} == {n for n in names if _under(n, heads)}
    assert set(owner.values()) == set(spec.group_names)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("vit_tiny_patch16_224", {"img_size": 64}),
        ("test_vit", {"img_size": 32}),  # pretrained_cfg: 160 px, with a dynamic image size
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}),
    ],
)
def test_a_model_built_for_another_image_size_is_prepared_at_that_size(arch, options):
    """timm's pretrained_cfg names the size the weights were trained at; a ViT built with
    ``img_size`` takes that one — its spec probes and prepares images at it (was: the
    probe ran at the pretrained size, refused for a fixed-size ViT, and a dynamic one was fed
    images upscaled to it)."""
    model = tg.create_model(f"timm:{arch}", **options)
    side = options["img_size"]
    assert model.pretrained_cfg["input_size"][1] != side
    assert model.torchgraft_spec.preprocessing.input_size == (3, side, side)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, side, side)).shape == (1, 1000)
