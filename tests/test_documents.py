"""torchgraft.checkpoint.documents and torchgraft.checkpoint.regular_files: every JSON/YAML document is read from a
regular file within bounds (size, nesting, YAML alias expansion) — a FIFO, a device, an
alias bomb or a million-deep list is a typed error naming the file, in bounded time."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from torchgraft.checkpoint.documents import (
    DocumentLimits,
    parse_json,
    parse_yaml,
    read_json,
    read_yaml,
)
from torchgraft.checkpoint.regular_files import FileProblem, read_regular
from torchgraft.errors import ConfigError


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The classic billion laughs: each level lists the previous one ``width`` times."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_built():
    text = alias_bomb()
    assert len(text) < 2000  # 1.8 KB that would expand to ~387 million values
    started = time.process_time()
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_yaml(text, "bomb.yaml", ConfigError)
    assert time.process_time() - started < 1.0  # CPU time: ~5 ms; expanding it takes minutes


def test_aliases_and_merge_keys_a_config_uses_still_work():
    text = "base: &base {lr: 0.1, epochs: 2}\nrun:\n  <<: *base\n  epochs: 3\nagain: *base\n"
    assert parse_yaml(text, "x", ConfigError) == {
        "base": {"lr": 0.1, "epochs": 2},
        "run": {"lr": 0.1, "epochs": 3},
        "again": {"lr": 0.1, "epochs": 2},
    }


def test_an_alias_counts_the_whole_node_it_names():
    """Ten aliases of a 1,000-value list are 10,000 values, over a bound of 5,000."""
    listing = "[" + ", ".join(["1"] * 1000) + "]"
    text = f"a: &a {listing}\nb: [{', '.join(['*a'] * 10)}]\n"
    with pytest.raises(ConfigError, match="5,000 values"):
        parse_yaml(text, "x", ConfigError, DocumentLimits(max_nodes=5_000))
    assert len(parse_yaml(text, "x", ConfigError, DocumentLimits(max_nodes=20_000))["b"]) == 10


@pytest.mark.parametrize("parse", [parse_yaml, parse_json], ids=["yaml", "json"])
@pytest.mark.parametrize("depth", [65, 1_000, 1_000_000])
def test_deep_nesting_is_refused_not_a_recursion_error(parse, depth):
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        parse("[" * depth + "]" * depth, "deep", ConfigError)


@pytest.mark.parametrize("parse", [parse_yaml, parse_json], ids=["yaml", "json"])
def test_nesting_up_to_the_bound_reads(parse):
    assert parse("[" * 64 + "]" * 64, "ok", ConfigError) is not None


def test_json_nesting_in_objects_is_measured_too():
    text = '{"a": ' * 70 + "1" + "}" * 70
    with pytest.raises(ConfigError, match="nested more than 64"):
        parse_json(text, "x", ConfigError)


def test_yaml_python_tags_are_refused():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("!!python/object/apply:os.system ['true']", "x", ConfigError)


def test_special_files_are_refused_by_kind_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in (
        (fifo, "a FIFO"),
        ("/dev/zero", "a character device"),
        (tmp_path, "a folder"),
        (tmp_path / "absent", "no such file"),
    ):
        refused = returns_within(lambda: read_yaml(path, ConfigError))  # noqa: B023
        assert isinstance(refused, ConfigError), refused
        assert kind in str(refused)
        assert str(path) in str(refused)


def returns_within(function, seconds: float = 30.0):
    """What ``function()`` returned or raised; fails if it blocks (a FIFO without a writer
    blocks an ordinary open forever)."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_outcome(function)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"blocked for {seconds} s"
    return outcome[0]


def _outcome(function):
    try:
        return function()
    except Exception as exc:  # the test looks at it
        return exc


def test_a_link_to_a_device_is_refused(tmp_path):
    link = tmp_path / "model.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="character device"):
        read_json(link, ConfigError)


def test_a_file_longer_than_the_bound_is_refused_whatever_its_size_claims(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(["x" * 100] * 100))
    with pytest.raises(ConfigError, match="longer than the 1,000 bytes"):
        read_json(path, ConfigError, DocumentLimits(max_bytes=1000))
    with pytest.raises(FileProblem):
        read_regular(path, 1000)
    assert len(read_regular(path, 100_000)) == path.stat().st_size


def test_a_file_problem_is_an_os_error():
    # code that handles unreadable files (OSError) handles special files the same way
    with pytest.raises(OSError, match="character device"):
        read_regular("/dev/zero", 10)
