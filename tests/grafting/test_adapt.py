"""Adaptations: input channels, numel-equal reshapes, class rows, and what cannot be adapted.

Expected values are small hand computations, or the output of an unadapted model on an
equivalent input (a grey image repeated on three channels, say).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchgraft.errors import GraftError
from torchgraft.grafting.api import graft, plan_graft
from torchgraft.grafting.graft_plan import Action
from torchgraft.grafting.values.adapt import AdaptContext, apply_adaptation, propose
from torchgraft.model.anatomy import spec_of
from torchgraft.model.spec import attach_spec

# --- input channels: values ----------------------------------------------------------------

#: A first-conv kernel with 2 output channels, 3 input channels, 1x1 spatial.
KERNEL = torch.tensor([[1.0, 2.0, 4.0], [-1.0, 0.5, 3.0]]).reshape(2, 3, 1, 1)


def first_conv_adapt(mode: str | None, wanted: int, pick=None):
    context = AdaptContext(first_conv_key="stem.weight", in_chans_mode=mode, pick=pick)
    return propose("stem.weight", (2, wanted, 1, 1), (2, 3, 1, 1), context)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("sum", [[7.0], [2.5]]),
        ("mean", [[7.0 / 3], [2.5 / 3]]),
        ("pick", [[1.0], [-1.0]]),  # default pick: the first channel
        (None, [[7.0], [2.5]]),  # default for one channel: sum
    ],
)
def test_three_to_one_channel_values(mode, expected):
    action, adapt, detail = first_conv_adapt(mode, 1)
    assert action is Action.ADAPT
    assert f"3→1 input channels ({mode or 'sum'})" in detail
    value = apply_adaptation(KERNEL, torch.zeros(2, 1, 1, 1), adapt)
    assert torch.allclose(value, torch.tensor(expected).reshape(2, 1, 1, 1))


def test_pick_takes_the_named_channels():
    _action, adapt, _ = first_conv_adapt("pick", 2, pick=(2, 0))
    value = apply_adaptation(KERNEL, torch.zeros(2, 2, 1, 1), adapt)
    assert adapt["pick"] == [2, 0]
    assert value.flatten().tolist() == [4.0, 1.0, 3.0, -1.0]


def test_three_to_four_repeat_tiles_and_scales():
    action, adapt, _ = first_conv_adapt("repeat", 4)
    assert action is Action.ADAPT
    assert adapt["mode"] == "repeat"
    value = apply_adaptation(KERNEL, torch.zeros(2, 4, 1, 1), adapt)
    expected = torch.tensor([[1.0, 2.0, 4.0, 1.0], [-1.0, 0.5, 3.0, -1.0]]) * 0.75
    assert torch.allclose(value.reshape(2, 4), expected)


def test_default_for_several_channels_is_repeat():
    _, adapt, _ = first_conv_adapt(None, 4)
    assert adapt["mode"] == "repeat"


@pytest.mark.parametrize(
    ("mode", "wanted", "pick", "message"),
    [
        ("sum", 2, None, "makes 1 channel; the target takes 2"),
        ("mean", 4, None, "makes 1 channel; the target takes 4"),
        ("pick", 2, (0,), r"pick=\[0\] must name 2 source channels in 0\.\.2"),
        ("pick", 1, (3,), r"pick=\[3\] must name 1 source channels in 0\.\.2"),
        ("bogus", 1, None, "in_chans mode 'bogus' is not one of sum, mean, repeat, pick"),
    ],
)
def test_impossible_channel_requests_are_refused(mode, wanted, pick, message):
    with pytest.raises(GraftError, match=message):
        first_conv_adapt(mode, wanted, pick)


# --- input channels: through graft, checked by function ------------------------------------


def test_grey_model_with_sum_equals_rgb_model_on_a_repeated_grey_image(helpers):
    rgb = helpers.randomize(helpers.TinyNet(in_chans=3), seed=4).eval()
    grey = helpers.TinyNet(in_chans=1)
    report = graft(grey, rgb.state_dict(), in_chans_mode="sum")
    entry = next(e for e in report.entries if e.target == "conv1.weight")
    assert entry.action is Action.ADAPT
    assert entry.adapt == {"kind": "in_chans", "mode": "sum"}
    assert report.coverage == 1.0
    image = torch.randn(2, 1, 8, 8)
    expected = rgb(image.expand(2, 3, 8, 8))
    assert torch.allclose(grey.eval()(image), expected, rtol=1e-5, atol=1e-5)


def test_six_channel_repeat_model_equals_rgb_model_on_a_doubled_image(helpers):
    rgb = helpers.randomize(helpers.TinyNet(in_chans=3), seed=5).eval()
    six = helpers.TinyNet(in_chans=6)
    report = graft(six, rgb.state_dict(), in_chans_mode="repeat")
    assert report.by_action(Action.ADAPT)[0].detail == "first conv 3→6 input channels (repeat)"
    image = torch.randn(2, 3, 8, 8)
    doubled = torch.cat([image, image], dim=1)
    assert torch.allclose(six.eval()(doubled), rgb(image), rtol=1e-5, atol=1e-5)


def test_only_the_first_conv_is_channel_adapted():
    """Another conv whose input width differs is a skip, not a channel adaptation."""
    context = AdaptContext(first_conv_key="stem.weight")
    action, adapt, detail = propose("body.weight", (4, 2, 3, 3), (4, 3, 3, 3), context)
    assert action is Action.SKIP_SHAPE
    assert adapt is None
    assert detail == "shape [4, 3, 3, 3] cannot fill [4, 2, 3, 3]"


# --- reshapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "source"),
    [
        ((8, 4), (8, 4, 1, 1)),  # Linear <- 1x1 conv
        ((8, 4, 1, 1), (8, 4)),  # 1x1 conv <- Linear
        ((96,), (96, 1, 1)),  # layer scale (C,) <- (C, 1, 1)
        ((96, 1, 1), (96,)),
        ((6, 16), (6, 4, 2, 2)),  # Linear <- k x k conv (VGG's first classifier layer)
        ((1, 1, 8), (8,)),
    ],
)
def test_numel_equal_reshapes_where_roles_agree(target, source):
    action, adapt, detail = propose("x.weight", target, source, AdaptContext())
    assert action is Action.RESHAPE
    assert adapt == {"kind": "reshape"}
    assert detail == "same elements, other layout"
    value = torch.arange(float(torch.Size(source).numel())).reshape(source)
    out = apply_adaptation(value, torch.zeros(target), adapt)
    assert out.shape == torch.Size(target)
    assert out.flatten().tolist() == value.flatten().tolist()


@pytest.mark.parametrize(
    ("target", "source"),
    [
        ((4, 6), (6, 4)),  # a transpose is not a reshape
        ((2, 12), (4, 6)),  # other output width
        ((3, 8), (4, 6)),
        ((4,), (5,)),
        ((10, 512), (1000, 512)),  # a head for other classes
    ],
)
def test_unreconcilable_shapes_are_a_skip_with_detail(target, source):
    action, adapt, detail = propose("x.weight", target, source, AdaptContext())
    assert action is Action.SKIP_SHAPE
    assert adapt is None
    assert detail == f"shape {list(source)} cannot fill {list(target)}"


class ConvHeadNet(nn.Module):
    """A classifier whose head is a 1x1 convolution and whose scale is (C, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4, 1, 1))
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x)) * self.scale
        return self.head(x.mean((2, 3), keepdim=True)).flatten(1)


