"""Checkpoints in original repositories' namings, grafted with nothing but ``tg.graft``.

OpenAI CLIP (built by open_clip, which keeps OpenAI's names: ``visual.conv1``,
``visual.class_embedding`` without its leading dimensions, ``in_proj_weight``, ``ln_pre``,
both towers in one file) into timm's CLIP ViT. Ground truth is external: timm's own
``checkpoint_filter_fn`` (``_convert_openai_clip``), and the image tower of open_clip run
side by side.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

import torchgraft as tg
from support import perturbed, save_sorted
from torchgraft.errors import InexactGraftError

open_clip = pytest.importorskip("open_clip")

WIDTH, EMBED = 64, 32


@pytest.fixture(autouse=True)
def _no_identification(monkeypatch):
    # OpenAI CLIP is in no zoo: these grafts are planned from the file alone.
    monkeypatch.setenv("TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:resnet18")


def _openai_clip():
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": WIDTH, "layers": 2},
        text_cfg={"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    )
    return perturbed(model, scale=0.5)


def _timm_clip(num_classes: int = 5) -> VisionTransformer:
    # timm's vit_base_patch32_clip_224 at a tiny size: pre-norm, LayerNorm eps 1e-5, QuickGELU
    return VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=WIDTH,
        depth=2,
        num_heads=WIDTH // 64,
        pre_norm=True,
        norm_layer=torch.nn.LayerNorm,
        act_layer="quick_gelu",
        num_classes=num_classes,
    )


def _assert_image_tower_equal(target: VisionTransformer, clip) -> None:
    """timm's pooled features through CLIP's projection equal CLIP's image embedding."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = target.eval().forward_head(target.forward_features(images), pre_logits=True)
        expected = clip.eval().encode_image(images)
        torch.testing.assert_close(pooled @ clip.visual.proj, expected, rtol=1e-5, atol=1e-5)


def _entry(report, key):
    return next(e for e in report.entries if e.target == key)


@pytest.mark.parametrize("form", ["state_dict", "sorted safetensors"])
def test_an_openai_clip_checkpoint_grafts_into_timms_clip_vit(tmp_path, form):
    clip = _openai_clip()
    target = _timm_clip()
    if form == "state_dict":
        report = tg.graft(target, clip.state_dict())
    else:
        # Name-sorted, the blocks' ln_1/ln_2 against norm1/norm2 rest on the natural order of
        # numbered names alone (no registration order, no source architecture to run):
        # refused, and loadable on purpose.
        source = save_sorted(clip, tmp_path / "clip.safetensors")
        with pytest.raises(InexactGraftError) as refused:
            tg.graft(_timm_clip(), source)
        assert "ln_1 [numbered-names]" in str(refused.value)
        assert "allow_uncertain=True" in str(refused.value)
        report = tg.graft(target, source, allow_uncertain=True)
    # the text tower is set aside, not matched against the image tower's same-shaped layers
    assert any("only 'visual.' holds the target's layers" in note for note in report.notes)
    assert {e.source for e in report.entries if e.source} <= {
        k for k in clip.state_dict() if k.startswith("visual.")
    }
    # timm's own converter, on the same tensors: every key but the new classifier
    expected = checkpoint_filter_fn(clip.state_dict(), _timm_clip(num_classes=EMBED))
    grafted = target.state_dict()
    for key, value in expected.items():
        if not key.startswith("head."):
            assert torch.equal(grafted[key], value), key
    assert _entry(report, "norm_pre.weight").source == "visual.ln_pre.weight"
    assert _entry(report, "norm.weight").source == "visual.ln_post.weight"
    _assert_image_tower_equal(target, clip)


def test_pre_and_post_norms_are_told_apart_by_the_words_of_their_names():
    clip = _openai_clip()
    report = tg.graft(_timm_clip(), clip.state_dict())
    assert _entry(report, "norm_pre.weight").evidence == "name-words"
    assert _entry(report, "norm.bias").evidence == "name-words"


def test_names_whose_words_contradict_the_registration_order_are_not_trusted():
    # The same file with ln_pre and ln_post swapped in registration order only: the names
    # say pre/post, the order says the opposite — neither proves the pairing.
    clip = _openai_clip()
    state = clip.state_dict()
    keys = list(state)
    pre = [k for k in keys if k.startswith("visual.ln_pre")]
    post = [k for k in keys if k.startswith("visual.ln_post")]
    moved = [k for k in keys if k not in pre]
    at = moved.index(post[-1]) + 1
    reordered = moved[:at] + pre + moved[at:]
    with pytest.raises(InexactGraftError) as refused:
        tg.graft(_timm_clip(), {k: state[k] for k in reordered})
    assert "norm_pre" in str(refused.value)


def _in_form(state: dict, form: str, tmp_path):
    """``state`` as given (registration order), or written as safetensors (names sorted)."""
    if form == "state_dict":
        return state
    from safetensors.torch import save_file

    path = tmp_path / "original.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, str(path))
    return path


