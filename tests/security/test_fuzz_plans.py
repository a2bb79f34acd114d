"""Fuzzing the matcher and the config validation: random state_dicts and rename rules into
``tg.plan_graft`` give a plan or a typed torchgraft error; random configs into
``tg.load_config`` give a config or a ``ConfigError`` — never another exception.
``bench/fuzz.py`` runs the same cases by the thousand."""

from __future__ import annotations

import functools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchgraft as tg
from torchgraft.errors import ConfigError, TorchgraftError

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# ---- the matcher ---------------------------------------------------------------------------


@functools.cache
def target_model() -> nn.Module:
    """One small target for every case: a plan never changes it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    return model.append(nn.Linear(36, 2)).eval()


_components = st.sampled_from(["0", "1", "4", "conv", "bn", "fc", "module", "weight", "bias"])
_key = st.lists(_components | st.text(max_size=4), min_size=1, max_size=4).map(".".join)
_shape = st.lists(st.sampled_from([0, 1, 2, 3, 4, 5]), max_size=4)
_dtype = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.uint8])
STATE_DICTS = st.dictionaries(
    _key, st.tuples(_shape, _dtype).map(lambda s: torch.zeros(s[0], dtype=s[1])), max_size=12
)
_template_part = st.sampled_from(["{i}", "{name*}", "{x}", "weight", "0", "1", "conv", "*", "{"])
_template = st.lists(_template_part, min_size=1, max_size=4).map(".".join)
_regex = st.sampled_from(["^module\\.", "(", "[a-z]+", "^", ".*", "\\d", "(?P<x>a)"])
RULES = st.lists(
    st.one_of(
        st.fixed_dictionaries({"from": _template, "to": _template}),
        st.fixed_dictionaries({"pattern": _regex, "replace": st.text(max_size=5)}),
        st.dictionaries(st.sampled_from(["from", "to", "pattern", "x"]), st.text(max_size=6)),
    ),
    max_size=4,
)
STRATEGIES = st.sampled_from(["auto", "exact", "shape", "order", "rules", "nonsense"])
MATCHER_CASES = st.tuples(STATE_DICTS, RULES | st.none(), STRATEGIES)


def plan_or_typed_error(case) -> str:
    """'plan' or 'refused'; any other exception escapes (a finding)."""
    state_dict, rules, strategy = case
    try:
        tg.plan_graft(target_model(), state_dict, strategy=strategy, rules=rules)
    except TorchgraftError:
        return "refused"
    return "plan"


# Each plan traces the target's forward pass (about 0.2 s on two shared cores): 60 cases here,
# thousands in bench/fuzz.py.
@settings(FUZZ, max_examples=60)
@given(case=MATCHER_CASES)
def test_random_state_dicts_and_rules_give_a_plan_or_a_typed_error(case):
    plan_or_typed_error(case)


# ---- the config ----------------------------------------------------------------------------

_sections = ["model", "weights", "graft", "freeze", "optim", "schedule", "data", "train", "head"]
_fields = [
    "name", "lr", "epochs", "batch_size", "source", "policy", "kind", "dropout", "seed",
    "image_size", "workers", "on_bad_image", "momentum", "monitor", "every", "epoch", "x",
]  # fmt: skip
_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["sgd", "cosine", "none", "skip", "auto", "1e-3", "-1", "nan"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
CONFIGS = st.dictionaries(
    st.sampled_from(_sections) | st.text(max_size=5),
    st.dictionaries(st.sampled_from(_fields), _value, max_size=4) | _value,
    max_size=4,
)


def config_or_config_error(document) -> str:
    """'config' or 'refused'; any other exception escapes (a finding)."""
    try:
        tg.load_config(document, check_paths=False, check_names=False)
    except ConfigError:
        return "refused"
    return "config"


@FUZZ
@given(document=CONFIGS)
def test_random_configs_give_a_config_or_a_config_error(document):
    config_or_config_error(document)


# Findings of bench/fuzz.py (seed 20261130), fixed; kept as the cases that found them.
def test_order_pairing_a_scalar_with_a_conv_weight_is_a_typed_error():
    plan_or_typed_error(({"module": torch.tensor(0.0, dtype=torch.float16)}, None, "order"))


def test_a_key_holding_a_superscript_digit_is_planned_or_refused():
    source = {
        "module.4W": torch.zeros((), dtype=torch.half),
        "weight.bias.x.³": torch.zeros(()),
        ".": torch.zeros(1, dtype=torch.int64),
    }
    plan_or_typed_error((source, None, "shape"))