class LinearHeadNet(nn.Module):
    """The same function with a Linear head and a (C,) scale."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x)) * self.scale[:, None, None]
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("source_cls", "target_cls"), [(ConvHeadNet, LinearHeadNet), (LinearHeadNet, ConvHeadNet)]
)
def test_reshape_grafts_keep_the_function(helpers, source_cls, target_cls):
    source = helpers.randomize(source_cls(), seed=6).eval()
    target = target_cls()
    report = graft(target, source.state_dict())
    reshaped = {e.target for e in report.by_action(Action.RESHAPE)}
    assert reshaped == {"scale", "head.weight"}
    assert report.coverage == 1.0
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(target.eval()(x), source(x), rtol=1e-6, atol=1e-6)


# --- class rows ----------------------------------------------------------------------------


def with_classes(model: nn.Module, classes) -> nn.Module:
    spec = spec_of(model)
    return attach_spec(model, spec.with_head(len(classes), tuple(classes)))


SOURCE_CLASSES = ("tench", "goldfish", "great_white_shark", "tiger shark", "hammerhead")


def test_class_rows_copy_shared_classes_and_keep_the_rest(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=5), seed=7)
    target = with_classes(
        helpers.TinyNet(num_classes=4), ["Hammerhead", "cat", "Great White Shark", "dog"]
    )
    before = helpers.snapshot(target)
    report = graft(target, source.state_dict(), source_classes=SOURCE_CLASSES)
    entry = next(e for e in report.entries if e.target == "fc.weight")
    assert entry.action is Action.ADAPT
    assert entry.adapt == {"kind": "class_rows", "rows": [[4, 0], [2, 2]]}
    assert entry.detail == "2 of 4 classes start from pretrained rows"
    state, src = target.state_dict(), source.state_dict()
    for key in ("fc.weight", "fc.bias"):
        assert torch.equal(state[key][0], src[key][4])  # hammerhead
        assert torch.equal(state[key][2], src[key][2])  # great white shark
        assert torch.equal(state[key][1], before[key][1])  # cat: fresh
        assert torch.equal(state[key][3], before[key][3])  # dog: fresh


def test_class_rows_need_names_on_both_sides(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=5), seed=7)
    target = with_classes(helpers.TinyNet(num_classes=4), ["hammerhead", "cat", "tench", "dog"])
    plan = plan_graft(target, source.state_dict())  # source classes unknown
    entry = next(e for e in plan.entries if e.target == "fc.weight")
    assert entry.action is Action.SKIP_SHAPE
    assert entry.detail == "shape [5, 4] cannot fill [4, 4]"


def test_class_rows_with_no_shared_class_load_nothing_into_the_head(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=5), seed=7)
    target = with_classes(helpers.TinyNet(num_classes=2), ["cat", "dog"])
    before = helpers.snapshot(target)
    report = graft(target, source.state_dict(), source_classes=SOURCE_CLASSES)
    entry = next(e for e in report.entries if e.target == "fc.weight")
    assert entry.detail == "0 of 2 classes start from pretrained rows"
    assert torch.equal(target.state_dict()["fc.weight"], before["fc.weight"])


def test_class_rows_reorder_a_head_with_the_same_number_of_classes(helpers):
    source = helpers.randomize(helpers.TinyNet(num_classes=3), seed=8)
    target = with_classes(helpers.TinyNet(num_classes=3), ["dog", "cat", "bird"])
    graft(target, source.state_dict(), source_classes=("cat", "dog", "bird"))
    state, src = target.state_dict(), source.state_dict()
    assert torch.equal(state["fc.weight"][0], src["fc.weight"][1])  # dog
    assert torch.equal(state["fc.weight"][1], src["fc.weight"][0])  # cat


# --- applying an adaptation that does not fit ----------------------------------------------


def test_a_copy_of_the_wrong_shape_is_a_graft_error():
    with pytest.raises(GraftError, match=r"gives shape \[5\], target needs \[2, 3\]"):
        apply_adaptation(torch.zeros(5), torch.zeros(2, 3), None)


def test_an_unknown_adaptation_kind_is_a_graft_error():
    with pytest.raises(GraftError, match="unknown adaptation kind 'rotate'"):
        apply_adaptation(torch.zeros(6), torch.zeros(2, 3), {"kind": "rotate"})


@pytest.mark.parametrize(
    ("source", "target", "adapt"),
    [
        (torch.zeros(5), torch.zeros(2, 3), {"kind": "reshape"}),
        (
            torch.zeros(4, 3, 3, 3),
            torch.zeros(4, 1, 3, 3),
            {"kind": "in_chans", "mode": "pick", "pick": [7]},
        ),
        (torch.zeros(3, 4), torch.zeros(2, 4), {"kind": "class_rows", "rows": [[9, 0]]}),
    ],
    ids=["reshape-numel", "pick-range", "class-row-range"],
)
def test_adaptations_that_do_not_fit_raise_graft_error(source, target, adapt):
    with pytest.raises(GraftError):
        apply_adaptation(source, target, adapt)


def test_an_unknown_channel_mode_in_a_plan_is_refused():
    with pytest.raises(GraftError, match="bogus"):
        apply_adaptation(KERNEL, torch.zeros(2, 1, 1, 1), {"kind": "in_chans", "mode": "bogus"})
