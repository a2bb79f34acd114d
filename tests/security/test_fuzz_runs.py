"""Fuzzing run directories: whatever a stranger's run folder holds, the readers of a run give a
result or a torchgraft error — never another exception, a crash, a hang or unbounded memory.

Each case starts from a copy of one real finished run (TinyCNN, one epoch on digit images,
grafted from a weights file so that it has a ``graft.json``) and damages it with one to
three of these mutations:

- ``edit``: a document (``model.json``, ``state/last.json``, ``graft.json``, ``policy.json``,
  ``config.yaml``, ``metrics.jsonl``) parsed, one of its values — any field, at any depth, the
  root included — replaced, deleted, wrapped or added to, with random JSON values of every
  type (huge integers, NaN, infinities, deep lists, builder names, paths, escape codes);
- ``record``: the record inside ``model.safetensors`` edited the same way and saved again
  with ``save_model`` (tensors dropped, reshaped or retyped too), ``model.json`` then kept,
  deleted or left one save behind;
- ``state``: the resume state loaded, its fields given values of the wrong types (tensors of
  any shape and dtype included), saved again, and, as an attacker would, its sha256 written
  into ``state/last.json``;
- ``bytes``: any file's bytes flipped, inserted, deleted or cut (hashes recomputed or not);
- ``special``: a file (or ``state/``) swapped for a FIFO, a folder, an empty or a sparse
  oversized file, a link to ``/dev/zero``, to ``/``, to a missing file or to itself;
- ``text`` and ``deep``: a document replaced by random text (for ``config.yaml``, the YAML of
  test_fuzz_config_text.py), or nested up to 100,000 levels deep.

Then the readers run: ``read_model_document`` and ``tg.load`` with and without ``trust_run``,
``load_state``, ``write_report(count=0)``; on some cases also the report with examples,
``load_for_prediction`` + ``predict_files``, one more epoch through ``tg.fit(resume=…)``
(its size pinned by overrides: training cost is not what is tested) and ``export_run``.
Allowed: success, or a :class:`~torchgraft.errors.TorchgraftError`. Each case runs in a
forked child (reader_forge.sandboxed_cases: memory limit, per-case alarm, a kill for a hang),
so a crash or a hang is a finding that names the case. ``bench/fuzz.py --run-dir N`` runs the
same cases by the thousand with a fresh seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import reader_forge as forge
import torch
import yaml
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_fuzz_config_text import yaml_text
from test_fuzz_reader import collect

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.engine.artifacts import read_model_document, save_model
from torchgraft.engine.console import RunConsole
from torchgraft.engine.export.write import export_run
from torchgraft.engine.inference import load_for_prediction, predict_files
from torchgraft.engine.report.write import write_report
from torchgraft.engine.resume import load_state
from torchgraft.errors import CheckpointError, TorchgraftError

# ---- the run every case starts from ------------------------------------------------------------


@dataclass(frozen=True)
class BaseRun:
    """A finished run (copied by every case) and a few of its images."""

    run: Path
    images: tuple[Path, ...]


def make_base_run(root: Path) -> BaseRun:
    """One epoch of TinyCNN on digit images, grafted from a weights file (~10 s)."""
    from handmade_models import TinyCNN

    images = write_digit_folder(root / "digits")
    torch.manual_seed(0)
    save_file(TinyCNN().state_dict(), root / "weights.safetensors")
    config = tiny_config(
        images, root / "runs", train={"epochs": 1},
        weights={"source": str(root / "weights.safetensors")},
    )  # fmt: skip
    run = tg.fit(config, console=RunConsole(quiet=True))
    return BaseRun(run.dir, tuple(sorted(images.rglob("*.png"))[::12]))


STATE = "state/epoch-0000.pt"
FILES = ["model.json", "model.safetensors", "config.yaml", "state/last.json", STATE,
         "metrics.jsonl", "graft.json", "policy.json"]  # fmt: skip
DOCUMENTS = ["model.json", "state/last.json", "graft.json", "policy.json", "config.yaml",
             "metrics.jsonl"]  # fmt: skip

# ---- values ------------------------------------------------------------------------------------

FIELD_NAMES = [
    "spec", "build", "classes", "preprocessing", "metrics", "epoch", "ema", "format",
    "content_sha256", "sha256", "model", "kwargs", "in_chans", "num_classes", "head",
    "dropout", "hidden", "input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode",
    "fixed_input_size", "head_paths", "feature_dim", "first_conv", "layer_groups", "name",
    "members", "weights", "file", "loss", "acc1", "split", "per_class", "confusion", "freeze",
    "groups", "lr", "step", "pretrained", "checkpoint_path", "pretrained_cfg_overlay",
    "fingerprint", "keys", "lr_trace", "history", "best", "rng", "optimizer", "state",
]  # fmt: skip
STRINGS = [
    "torchvision:resnet18", "timm:test_resnet", "timm:no_such_model", "handmade_models:TinyCNN",
    "handmade_models:LeNet", "handmade_models:NoSuch", "no_such_module:build",
    "os:system('true')", "handmade_models:TinyCNN(width=4)", "bilinear", "nearest", "bicubic",
    "center", "squash", "epoch-0000.pt", "epoch-0001.pt", "../model.json", "/dev/zero", "/",
    "0" * 64, "f" * 64, "torchgraft.model/1", "torchgraft.resume/1", "\x1b[2J", "", "stem.0",
    "classifier.1", "head", "val", "train", "0", "1", "2", "x" * 5000,
]  # fmt: skip
ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 16, 64, 65, 4096, 4097, 65537, 10**9, 2**63, 10**400]),
    st.sampled_from([-(10**400), 1e308, -0.0, 1e-9, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(STRINGS),
)
JSON_VALUES = st.recursive(
    ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"]
#: A tensor, written as data (the case stays a plain, printable value).
TENSORS = st.builds(
    lambda shape, dtype: {"__tensor__": [shape, dtype]},
    st.lists(st.integers(0, 5), max_size=4),
    st.sampled_from(DTYPES),
)
STATE_VALUES = JSON_VALUES | TENSORS

ACTIONS = ["set", "set", "delete", "add", "wrap"]


def edits(values) -> st.SearchStrategy:
    """Edits ``(which value, action, new value)``: ``which`` picks among every path of the
    document, in a fixed order, modulo their number (so any field at any depth)."""
    return st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(ACTIONS), values), min_size=1, max_size=4
    )


_byte_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**7), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**7), st.integers(1, 64)),
    st.tuples(st.just("cut"), st.integers(0, 10**7)),
)
SPECIALS = ["fifo", "folder", "empty", "sparse", "dev-zero", "root", "missing", "loop", "delete"]
_tensor_edits = st.one_of(
    st.none(),
    st.tuples(st.just("drop"), st.integers(0, 100)),
    st.tuples(st.just("reshape"), st.integers(0, 100), st.lists(st.integers(0, 9), max_size=4)),
    st.tuples(st.just("retype"), st.integers(0, 100), st.sampled_from(DTYPES)),
    st.tuples(
        st.just("add"), st.sampled_from(FIELD_NAMES), st.lists(st.integers(0, 9), max_size=3)
    ),
)
_document_text = st.one_of(
    JSON_VALUES.map(json.dumps), st.text(max_size=200), st.sampled_from(["", "null", "{}", "[]"])
)

MUTATIONS = st.one_of(
    st.tuples(st.just("edit"), st.sampled_from(DOCUMENTS), edits(JSON_VALUES)),
    st.tuples(st.just("edit"), st.just("model.json"), edits(JSON_VALUES)),
    st.tuples(
        st.just("record"),
        edits(JSON_VALUES),
        _tensor_edits,
        st.sampled_from(["keep", "delete", "old"]),
    ),
    st.tuples(st.just("state"), edits(STATE_VALUES), st.booleans()),
    st.tuples(
        st.just("bytes"),
        st.sampled_from(FILES),
        st.lists(_byte_ops, min_size=1, max_size=4),
        st.booleans(),
    ),
    st.tuples(st.just("special"), st.sampled_from([*FILES, "state"]), st.sampled_from(SPECIALS)),
    st.tuples(st.just("text"), st.just("config.yaml"), yaml_text()),
    st.tuples(st.just("text"), st.sampled_from(DOCUMENTS), _document_text),
    st.tuples(st.just("deep"), st.sampled_from(DOCUMENTS), st.integers(1, 100_000)),
)


def _sometimes(one_in: int) -> st.SearchStrategy:
    # Not ``n == 0``: hypothesis fills an overrun case with its simplest values, zeros.
    return st.integers(0, one_in - 1).map(lambda n: n == one_in // 2)


RUN_CASES = st.fixed_dictionaries(
    {
        "mutations": st.lists(MUTATIONS, min_size=1, max_size=3),
        "examples": _sometimes(4),
        "plots": _sometimes(12),
        "predict": _sometimes(4),
        "resume": _sometimes(3),
        "export": _sometimes(25),
    }
)

# ---- mutations ---------------------------------------------------------------------------------


def _paths(document, limit: int = 5000) -> list[tuple]:
    """Every path of ``document`` (root first, then depth-first), at most ``limit``."""
    found, stack = [()], [((), document)]
    while stack and len(found) < limit:
        path, node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            continue
        found += [(*path, key) for key, _ in items]
        stack += [((*path, key), value) for key, value in reversed(items)]
    return found


def materialize(value):
    """``value`` with every ``{"__tensor__": [shape, dtype]}`` made a tensor."""
    if isinstance(value, dict):
        if list(value) == ["__tensor__"]:
            shape, dtype = value["__tensor__"]
            return torch.ones(shape, dtype=getattr(torch, dtype))
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    return value


def edit(document, change):
    """``document`` with one edit applied (see :func:`edits`); returns the new root."""
    which, action, value = change
    value = materialize(value)
    paths = _paths(document)
    path = paths[which % len(paths)]
    if not path:
        if action == "wrap":
            return [document] if which % 2 else {"x": document}
        if action == "add" and isinstance(document, dict):
            document[FIELD_NAMES[which % len(FIELD_NAMES)]] = value
            return document
        if action == "add" and isinstance(document, list):
            return [*document, value]
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "set":
        parent[key] = value
    elif action == "delete":
        del parent[key]
    elif action == "wrap":
        parent[key] = [parent[key]] if which % 2 else {"x": parent[key]}
    elif isinstance(parent[key], dict):
        parent[key][FIELD_NAMES[which % len(FIELD_NAMES)]] = value
    elif isinstance(parent[key], list):
        parent[key].append(value)
    else:
        parent[key] = [parent[key], value]
    return document


def _read_document(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.name == "config.yaml":
        return yaml.safe_load(text)
    if path.name == "metrics.jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _write_document(path: Path, document) -> None:
    if path.name == "config.yaml":
        text = yaml.safe_dump(document, allow_unicode=True)
    elif path.name == "metrics.jsonl" and isinstance(document, list):
        text = "".join(json.dumps(row) + "\n" for row in document)
    else:
        text = json.dumps(document)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")


def _rehash(run: Path, name: str) -> None:
    """As an attacker would: the sha256 of ``name`` written where the run records it."""
    pointer_file = run / ("state/last.json" if name == STATE else "model.json")
    pointer = json.loads(pointer_file.read_text())
    pointer["sha256"] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    pointer_file.write_text(json.dumps(pointer))


def _special(path: Path, kind: str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
        (path / "x").write_text("{}")
    elif kind == "empty":
        path.touch()
    elif kind == "sparse":  # over every document's size bound, without the disk space
        with path.open("wb") as handle:
            handle.truncate(300 << 20)
    elif kind in ("dev-zero", "root", "missing", "loop"):
        target = {"dev-zero": "/dev/zero", "root": "/", "missing": "nowhere", "loop": path.name}
        path.symlink_to(target[kind])


def _tensor_edit(tensors: dict, change) -> None:
    if change is None or not tensors:
        return
    kind, which, *rest = change
    name = sorted(tensors)[which % len(tensors)] if kind != "add" else which
    if kind == "drop":
        del tensors[name]
    elif kind == "reshape":
        tensors[name] = torch.zeros(rest[0])
    elif kind == "retype":
        tensors[name] = tensors[name].to(getattr(torch, rest[0]))
    else:
        tensors[name] = torch.zeros(rest[0])


def _deep(path: Path, depth: int) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    nest = "[" * depth + "]" * depth
    if path.name == "config.yaml":
        text = f"deep: {nest}\n{text}"
    elif path.name == "metrics.jsonl":
        text = f"{nest}\n{text}"
    elif text.startswith("{"):
        text = '{"deep": ' + nest + ", " + text[1:]
    else:
        text = "[" + nest + ", " + text[1:]
    path.write_text(text, encoding="utf-8")


def _regular(path: Path) -> bool:
    return os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode)


def mutate(run: Path, mutation) -> bool:
    """Apply one mutation to the run folder; False when it does not apply (a file an earlier
    mutation already broke, a value YAML cannot hold): the case goes on without it."""
    kind, *args = mutation
    names = {"record": ["model.json", "model.safetensors"], "state": [STATE]}
    if kind != "special" and not all(
        _regular(run / name) for name in names.get(kind, [args[0]])
    ):  # a FIFO or a link to /dev/zero an earlier mutation put there: not for the harness
        return False
    try:
        if kind == "edit":
            name, changes = args
            document = _read_document(run / name)
            for change in changes:
                document = edit(document, change)
            _write_document(run / name, document)
        elif kind == "record":
            changes, tensor_change, sidecar = args
            old = (run / "model.json").read_bytes()
            document = {k: v for k, v in json.loads(old).items() if k != "sha256"}
            for change in changes:
                document = edit(document, change)
            tensors = load_file(run / "model.safetensors")
            _tensor_edit(tensors, tensor_change)
            save_model(run, tensors, document if isinstance(document, dict) else {"x": document})
            if sidecar == "delete":
                (run / "model.json").unlink()
            elif sidecar == "old":
                (run / "model.json").write_bytes(old)
        elif kind == "state":
            changes, rehash = args
            state = torch.load(run / STATE, weights_only=True)
            for change in changes:
                state = edit(state, change)
            torch.save(state, run / STATE)
            if rehash:
                _rehash(run, STATE)
        elif kind == "bytes":
            name, ops, rehash = args
            (run / name).write_bytes(forge.damaged((run / name).read_bytes(), ops))
            if rehash and name in (STATE, "model.safetensors"):
                _rehash(run, name)
        elif kind == "special":
            _special(run / args[0], args[1])
        elif kind == "text":
            (run / args[0]).write_text(args[1], encoding="utf-8", errors="surrogatepass")
        elif kind == "deep":
            _deep(run / args[0], args[1])
    except Exception:  # the harness's own reading and writing, not the code under test
        return False
    return True


# ---- the check ---------------------------------------------------------------------------------

#: Resumed cases train one more epoch, at the size the run had: the cost of training is not
#: what this tests (a config may ask for a huge model, and torchgraft runs it).
RESUME_OVERRIDES = ["--train.epochs", "2", "--data.image_size", "16", "--data.batch_size", "8",
                    "--data.workers", "0", "--train.threads", "1", "--train.device", "cpu",
                    "--train.max_steps", "null", "--output.plots", "false"]  # fmt: skip


def attempt(name: str, function) -> str:
    """``name:ok`` or ``name:<typed error>``; any other exception propagates (a finding)."""
    try:
        function()
    except TorchgraftError as exc:
        return f"{name}:{type(exc).__name__}"
    return f"{name}:ok"


def check(case, base: BaseRun) -> list[str]:
    """Copy the base run, mutate it, run the readers; the labels of their outcomes."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        shutil.copytree(base.run, run, symlinks=True)
        labels = [
            f"mutation {mutation[0]}:{'applied' if mutate(run, mutation) else 'skipped'}"
            for mutation in case["mutations"]
        ]
        labels += [
            attempt("read_model_document", lambda: read_model_document(run)),
            attempt("read_model_document(trust)", lambda: read_model_document(run, trust_run=True)),
            attempt("load", lambda: tg.load(run)),
            attempt("load(trust)", lambda: tg.load(run, trust_run=True)),
            attempt("load_state", lambda: load_state(run)),
            attempt("report", lambda: write_report(run, count=0, plots=case["plots"])),
        ]
        if case["examples"]:
            labels.append(
                attempt(
                    "report(examples)",
                    lambda: write_report(run, count=4, plots=False, trust_run=True),
                )
            )
        if case["predict"]:
            labels.append(attempt("predict", lambda: _predict(run, base.images)))
        if case["resume"]:
            labels.append(attempt("resume", lambda: _resume(run)))
        if case["export"]:
            target = Path(folder) / "exported" / "model.ts"
            labels.append(
                attempt("export", lambda: export_run(run, "torchscript", target, trust_run=True))
            )
    return labels


