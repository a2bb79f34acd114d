"""Fuzzing the checkpoint reader: whatever the bytes, ``read_checkpoint`` gives tensors or a
``CheckpointError`` — never another exception, a crash, a hang or unbounded memory.

Cases are drawn by hypothesis (random bytes steered into each format by a prefix, real
torch zip / legacy / safetensors files truncated and mutated, pickles assembled from random
opcodes inside a torch zip or a legacy file, random safetensors headers), written to files,
then read in a child process under a memory limit (``RLIMIT_AS``) and a per-case alarm, with
a wall-clock limit on the whole batch: a crash or a hang fails one batch, not the test run,
and names the case. ``bench/fuzz.py`` runs the same cases by the ten thousand.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import subprocess
import sys
import tempfile
from pathlib import Path

import hypothesis
import reader_forge as forge
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

# ---- the cases -----------------------------------------------------------------------------

_SMALL = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2]), "h": torch.ones(1)}


def _real_files() -> dict[str, bytes]:
    zipped, old = io.BytesIO(), io.BytesIO()
    torch.save({"state_dict": _SMALL, "epoch": 1}, zipped)
    torch.save(_SMALL, old, _use_new_zipfile_serialization=False)
    return {"zip": zipped.getvalue(), "legacy": old.getvalue(), "st": safetensors_bytes(_SMALL)}


REAL = _real_files()
PREFIXES = [b"", b"PK\x03\x04", REAL["legacy"][:16], b"\x40\x00\x00\x00\x00\x00\x00\x00{"]

_names = st.sampled_from(["0", "1", "w", "weight", "", "a.b", "\x1b[2J"])
_globals = st.sampled_from(
    [
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("collections", "OrderedDict"),
        ("torch", "FloatStorage"),
        ("torch", "LongStorage"),
        ("builtins", "set"),
        ("_codecs", "encode"),
        ("os", "system"),
        ("builtins", "eval"),
        ("torch", "Size"),
        ("collections", "Counter"),
    ]
)
_opcode_codes = sorted({op.code.encode("latin-1") for op in pickletools.opcodes})

#: One pickle "word": a meaningful chunk from reader_forge, or any opcode with random bytes.
_chunk = st.one_of(
    _globals.map(lambda g: forge.glob(*g)),
    _names.map(forge.text),
    st.integers(-(2**70), 2**70).map(forge.integer),
    st.integers(0, 300).map(forge.put),
    st.integers(0, 300).map(forge.get),
    st.sampled_from(
        [
            *(forge.MARK, forge.TUPLE, forge.REDUCE, forge.BUILD, forge.TUPLE1, forge.TUPLE2),
            *(forge.EMPTY_DICT, forge.EMPTY_LIST, forge.SETITEM, forge.SETITEMS, forge.APPEND),
            *(forge.APPENDS, forge.NONE, forge.BINPERSID, forge.NEWOBJ, forge.EMPTY_TUPLE),
        ]
    ),
    st.builds(lambda k, n: forge.storage(k, n), _names, st.integers(-5, 2**40)),
    st.builds(
        lambda n, size, stride, off: forge.tensor(forge.storage("0", n), size, stride, off),
        st.integers(0, 64),
        st.lists(st.integers(-2, 2**33), max_size=4),
        st.lists(st.integers(-2, 2**33), max_size=4),
        st.integers(-2, 100),
    ),
    st.tuples(st.sampled_from(_opcode_codes), st.binary(max_size=9)).map(b"".join),
)


@st.composite
def random_pickle(draw) -> bytes:
    """A torch zip or legacy file whose object pickle is random opcodes (mostly meaningful)."""
    body = b"".join(draw(st.lists(_chunk, max_size=40)))
    pkl = forge.PROTO2 + body + draw(st.sampled_from([forge.STOP, b""]))
    records = {draw(_names): draw(st.binary(max_size=64))}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "case"
        if draw(st.booleans()):
            forge.torch_zip(path, pkl, records)
        else:
            forge.legacy(path, pkl, records)
        return path.read_bytes()


@st.composite
def damaged_real_file(draw) -> bytes:
    raw = bytearray(REAL[draw(st.sampled_from(sorted(REAL)))])
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            raw[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            raw[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del raw[position : position + draw(st.integers(1, 16))]
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[:cut] if draw(st.booleans()) else raw)


_dtype = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X9", ""])
_shape = st.lists(st.integers(-2, 2**40), max_size=4)
_offsets = st.lists(st.integers(-2, 2**40), min_size=0, max_size=3)
_entry = st.one_of(
    st.fixed_dictionaries({"dtype": _dtype, "shape": _shape, "data_offsets": _offsets}),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.integers(),
)


@st.composite
def random_safetensors(draw) -> bytes:
    header = draw(st.dictionaries(st.text(max_size=8), _entry, max_size=5))
    raw = json.dumps(header).encode()
    length = draw(st.integers(0, 2**64 - 1)) if draw(st.booleans()) else len(raw)  # a lie
    return length.to_bytes(8, "little") + raw + draw(st.binary(max_size=128))


READER_CASES = st.one_of(
    st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=4096)).map(b"".join),
    damaged_real_file(),
    random_pickle(),
    random_safetensors(),
)


def collect(strategy, count: int, seed: int | None = None) -> list:
    """``count`` examples of ``strategy``: the same ones every time (derandomized) unless a
    ``seed`` is given (``bench/fuzz.py`` draws a fresh batch per seed)."""
    drawn: list = []

    @settings(
        max_examples=count,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(case):
        drawn.append(case)

    (draw if seed is None else hypothesis.seed(seed)(draw))()
    return drawn


# ---- the sandbox ---------------------------------------------------------------------------

#: Seconds one case may take before it counts as a hang.
CASE_SECONDS = 20
#: Memory a case may add to the worker's address space after imports.
CASE_MEMORY = 2 << 30

WORKER = """
import json, resource, signal, sys, traceback
from pathlib import Path
from torchgraft.errors import CheckpointError
from torchgraft.checkpoint.read import read_checkpoint
import torch

