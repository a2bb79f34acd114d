"""Fuzzing config *text*: whatever the bytes of ``--config FILE`` and the dotted overrides,
``load_config`` gives a ``RunConfig`` or a ``ConfigError``, and ``torchgraft train
--print-config`` exits 0 (printing a config that loads again) or 2 with an error message and
no traceback — never another exception, a crash, a hang or unbounded memory.

test_fuzz_plans.py already feeds random nested *mappings*; these cases are YAML as a person
or an attacker writes it, emitted from a random tree and then damaged:

- block and flow mappings and sequences, plain / quoted / literal / folded scalars, keys of
  every section and field plus odd ones (``<<``, ``~``, ``? [a]``, unicode, empty);
- anchors, aliases (defined or not), merge keys ``<<: *a``, small alias bombs;
- tags: ``!!python/object/apply:os.system`` and the other ``!!python/...`` tags, ``!!binary``,
  ``!!set``, ``!!omap``, ``!!timestamp``, ``!!int``/``!!float`` on words, local tags;
- scalars that stress the constructors: integers of thousands of digits, ``0x``/``0o``/``0b``
  and sexagesimal numbers, impossible dates, ``.nan``, ``1e400``, 100,000-character strings;
- damage to the text: tabs, a BOM, UTF-16/32 or Latin-1 bytes, NUL and control characters,
  duplicate keys, multi-document streams, ``%YAML``/``%TAG`` directives, nesting hundreds or
  tens of thousands deep, bytes flipped, cut or inserted;
- overrides ``--section.key VALUE``, ``--section.key=VALUE``, ``section.key=VALUE`` with
  values drawn from the same scalars and fragments.

Each case runs in a forked child (reader_forge.sandboxed_cases: memory limit, per-case alarm,
a kill for a hang), so a crash or a hang is a finding that names the case.
``bench/fuzz.py --config-text N`` runs the same cases by the thousand with a fresh seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import reader_forge as forge
from hypothesis import strategies as st
from test_fuzz_reader import collect

from torchgraft.cli.main import main
from torchgraft.engine.config.load import load_config
from torchgraft.errors import ConfigError

# ---- scalars, keys, tags -----------------------------------------------------------------------

SECTIONS = ["model", "weights", "graft", "head", "freeze", "optim", "schedule", "data", "train",
            "output"]  # fmt: skip
FIELDS = [
    "name", "kwargs", "in_chans", "source", "ema", "allow_globals", "strategy", "rules",
    "min_coverage", "num_classes", "dropout", "hidden", "policy", "bn", "include", "schedule",
    "kind", "freeze_epochs", "lr", "backbone_lr", "layer_decay", "weight_decay", "momentum",
    "betas", "warmup_epochs", "step_epochs", "gamma", "val_fraction", "image_size", "crop_pct",
    "interpolation", "mean", "std", "augment", "batch_size", "workers", "in_memory",
    "memory_limit_mb", "on_bad_image", "epochs", "seed", "device", "precision", "threads",
    "grad_accum", "clip_grad_norm", "mixup", "early_stopping", "monitor", "max_steps", "dir",
    "plots",
]  # fmt: skip
WORDS = [
    "sgd", "adamw", "cosine", "onecycle", "none", "head", "skip", "stop", "auto", "digits",
    "fp32", "bf16", "cpu", "val/acc1", "timm:test_resnet", "torchvision:resnet18",
    "handmade_models:TinyCNN", "os:system('true')", "true", "false", "yes", "no", "on", "off",
    "null", "~", "1e-3", "-1", "0", "-0", "0x1F", "0o17", "0b101", "1_000", "190:20:30",
    "1:2:3", ".inf", "-.inf", ".nan", "NaN", "1e400", "-1e400", "2001-12-14", "2001-02-30",
    "2001-12-14t21:59:43.10-05:00", "2001-13-45 25:61:61", "=", "<<", "@x", "`x", "%x", "|",
    ">", "!", "&", "*", "? x", "- x", "{", "[", "]", "}", "#c", ",", ":", "'x''y'", '"\\u0000"',
    '"\\ud800"', '"\\x1b[2J"', "'", '"', "/dev/zero", "../../etc", "é", "\u202e", "\x85",
]  # fmt: skip
TAGS = [
    "!!python/object/apply:os.system", "!!python/object/new:os.system",
    "!!python/name:os.system", "!!python/module:os", "!!python/object:argparse.Namespace",
    "!!python/tuple", "!!python/bytes", "!!binary", "!!set", "!!omap", "!!pairs",
    "!!timestamp", "!!int", "!!float", "!!bool", "!!null", "!!str", "!!seq", "!!map",
    "!!merge", "!!value", "!!yaml", "!custom", "!", "!<tag:yaml.org,2002:int>",
    "!<tag:yaml.org,2002:float>", "!<!>",
]  # fmt: skip
ANCHORS = ["a", "b", "c", "d", "e"]

_printable = st.characters(blacklist_categories=["Cs", "Cc"])
_quoted = st.text(max_size=12).map(json.dumps)  # a double-quoted YAML scalar (JSON escapes)
_single = st.text(_printable, max_size=12).map(lambda s: "'" + s.replace("'", "''") + "'")
SCALARS = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(WORDS),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 300).map(str),
    st.integers(4000, 6000).map(lambda n: "9" * n),  # past CPython's int-from-text limit
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    _quoted,
    _single,
    st.text(_printable, max_size=10),
    st.integers(1000, 100_000).map(lambda n: "x" * n),
)
KEYS = st.one_of(
    st.sampled_from(SECTIONS + FIELDS),
    st.sampled_from(["<<", "~", "null", "1", "true", "", "x y", "é", "model.name", "? [a]"]),
    _quoted,
)


@st.composite
def _decorated(draw, node: str) -> str:
    """``node`` with an optional tag and anchor in front."""
    prefix = ""
    if draw(st.integers(0, 7)) == 0:
        prefix += draw(st.sampled_from(TAGS)) + " "
    if draw(st.integers(0, 5)) == 0:
        prefix += "&" + draw(st.sampled_from(ANCHORS)) + " "
    return prefix + node


@st.composite
def flow_node(draw, depth: int = 0) -> str:
    """A node on one line: a scalar, an alias, ``[…]`` or ``{…}``."""
    choice = draw(st.integers(0, 12 if depth < 3 else 8))
    if choice <= 7:
        return draw(_decorated(draw(SCALARS)))
    if choice == 8:
        return "*" + draw(st.sampled_from(ANCHORS))
    items = draw(st.lists(flow_node(depth + 1), max_size=4))
    if choice <= 10:
        return draw(_decorated("[" + ", ".join(items) + "]"))
    keys = draw(st.lists(KEYS, min_size=len(items), max_size=len(items)))
    pairs = ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True))
    return draw(_decorated("{" + pairs + "}"))


@st.composite
def block_mapping(draw, indent: int = 0, depth: int = 0) -> str:
    """Lines of ``key: value`` at ``indent``, values on the line or nested below."""
    pad = " " * indent
    lines = []
    keys = st.sampled_from(SECTIONS) if depth == 0 and draw(st.booleans()) else KEYS
    for _ in range(draw(st.integers(0, 5))):
        key = draw(keys)
        kind = draw(st.integers(0, 12 if depth < 4 else 4))
        if key == "<<" or (kind == 0 and draw(st.booleans())):
            lines.append(f"{pad}<<: *{draw(st.sampled_from(ANCHORS))}")
        elif kind <= 4:
            lines.append(f"{pad}{key}: {draw(flow_node(depth))}")
        elif kind <= 8:  # a nested block mapping
            head = draw(_decorated("")).rstrip()
            lines.append(f"{pad}{key}:{(' ' + head) if head else ''}")
            lines.append(draw(block_mapping(indent + draw(st.sampled_from([1, 2, 4])), depth + 1)))
        elif kind <= 10:  # a block sequence
            lines.append(f"{pad}{key}:")
            for item in draw(st.lists(flow_node(depth + 1), max_size=3)):
                lines.append(f"{pad}  - {item}")
        else:  # a literal or folded scalar
            style = draw(st.sampled_from(["|", ">", "|-", ">+", "|2"]))
            lines.append(f"{pad}{key}: {style}")
            body = draw(st.lists(st.text(_printable, max_size=8), max_size=3))
            lines += [f"{pad}  {line}" for line in body]
    return "\n".join(line for line in lines if line)


def _nest(depth: int, flow: bool) -> str:
    if flow:
        return "[" * depth + "]" * depth
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "b: 1\n"


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

_FRAGMENTS = [
    "\t", "\ufeff", "\x00", "\x1b[2J", "\r", "\r\n", "\x85", "\u2028", "---\n", "...\n",
    "%YAML 1.1\n---\n", "%YAML 2.0\n---\n", "%TAG ! tag:x.org,2000:\n---\n", "? [a, b]\n: c\n",
    "? \n", ": x\n", "- \n", "model: {name: x}\nmodel: {name: y}\n", "train:\n  epochs: 1\n  epochs: 2\n",
    "&a x: *a\n", "*a: 1\n", "<<: [*a, *b]\n", "\\", "'", '"', "{", "[", "#", "@", "`",
]  # fmt: skip


@st.composite
def damaged(draw, text: str) -> str:
    """``text`` with fragments inserted, lines duplicated, characters deleted."""
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(text)))
        action = draw(st.integers(0, 3))
        if action == 0:
            text = text[:where] + draw(st.sampled_from(_FRAGMENTS)) + text[where:]
        elif action == 1:
            text = text[:where] + text[where + draw(st.integers(1, 8)) :]
        elif action == 2:
            lines = text.split("\n")
            line = draw(st.integers(0, len(lines) - 1))
            lines.insert(line, lines[line])
            text = "\n".join(lines)
        else:
            text = text[:where]
    return text


#: The embedded default config: its sections and fields, each with its default value.
DEFAULT = load_config(None, check_paths=False, check_names=False).to_dict()


@st.composite
def default_config_text(draw) -> str:
    """The default config's sections and fields as YAML, some values replaced by random
    nodes, sections anchored and reused by alias or merge key (so validation is reached)."""
    lines, anchored = [], []
    for section in draw(st.permutations(sorted(DEFAULT)))[: draw(st.integers(1, len(DEFAULT)))]:
        if anchored and draw(st.integers(0, 9)) == 0:
            lines.append(f"{section}: *{draw(st.sampled_from(anchored))}")
            continue
        free = [a for a in ANCHORS if a not in anchored]
        anchor = draw(st.sampled_from(free)) if free and draw(st.integers(0, 3)) == 0 else None
        lines.append(f"{section}:{f' &{anchor}' if anchor else ''}")
        if anchored and draw(st.integers(0, 7)) == 0:
            lines.append(f"  <<: *{draw(st.sampled_from(anchored))}")
        for name, value in DEFAULT[section].items():
            choice = draw(st.integers(0, 19))
            if choice == 0:
                continue
            # JSON is YAML: the default as it is, or a random node
            text = draw(flow_node()) if choice == 1 else json.dumps(value)
            lines.append(f"  {name}: {text}")
        if anchor:
            anchored.append(anchor)
    return "\n".join(lines) + "\n"


@st.composite
def yaml_text(draw) -> str:
    """A YAML document as text (see the module docstring)."""
    kind = draw(st.integers(0, 19))
    if kind <= 7:
        body = draw(default_config_text())
    elif kind == 8:
        body = _nest(draw(st.integers(1, 40_000)), flow=draw(st.booleans()))
    elif kind == 9:
        body = ALIAS_BOMB if draw(st.booleans()) else ALIAS_BOMB[: draw(st.integers(0, 400))]
    elif kind == 10:
        body = draw(flow_node())
    else:
        body = draw(block_mapping())
    if draw(st.integers(0, 7)) == 0:  # a multi-document stream
        body += "\n---\n" + draw(block_mapping())
    return draw(damaged(body)) if draw(st.integers(0, 2)) == 0 else body


ENCODINGS = ["utf-8"] * 20 + ["utf-8-sig", "utf-16", "utf-16-be", "utf-32", "latin-1"]


@st.composite
def overrides(draw) -> list[str]:
    words: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        key = f"{draw(st.sampled_from(SECTIONS) | KEYS)}.{draw(st.sampled_from(FIELDS) | KEYS)}"
        if draw(st.integers(0, 9)) == 0:
            key = draw(st.sampled_from(["", ".", "..", "a..b", "model", "x.y.z", "-", "=="]))
        value = draw(SCALARS | flow_node() | st.sampled_from(_FRAGMENTS))
        form = draw(st.integers(0, 9))
        if form <= 3 and not value.startswith("-"):  # "--debug" as a value is a flag
            words += ["--" + key, value]
        elif form <= 6:
            words.append(f"--{key}={value}")
        elif form <= 8:
            words.append(f"{key}={value}")
        else:
            words.append("--" + key)  # a key without its value
    return words


@st.composite
def config_case(draw) -> tuple[str, str, list[str]]:
    """``(text, encoding, overrides)``."""
    return draw(yaml_text()), draw(st.sampled_from(ENCODINGS)), draw(overrides())


CONFIG_TEXT_CASES = config_case()

# ---- the check ---------------------------------------------------------------------------------


def write_config(folder: Path, text: str, encoding: str) -> Path:
    path = folder / "run.yaml"
    errors = "surrogatepass" if encoding.startswith("utf") else "replace"
    path.write_bytes(text.encode(encoding, errors))
    return path


def check(case) -> list[str]:
    """Labels ``load_config:…`` and ``cli:…``; anything not allowed raises (a finding)."""
    text, encoding, words = case
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), text, encoding)
        try:
            load_config(path, words, check_paths=False, check_names=False)
            labels = ["load_config:config"]
        except ConfigError:
            labels = ["load_config:ConfigError"]
        status, out, err = run_cli(["train", "--print-config", "--config", str(path), *words])
        if status == 0:
            reread = Path(folder) / "printed.yaml"
            reread.write_text(out, encoding="utf-8")
            load_config(reread, check_paths=False, check_names=False)  # what it printed loads
            labels.append("cli:0")
        elif (
            status == 2
            and err.startswith("torchgraft")
            and "Traceback" not in err
            and ("internal error" not in err)
        ):
            labels.append("cli:2")
        else:
            raise AssertionError(f"train --print-config: exit status {status}: {err[-1500:]}")
    return labels


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``torchgraft ARGV`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's own errors: one line, status 2
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def fuzz(cases: list) -> tuple[dict[str, int], list[str]]:
    """Every case in sandboxed children: (label counts, findings)."""
    return forge.sandboxed_cases(cases, check, case_seconds=20, peak_mb=1024)


# ---- the default suite -------------------------------------------------------------------------


def test_random_config_text_gives_a_config_or_a_config_error():
    cases = collect(CONFIG_TEXT_CASES, 200)
    counts, findings = fuzz(cases)
    assert findings == [], "\n".join(findings)
    # The cases reach both outcomes, in the function and on the command line (how many are
    # valid configs depends on the draw: a few in 200).
    for label in ("load_config:ConfigError", "cli:2"):
        assert counts[label] > 20, counts
    for label in ("load_config:config", "cli:0"):
        assert counts[label] >= 1, counts


def test_an_escaped_exception_or_a_traceback_on_the_command_line_is_a_finding(monkeypatch):
    # Negative control: the check fails on an untyped error, and on a CLI that prints a
    # traceback or exits 1, each by case.
    import torchgraft.engine.config.load as config_module

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(config_module, "parse_overrides", broken)
    counts, findings = fuzz([("train:\n  epochs: 1\n", "utf-8", ["--train.seed", "1"])])
    assert counts == {}
    assert len(findings) == 1
    assert findings[0].startswith("case 0: escaped: KeyError: 'boom'")
    monkeypatch.undo()
    import torchgraft.cli.train_cmd as train_cmd

    monkeypatch.setattr(train_cmd, "run", broken)  # the CLI: "internal error", status 1
    counts, findings = fuzz([("train: {}\n", "utf-8", [])])
    assert counts == {}
    assert len(findings) == 1, findings
    assert "exit status 1" in findings[0]
    assert "internal error: KeyError" in findings[0]


# ---- findings of bench/fuzz.py --config-text (seed 3 and the default sample), minimal -------
#: YAML that the safe loader's constructors turn into exceptions other than YAMLError, or
#: into a recursive mapping: each must be a ConfigError naming the file.
FOUND = {
    "int-over-4300-digits": "train:\n  epochs: " + "9" * 5000 + "\n",
    "empty-int-tag": "train:\n  epochs: !!int\n",
    "int-tag-on-a-word": "train:\n  epochs: !!int x\n",
    "empty-float-tag": "optim:\n  lr: !!float ''\n",
    "float-tag-on-a-word": "optim:\n  lr: !!float x\n",
    "bool-tag-on-a-word": "train:\n  sync_bn: !!bool x\n",
    "impossible-date": "output:\n  name: 2001-02-30\n",
    "timestamp-tag-on-a-word": "output:\n  name: !!timestamp x\n",
    "alias-inside-its-anchor": "model: &a\n  kwargs: *a\n",
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_yaml_the_constructors_cannot_build_is_a_config_error(tmp_path, name):
    path = write_config(tmp_path, FOUND[name], "utf-8")
    with pytest.raises(ConfigError, match=r"run\.yaml"):
        load_config(path, check_paths=False, check_names=False)
    status, _, err = run_cli(["train", "--print-config", "--config", str(path)])
    assert status == 2, err
    assert "internal error" not in err


@pytest.mark.parametrize("value", ["9" * 5000, "!!int", "!!float x", "2001-02-30", "!!bool x"])
def test_an_override_value_the_constructors_cannot_build_is_a_config_error(value):
    with pytest.raises(ConfigError):
        load_config(None, ["--train.seed", value], check_paths=False, check_names=False)