def _predict(run: Path, images) -> None:
    model = load_for_prediction(run, trust_run=True)
    predict_files(model, list(images), workers=1)


def _resume(run: Path) -> None:
    tg.fit(None, RESUME_OVERRIDES, resume=run, trust_run=True, console=RunConsole(quiet=True))


def fuzz(cases: list, base: BaseRun) -> tuple[dict[str, int], list[str]]:
    """Every case in sandboxed children: (label counts, findings)."""
    return forge.sandboxed_cases(
        cases, functools.partial(check, base=base), case_seconds=60, peak_mb=1024
    )


# ---- the default suite -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> BaseRun:
    return make_base_run(tmp_path_factory.mktemp("fuzz-runs"))


@pytest.mark.slow
def test_damaged_run_directories_give_a_result_or_a_typed_error(base):
    cases = collect(RUN_CASES, 120)
    counts, findings = fuzz(cases, base)
    assert findings == [], "\n".join(findings)
    # The cases reach both outcomes of the main readers.
    for reader in ("load(trust)", "load_state", "read_model_document(trust)"):
        assert counts.get(f"{reader}:ok", 0) > 5, counts
        assert counts.get(f"{reader}:CheckpointError", 0) > 10, counts
    assert counts.get("report:ok", 0) > 100, counts