def vm_size():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

limit = vm_size() + int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
signal.signal(signal.SIGALRM, alarm)
folder, start = Path(sys.argv[1]), int(sys.argv[2])
for path in sorted(folder.iterdir(), key=lambda p: int(p.name))[start:]:
    signal.alarm(int(sys.argv[4]))
    try:
        checkpoint = read_checkpoint(path)
        assert all(isinstance(t, torch.Tensor) for t in checkpoint.tensors.values())
        outcome = "tensors"
    except CheckpointError as exc:
        outcome = "refused" if str(path) in str(exc) else "unnamed: " + str(exc)[:300]
    except Hang:
        outcome = "hang (over %s s)" % sys.argv[4]
    except BaseException as exc:
        outcome = "escaped: " + "".join(traceback.format_exception_only(exc))[-600:]
    finally:
        signal.alarm(0)
    print(json.dumps([int(path.name), outcome]), flush=True)
"""


def read_in_sandbox(cases: list[bytes], folder: Path) -> tuple[dict[str, int], list[str]]:
    """Read every case in child processes; returns (outcome counts, findings).

    A finding is any outcome other than tensors or a ``CheckpointError`` naming the file: an
    escaped exception, a hang, a crash of the child (its signal), or an error that does not
    name the file. After a crash the next child starts at the case after the culprit.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(cases):
        (folder / str(index)).write_bytes(data)
    counts: dict[str, int] = {"tensors": 0, "refused": 0}
    findings: list[str] = []
    start = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    while start < len(cases):
        argv = [sys.executable, "-c", WORKER, str(folder), str(start), str(CASE_MEMORY)]
        try:
            done = subprocess.run(
                [*argv, str(CASE_SECONDS)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120 + CASE_SECONDS * (len(cases) - start) / 10,
            )
            stdout, why = done.stdout, f"the child ended with status {done.returncode}"
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            why, done = "the batch ran past its wall-clock limit", None
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("[")]
        for index, outcome in lines:
            if outcome in counts:
                counts[outcome] += 1
            else:
                findings.append(f"case {index}: {outcome}")
        start += len(lines)
        if done is not None and done.returncode == 0:
            break
        if start < len(cases):  # the case after the last reported one took the child down
            tail = (done.stderr if done is not None else "")[-300:]
            findings.append(f"case {start}: {why} {tail}".strip())
            start += 1
    return counts, findings


def test_random_and_damaged_files_only_give_tensors_or_a_checkpoint_error(tmp_path):
    cases = collect(READER_CASES, 200)
    counts, findings = read_in_sandbox(cases, tmp_path / "cases")
    assert findings == []
    assert counts["refused"] > len(cases) // 2  # the cases really reach the reader's checks


def test_the_sandbox_reports_an_escaped_exception_a_hang_and_a_crash(tmp_path, monkeypatch):
    # Negative control: a reader that misbehaves is caught, each way, and named by case.
    monkeypatch.setattr(sys.modules[__name__], "CASE_SECONDS", 1)
    patched = WORKER.replace(
        "checkpoint = read_checkpoint(path)",
        "data = path.read_bytes()\n"
        "        if data == b'raise': raise KeyError('x')\n"
        "        if data == b'hang': [0 for _ in iter(int, 1)]\n"
        "        if data == b'crash': import os; os.abort()\n"
        "        checkpoint = read_checkpoint(path)",
    )
    monkeypatch.setattr(sys.modules[__name__], "WORKER", patched)
    counts, findings = read_in_sandbox(
        [b"raise", b"hang", b"crash", REAL["st"]], tmp_path / "cases"
    )
    assert counts["tensors"] == 1
    assert [f.split(":")[0] for f in findings] == ["case 0", "case 1", "case 2"]
    assert "KeyError" in findings[0]
    assert "hang" in findings[1]
    assert "status -6" in findings[2]
