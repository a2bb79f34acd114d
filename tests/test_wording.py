"""``option()``: one name, spelled as the caller writes it — a Python argument, a command-line
flag, or a run-configuration key."""

from __future__ import annotations

import pytest

from torchgraft.wording import in_cli, listing, option, renamed, speaking_cli


@pytest.mark.parametrize(
    ("name", "value", "python", "cli"),
    [
        ("strategy", "auto", 'strategy="auto"', "--strategy auto"),
        ("strategy", None, "strategy", "--strategy"),
        ("min_coverage", 0.3, "min_coverage=0.3", "--min-coverage 0.3"),
        (
            "source_model",
            "timm:resnet50",
            'source_model="timm:resnet50"',
            "--verify-with timm:resnet50",
        ),
        ("allow_partial", True, "allow_partial=True", "--allow-partial"),
        ("allow_uncertain", True, "allow_uncertain=True", "--allow-uncertain"),
        ("trust", True, "trust=True", "--trust-checkpoint"),
        (
            "allow_globals",
            ["a.B", "c.D"],
            'allow_globals=["a.B", "c.D"]',
            "--allow-global a.B --allow-global c.D",
        ),
        ("rules", "my rules.yaml", 'rules="my rules.yaml"', "--rules 'my rules.yaml'"),
    ],
)
def test_python_argument_and_cli_flag(name, value, python, cli):
    assert option(name, value) == python
    assert not in_cli()
    with speaking_cli():
        assert in_cli()
        assert option(name, value) == cli
    assert option(name, value) == python  # the block ends, the Python wording is back


def test_a_command_can_spell_a_flag_its_own_way():
    with speaking_cli({"on_bad_image": "--skip-bad"}):
        assert option("on_bad_image") == "--skip-bad"
        assert option("strategy", "auto") == "--strategy auto"


def test_renamed_options_become_config_keys_in_either_style():
    names = {"min_coverage": "graft.min_coverage"}
    with renamed(names):
        assert option("min_coverage", 0.3) == "graft.min_coverage=0.3"
        assert option("trust", True) == "trust=True"  # not renamed: unchanged
    with speaking_cli(), renamed(names):
        assert option("min_coverage", 0.3) == "--graft.min_coverage 0.3"
        with renamed({"allow_globals": "weights.allow_globals", "ema": "weights.ema"}):
            # overrides take YAML values, one shell word each
            assert option("allow_globals", ["a.B", "c.D"]) == "--weights.allow_globals '[a.B, c.D]'"
            assert option("ema", True) == "--weights.ema true"
        assert option("source_model") == "--verify-with"
        with renamed({"source_model": "graft.verify_with"}):
            assert option("min_coverage") == "--graft.min_coverage"  # outer renames hold
            assert option("source_model") == "--graft.verify_with"


def test_listing_says_how_many_when_it_cuts():
    assert listing(["a", "b"]) == "a, b"
    assert listing(["a", "b", "c", "d", "e"]) == "a, b, c, … (5 in all)"
    assert listing(range(10), limit=1) == "0, … (10 in all)"