def test_an_untyped_error_of_a_reader_is_a_finding_naming_the_case(base, monkeypatch):
    # Negative control: a reader that raises KeyError on a damaged pointer (what a missing
    # check would do) is reported, by case; the undamaged case passes.
    import torchgraft.engine.resume.state as state_module

    original = state_module._read_pointer

    def careless(run_dir):
        pointer = json.loads((run_dir / "state" / "last.json").read_text())
        pointer["sha256"]  # a KeyError when the field is gone
        return original(run_dir)

    monkeypatch.setattr(state_module, "_read_pointer", careless)
    quiet = {"examples": False, "plots": False, "predict": False, "resume": False, "export": False}
    which = _paths(json.loads((base.run / "state/last.json").read_text())).index(("sha256",))
    damaged = {**quiet, "mutations": [("edit", "state/last.json", [(which, "delete", None)])]}
    counts, findings = fuzz([{**quiet, "mutations": []}, damaged], base)
    assert counts["load_state:ok"] == 1
    assert len(findings) == 1
    assert findings[0].startswith("case 1: escaped: KeyError: 'sha256'")


# ---- findings of bench/fuzz.py --run-dir, minimal ----------------------------------------------


@pytest.mark.parametrize("text", ["a: !!int\n", "a: !!bool x\n", "model: &a\n  kwargs: *a\n"])
def test_a_config_yaml_the_yaml_constructors_cannot_build_is_reported_or_refused(
    base, tmp_path, text
):
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    (run / "config.yaml").write_text(text)
    write_report(run, count=0, plots=False)  # the page says the file cannot be read
    assert "config.yaml" in (run / "report.html").read_text()
    with pytest.raises(TorchgraftError, match=r"config\.yaml"):
        _resume(run)