def test_a_source_with_no_second_part_is_matched_whole():
    # The text tower alone makes CLIP a two-part file; a classifier's few tensors do not:
    # a plain checkpoint is never narrowed to one of its modules.
    clip = _openai_clip()
    visual = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    report = tg.graft(_timm_clip(), visual)
    assert not any("holds the target's layers" in note for note in report.notes)
    assert report.coverage > 0.95


def _ms_swin_state(model) -> dict:
    """A timm Swin's tensors as Microsoft's original repository saves them: each stage's
    patch merging at the end of its own stage (timm: at the start of the next), registered
    there, ``head.`` for ``head.fc.``, and the persistent index buffers."""
    import re

    state, out = model.state_dict(), {}
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    for key, value in state.items():
        if ".downsample." in key:
            continue
        out[key.replace("head.fc.", "head.")] = value
        stage = re.match(r"layers\.(\d+)\.", key)
        last_of_stage = stage and not any(
            k.startswith(f"layers.{stage[1]}.") and not k.startswith(f"layers.{stage[1]}.down")
            for k in list(state)[list(state).index(key) + 1 :]
        )
        if last_of_stage and int(stage[1]) + 1 in stages:
            for k, v in state.items():
                if k.startswith(f"layers.{int(stage[1]) + 1}.downsample."):
                    out[k.replace(f"layers.{int(stage[1]) + 1}.", f"layers.{stage[1]}.")] = v
        if key.endswith("attn.relative_position_bias_table"):
            index = model.get_submodule(key.rpartition(".")[0]).relative_position_index
            out[key.replace("bias_table", "index")] = index.clone()
    return out


@pytest.mark.parametrize("form", ["state_dict", "sorted safetensors"])
def test_a_microsoft_swin_checkpoint_grafts_into_timms_swin(tmp_path, form):
    from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

    def swin():
        return SwinTransformer(
            img_size=64, patch_size=4, embed_dim=24, depths=(2, 2, 2), num_heads=(1, 2, 4),
            window_size=4, num_classes=10,
        ).eval()  # fmt: skip

    original = _ms_swin_state(perturbed(swin(), scale=0.1))
    assert "layers.0.downsample.reduction.weight" in original  # the original layout
    source = _in_form(original, form, tmp_path)
    target = swin()
    report = tg.graft(target, source)
    assert report.coverage == 1.0
    expected = checkpoint_filter_fn(dict(original), swin())  # timm's own conversion
    for key, value in expected.items():
        assert torch.equal(target.state_dict()[key], value), key


def _fb_convnext_state(model) -> dict:
    """A timm ConvNeXt's tensors as Facebook's original repository names and registers them:
    ``downsample_layers`` (the stem and the three downsamplings) first, then ``stages.i.j``
    blocks (``gamma`` before ``dwconv``, ``pwconv1``/``pwconv2``), then ``norm`` and ``head``."""
    state = model.state_dict()
    out = {f"downsample_layers.0.{k[5:]}": v for k, v in state.items() if k.startswith("stem.")}
    for stage in range(1, 4):
        prefix = f"stages.{stage}.downsample."
        out |= {
            f"downsample_layers.{stage}.{k[len(prefix) :]}": v
            for k, v in state.items()
            if k.startswith(prefix)
        }
    for key, value in sorted(state.items(), key=lambda kv: not kv[0].endswith(".gamma")):
        if ".blocks." not in key:
            continue
        renamed = key.replace(".blocks.", ".").replace("conv_dw", "dwconv")
        out[renamed.replace("mlp.fc", "pwconv")] = value
    blocks = [k for k in out if k.startswith("stages.")]
    order = {k: n for n, k in enumerate(state)}  # blocks in model order, gamma first in each
    first = {k: min(order[o] for o in state if o.startswith(_block(k))) for k in blocks}
    out = {k: out[k] for k in out if not k.startswith("stages.")} | {
        k: out[k] for k in sorted(blocks, key=lambda k: (first[k], not k.endswith(".gamma")))
    }
    out |= {f"norm.{k[10:]}": v for k, v in state.items() if k.startswith("head.norm.")}
    out |= {f"head.{k[8:]}": v for k, v in state.items() if k.startswith("head.fc.")}
    return out


def _block(fb_key: str) -> str:
    stage, block = fb_key.split(".")[1:3]
    return f"stages.{stage}.blocks.{block}."


@pytest.mark.parametrize("form", ["state_dict", "sorted safetensors"])
def test_a_facebook_convnext_checkpoint_grafts_into_timms_convnext(tmp_path, form):
    import timm
    from timm.models.convnext import checkpoint_filter_fn

    def convnext():
        return timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()

    original = _fb_convnext_state(perturbed(convnext(), scale=0.1))
    assert next(iter(original)) == "downsample_layers.0.0.weight"  # the original layout
    source = _in_form(original, form, tmp_path)
    target = convnext()
    report = tg.graft(target, source)
    assert report.coverage == 1.0
    expected = checkpoint_filter_fn(dict(original), convnext())  # timm's own conversion
    assert set(expected) == set(target.state_dict())
    for key, value in expected.items():
        assert torch.equal(target.state_dict()[key], value), key
