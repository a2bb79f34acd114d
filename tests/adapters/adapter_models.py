"""Real architectures (no pretrained weights), tiny inputs, and a few real training steps."""

from __future__ import annotations

import torch
from torch import nn

import torchgraft as tg
from torchgraft.model.spec import attach_spec

#: Small enough for two shared CPU cores; mobilenetv3 pools globally, so any size works.
CNN_SIDE = 64


def mobilenet() -> nn.Module:
    """timm MobileNetV3 (depthwise convolutions, squeeze-excitation), 5 classes."""
    return tg.create_model("timm:mobilenetv3_small_050", num_classes=5, weights=None)


def tiny_torchvision_vit() -> nn.Module:
    """torchvision's ViT (nn.MultiheadAttention inside), 2 layers of width 16, 32×32 input."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    return attach_spec(model, tg.spec_of(model, input_size=32))


def timm_vit() -> nn.Module:
    """timm's ViT-Tiny (Linear qkv / proj / fc1 / fc2) at 32×32: 4 patches of 16."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, depth=3)
    return attach_spec(model, tg.spec_of(model, input_size=32))


def batch(model: nn.Module, n: int = 4, side: int | None = None, seed: int = 1):
    """Seeded images at the model's input size (or ``side``) and labels for 5 classes."""
    size = tg.spec_of(model).preprocessing.input_size
    side = side or size[1]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, size[0], side, side, generator=generator)
    return images, torch.randint(0, 5, (n,), generator=generator)


def train_steps(
    model: nn.Module,
    steps: int = 3,
    side: int | None = None,
    lr: float = 0.05,
    norms_fixed: bool = False,
) -> None:
    """Real optimizer steps (SGD with momentum) on what trains, in train mode.

    ``norms_fixed``: BatchNorm statistics kept (eval mode), as the engine's ``bn="frozen"``
    policy keeps them; otherwise they move as in plain PyTorch.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    model.train()
    if norms_fixed:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for step in range(steps):
        images, labels = batch(model, side=side, seed=step)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def snapshot(model: nn.Module, trainable: bool) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad == trainable
    }


def expected_auto(model: nn.Module, head: str, stem: str | None) -> list[str]:
    """What 'auto' must pick, from module types alone (written apart from the code under test):
    every Linear and every 1×1, groups=1 Conv2d, minus the head, the stem and anything inside
    an nn.MultiheadAttention."""
    inside_attention = {
        f"{n}.{c}" if c else n
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_modules()
    }
    chosen = []
    for name, module in model.named_modules():
        if name in (head, stem) or name.startswith(f"{head}.") or name in inside_attention:
            continue
        pointwise = (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
        )
        if isinstance(module, nn.Linear) or pointwise:
            chosen.append(name)
    return chosen