@pytest.mark.parametrize("where", ["preprocessing", "spec.preprocessing"])
@pytest.mark.parametrize(
    ("field", "value"), [("input_size", [3, 10**400, 16]), ("mean", [10**400] * 3)]
)
def test_an_integer_too_large_for_a_float_is_a_checkpoint_error(
    base, tmp_path, where, field, value
):
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    document = json.loads((run / "model.json").read_text())
    pre = document["spec"]["preprocessing"] if where.startswith("spec") else document[where]
    pre[field] = value  # out of range, and over a float's range
    (run / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=field):
        read_model_document(run, trust_run=True)


@pytest.mark.parametrize("field", ["groups", "state"])
def test_a_resume_state_whose_optimizer_state_is_of_wrong_types_is_refused(base, tmp_path, field):
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    state = torch.load(run / STATE, weights_only=True)
    if field == "groups":  # a number in a real state
        state["optimizer"]["groups"]["stem"]["dampening"] = [1]
    else:  # a mapping of buffers in a real state
        state["optimizer"]["state"]["stem.0.weight"] = [1]
    torch.save(state, run / STATE)
    _rehash(run, STATE)  # as an attacker would
    with pytest.raises(CheckpointError, match=r"epoch-0000\.pt"):
        _resume(run)


def test_a_crop_too_small_to_resize_for_is_a_typed_error(base, tmp_path):
    # data.crop_pct 1e-9 passes the config check, then asks Pillow for a 1.6e10 px side.
    images = base.images[0].parents[1]
    config = tiny_config(images, tmp_path / "runs", train={"epochs": 1}, data={"crop_pct": 1e-9})
    with pytest.raises(TorchgraftError, match="crop_pct"):
        tg.fit(config, console=RunConsole(quiet=True))
