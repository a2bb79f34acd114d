"""Container indices are order (issue 20, item 1).

In a name-sorted file (safetensors always stores keys sorted by name) ``blocks.10`` comes
before ``blocks.2``, but the children of a ``ModuleList``/``Sequential`` were registered in
index order: their natural order is their registration order, which proves the pairing of
same-shaped siblings (evidence ``index-order``). Attributes numbered by hand (``norm1``,
``norm2``; ``_bn0``, ``_bn1``) prove nothing that way and stay suggestions.

Real timm and torchvision Vision Transformers (tiny configurations, 12 identical blocks so
that ``blocks.10`` sorts before ``blocks.2``) with perturbed weights, saved with safetensors.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from support import perturbed, save_sorted
from torchgraft.errors import GraftWarning
from torchgraft.grafting.api import plan_graft
from torchgraft.grafting.correspondence import EVIDENCE, FULL
from torchgraft.grafting.pairing import container_names

DEPTH = 12


def timm_vit() -> torch.nn.Module:
    return TimmViT(
        img_size=32, patch_size=8, embed_dim=16, depth=DEPTH, num_heads=2, mlp_ratio=2.0,
        num_classes=5,
    )  # fmt: skip


def torchvision_vit() -> torch.nn.Module:
    return TorchvisionViT(
        image_size=32, patch_size=8, num_layers=DEPTH, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("names", "container"),
    [
        (["0", "1", "10", "2"], True),  # a ModuleList or Sequential
        (["0", "1"], True),  # two indices are still indices
        (["encoder_layer_0", "encoder_layer_1", "encoder_layer_2"], True),  # torchvision ViT
        (["denselayer1", "denselayer2", "denselayer3"], True),  # torchvision DenseNet
        (["norm1", "norm2"], False),  # two numbered attributes
        (["conv1", "bn1", "conv2", "bn2"], False),  # attributes of other words side by side
        (["layer1", "layer2", "fc"], False),
        (["a", "b", "c"], False),
        (["0"], False),
    ],
)
def test_container_names(names, container):
    assert container_names(names) is container


def test_a_name_sorted_module_list_pairs_by_its_indices(tmp_path):
    source = perturbed(timm_vit(), 0.05)
    path = tmp_path / "timm_vit.safetensors"
    save_sorted(source, path)
    plan = plan_graft(torchvision_vit(), path)  # no source architecture, no identification
    pairs = {e.target: e for e in plan.entries if e.source}
    for i in range(DEPTH):
        entry = pairs[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"]
        assert entry.source == f"blocks.{i}.attn.qkv.weight"  # blocks.10 is not blocks.2
        # The block level was decided by its indices; the only tensor of its shape inside.
        assert (entry.evidence, entry.confidence) == ("index-order", FULL)
        fc2 = pairs[f"encoder.layers.encoder_layer_{i}.mlp.3.weight"]
        assert fc2.source == f"blocks.{i}.mlp.fc2.weight"
    # norm1/norm2 are a block's own numbered attributes: their order is only suggested.
    norm = pairs["encoder.layers.encoder_layer_4.ln_2.weight"]
    assert norm.source == "blocks.4.norm2.weight"
    assert (norm.evidence, norm.confidence) == ("numbered-names", EVIDENCE["numbered-names"])
    # Which rung decided a line is shown where it decided a tie.
    assert "(index-order)" in plan.render(limit=None)


def test_named_container_children_are_order_too(tmp_path):
    source = perturbed(torchvision_vit(), 0.05)
    path = tmp_path / "torchvision_vit.safetensors"
    save_sorted(source, path)
    plan = plan_graft(timm_vit(), path)
    pairs = {e.target: e for e in plan.entries if e.source}
    for i in range(DEPTH):
        entry = pairs[f"blocks.{i}.attn.qkv.weight"]
        assert entry.source == f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"
        assert entry.evidence == "index-order"


def test_what_index_order_pairs_computes_the_same(tmp_path):
    # Accepting the still-suggested norms on purpose shows the index-ordered blocks are right:
    # the grafted model computes what the source computes.
    from torchgraft.grafting.api import graft

    source = perturbed(timm_vit(), 0.05)
    path = tmp_path / "timm_vit.safetensors"
    save_sorted(source, path)
    target = torchvision_vit().eval()
    with pytest.warns(GraftWarning):
        graft(target, path, allow_uncertain=True)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images), rtol=1e-4, atol=1e-5)
