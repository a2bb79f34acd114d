"""Hostile checkpoint files, forged byte by byte, and a sandbox to read them in.

The pickles here are assembled from raw opcodes (the subset torch's ``weights_only``
unpickler accepts), so each file holds exactly the attack it is named after and nothing
that ``pickle.dumps`` would add or refuse. :func:`sandboxed_read` reads a file in a forked
child under memory, CPU and wall-clock limits, so that a regression (a crash, a memory or
CPU bomb) fails one test instead of taking the machine down.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import torch

# ---- opcodes -----------------------------------------------------------------------------

PROTO2 = b"\x80\x02"
MARK, STOP, TUPLE, REDUCE, BUILD = b"(", b".", b"t", b"R", b"b"
TUPLE1, TUPLE2, TUPLE3, EMPTY_TUPLE = b"\x85", b"\x86", b"\x87", b")"
EMPTY_DICT, EMPTY_LIST, SETITEM, SETITEMS, APPEND, APPENDS = b"}", b"]", b"s", b"u", b"a", b"e"
NONE, FALSE, TRUE, BINPERSID, NEWOBJ = b"N", b"\x89", b"\x88", b"Q", b"\x81"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    encoded = pickle.encode_long(value)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def put(index: int) -> bytes:
    return b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    return b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)


def ints(values) -> bytes:
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def storage(key: str, numel: int, kind: str = "FloatStorage", extra: bytes = b"") -> bytes:
    """A persistent id for a storage (zip: 5 fields; legacy: add a view_metadata ``NONE``)."""
    return (
        MARK + text("storage") + glob("torch", kind) + text(key) + text("cpu") + integer(numel)
        + extra + TUPLE + BINPERSID
    )  # fmt: skip


def tensor(storage_op: bytes, size, stride, offset: int = 0) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return (
        glob("torch._utils", "_rebuild_tensor_v2")
        + MARK + storage_op + integer(offset) + ints(size) + ints(stride) + FALSE
        + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
        + TUPLE + REDUCE
    )  # fmt: skip


def state_dict(entries: dict[str, bytes]) -> bytes:
    """A pickle of ``{name: value}`` where each value is already an opcode sequence."""
    body = b"".join(text(k) + v for k, v in entries.items())
    return PROTO2 + EMPTY_DICT + MARK + body + SETITEMS + STOP


def a_tensor(key: str = "0", numel: int = 4) -> bytes:
    return tensor(storage(key, numel), (numel,), (1,))


# ---- the round-one attacks of issue 17, as whole pickles -----------------------------------


def with_entry(entry: bytes, setup: bytes = b"") -> bytes:
    """``{"w": <a real tensor>, "x": <entry>}``, after ``setup`` (left on the stack: torch's
    unpickler has no POP, and returns the top of the stack at STOP)."""
    return (
        PROTO2 + setup + EMPTY_DICT + text("w") + a_tensor() + SETITEM + text("x") + entry
        + SETITEM + STOP
    )  # fmt: skip


def deep_tuple_key(depth: int = 1_000_000) -> bytes:
    """A tuple nested ``depth`` times as a dict key: hashing it crashed CPython (SIGSEGV)."""
    deep = EMPTY_TUPLE + TUPLE1 * depth
    return (
        PROTO2 + EMPTY_DICT + text("w") + a_tensor() + SETITEM + deep + integer(1) + SETITEM
        + STOP
    )  # fmt: skip


def punycode_calls(calls: int = 100, length: int = 3000) -> bytes:
    """``_codecs.encode(text, "punycode")`` ``calls`` times: quadratic, ~2 s a call."""
    word = "".join(chr(0x100 + (i * 7919) % 50_000) for i in range(length))
    body = b"".join(
        integer(i) + glob("_codecs", "encode") + (text(word) + put(1) if i == 0 else get(1))
        + text("punycode") + TUPLE2 + REDUCE
        for i in range(calls)
    )  # fmt: skip
    return with_entry(EMPTY_DICT + MARK + body + SETITEMS)


def huge_bytearray(size: int = 4_600_000_000) -> bytes:
    """``bytearray(size)``: gigabytes of zeros from a few bytes."""
    return with_entry(glob("builtins", "bytearray") + integer(size) + TUPLE1 + REDUCE)


#: The attacks the first red team found, each refused by the scan when the scan sees it.
ROUND_ONE = {
    "million-deep-tuple": deep_tuple_key,
    "punycode": punycode_calls,
    "huge-bytearray": huge_bytearray,
}


def damaged(data: bytes, ops) -> bytes:
    """``data`` after byte operations ``(op, position, *argument)``: ``flip`` (xor a mask),
    ``insert`` (bytes), ``delete`` (a count) or ``cut`` (the rest); positions wrap."""
    raw = bytearray(data)
    for op, position, *rest in ops:
        position %= len(raw) + 1
        if op == "flip" and raw:
            raw[min(position, len(raw) - 1)] ^= rest[0]
        elif op == "insert":
            raw[position:position] = rest[0]
        elif op == "delete":
            del raw[position : position + rest[0]]
        elif op == "cut":
            del raw[position:]
    return bytes(raw)


# ---- files -------------------------------------------------------------------------------


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None,
              compress: dict[str, int] | None = None) -> Path:  # fmt: skip
    """A ``torch.save`` zip holding ``data_pkl`` and storage records ``data/<key>``."""
    records = {"0": bytes(16)} if records is None else records
    compress = compress or {}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, payload in records.items():
            name = f"archive/data/{key}"
            archive.writestr(name, payload, compress_type=compress.get(key, zipfile.ZIP_STORED))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/.data/serialization_id", "0123456789")
    return path


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy(path: Path, main_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A legacy (pre-1.6, non-zip) ``torch.save`` file: header pickles, the object, storages."""
    storages = {"0": bytes(16)} if storages is None else storages
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}  # fmt: skip
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(sys_info, 2)]
    parts += [main_pkl, pickle.dumps(list(storages), 2)]
    for payload in storages.values():
        parts.append(struct.pack("<q", len(payload) // 4) + payload)
    path.write_bytes(b"".join(parts))
    return path


def safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def real_state(path: Path, legacy_format: bool = False) -> Path:
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(2)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_format)
    return path


# ---- the sandbox -------------------------------------------------------------------------

#: Memory a sandboxed read may add to the test process's address space.
SANDBOX_MEMORY = 1 << 30


def sandboxed_read(path: Path, timeout: float = 60.0, uid: int | None = None, **options) -> dict:
    """Read ``path`` with ``read_checkpoint(path, **options)`` in a forked, limited child
    (as user ``uid`` if given).

    Returns:
        ``{"ok": True, "tensors": n}`` or ``{"error": type name, "message": str, "typed":
        bool}`` (typed: a :class:`TorchgraftError`), both with ``peak_mb`` (how much the
        peak RSS grew), ``seconds`` and ``cpu_seconds`` (the work's CPU time: assert on
        that, wall time depends on the machine's load); ``{"signal": n}`` for a crash or a
        kill, or ``{"timeout": True}``.
    """

    def read() -> dict:
        from torchgraft.checkpoint.read import read_checkpoint

        return {"ok": True, "tensors": len(read_checkpoint(path, **options).tensors)}

    result = sandboxed_call(read, timeout=timeout, uid=uid)
    result.update(result.pop("value", {}))
    return result


def sandboxed_call(
    function, timeout: float = 60.0, *, memory: int = SANDBOX_MEMORY, uid: int | None = None
) -> dict:
    """``function()`` in a forked child that may map ``memory`` bytes more than it has
    (``RLIMIT_AS``), with a CPU limit, one torch thread, as user ``uid`` if given.

    Returns:
        ``{"value": <its JSON-able result>}`` or ``{"error": type name, "message": str,
        "typed": bool}`` (typed: a :class:`TorchgraftError`; the message of any other is its
        traceback's end), both with ``peak_mb``, ``seconds`` and ``cpu_seconds``;
        ``{"signal": n}`` for a crash or a kill, ``{"exit": n}``, or ``{"timeout": True}``.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(reader)
            _limit_child(memory, uid)
            os.write(writer, json.dumps(_measured(function)).encode())
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(writer)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(reader)
            return {"timeout": True}
        time.sleep(0.02)
    with os.fdopen(reader, "rb") as pipe:
        output = pipe.read()
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return json.loads(output) if output else {"exit": os.WEXITSTATUS(status)}


def _measured(function) -> dict:
    """``function()``'s outcome with the peak RSS growth, wall and CPU time it took."""
    from torchgraft.errors import TorchgraftError

    with contextlib.suppress(OSError):  # reset the peak RSS, inherited from the parent
        Path("/proc/self/clear_refs").write_text("5")
    before, started, cpu = _status("VmRSS"), time.monotonic(), _cpu_seconds()
    try:
        result = {"value": function()}
    except BaseException as exc:  # every outcome is data for the test
        typed = isinstance(exc, TorchgraftError)
        message = str(exc) if typed else traceback.format_exc()[-2000:]
        result = {"error": type(exc).__name__, "message": message[:2000], "typed": typed}
    result["peak_mb"] = (_status("VmHWM") - before) / 2**20  # growth of the peak RSS
    result["seconds"] = time.monotonic() - started
    result["cpu_seconds"] = _cpu_seconds() - cpu
    return result


def _limit_child(memory: int, uid: int | None) -> None:
    # OpenMP's threads do not survive a fork: a parallel region in the child would wait for
    # them forever (torch's DataLoader workers do the same).
    torch.set_num_threads(1)
    size = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (size + memory, size + memory))
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime + 120
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 5))
    if uid is not None:  # e.g. "nobody", for permission checks when tests run as root
        # the peak RSS restarts now: /proc/self is root's, not writable, once the uid changes
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        os.setgid(uid)
        os.setuid(uid)


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmSize, VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _address_space() -> int:
    return _status("VmSize")


def _cpu_seconds() -> float:
    """CPU time this process used (user + system): unlike wall time, what a bound on the
    work can assert on a machine busy with other jobs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- many cases in one sandboxed child --------------------------------------------------------


class _CaseHang(BaseException):
    """Raised in a sandboxed child by its per-case alarm (a BaseException: code under test
    that catches ``Exception`` cannot swallow it)."""


def sandboxed_cases(
    cases: list,
    check,
    *,
    case_seconds: int = 20,
    memory: int = 2 << 30,
    peak_mb: float | None = None,
    grace: float = 15.0,
) -> tuple[dict[str, int], list[str]]:
    """``check(case)`` for every case, in forked children that run them one after another.

    ``check`` returns an outcome label (or a list of labels), each counted; whatever it
    raises is a finding. The child may map ``memory`` bytes more than it had at the fork
    (``RLIMIT_AS``, so a blow-up is a ``MemoryError`` there, a finding); each case has a
    ``case_seconds`` alarm, and a case that does not answer ``grace`` seconds after that (a
    loop in C, a blocking call) has its child killed. A case whose peak RSS grows by more
    than ``peak_mb`` is a finding too. After a crash, a kill or a hang, a new child goes on
    with the next case, so every finding names its case (``case INDEX: what``, the case's
    ``repr`` on the next line) and every other case still runs. The children's stdout and
    stderr go to a file; a crash's finding ends with its last lines.

    Returns:
        ``(label counts, findings)``.
    """
    counts: dict[str, int] = {}
    findings: list[str] = []
    start = 0
    with tempfile.TemporaryFile() as log:
        while start < len(cases):
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller
                code = 0
                try:
                    os.close(reader)
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
                    _run_cases(cases, start, check, writer, case_seconds, memory, peak_mb, log)
                except BaseException:
                    code = 3
                finally:
                    os._exit(code)
            os.close(writer)
            reported, status, killed = _follow(pid, reader, case_seconds + grace)
            for index, labels, finding in reported:
                if finding is None:
                    for label in labels:
                        counts[label] = counts.get(label, 0) + 1
                else:
                    findings.append(_finding(cases, index, finding))
            start = reported[-1][0] + 1 if reported else start
            if start >= len(cases):
                break
            if killed:
                why = f"no answer {case_seconds + grace:.0f} s after it began: killed (a hang)"
            elif os.WIFSIGNALED(status):
                why = f"its process died of signal {os.WTERMSIG(status)} (a crash)"
            elif os.WEXITSTATUS(status) == 0:  # left on purpose after a hang: go on
                continue
            else:
                why = f"its process ended with status {os.WEXITSTATUS(status)}"
            log.seek(0)
            tail = log.read()[-600:].decode("utf-8", "replace").strip()
            findings.append(
                _finding(cases, start, why + (f"; last output: {tail}" if tail else ""))
            )
            start += 1
    return counts, findings


def _finding(cases: list, index: int, what: str) -> str:
    return f"case {index}: {what}\n    the case: {repr(cases[index])[:4000]}"


def _follow(pid: int, reader: int, silence: float) -> tuple[list, int, bool]:
    """The child's reports ``(index, labels, finding)`` until it ends or stays silent for
    ``silence`` seconds (then it is killed); returns them with its wait status."""
    reported, buffer, killed = [], b"", False
    last = time.monotonic()
    with os.fdopen(reader, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], 1.0)
            if ready:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    reported.append((record["i"], record.get("labels", []), record.get("finding")))
                    last = time.monotonic()
            elif time.monotonic() - last > silence:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
    _, status = os.waitpid(pid, 0)
    return reported, status, killed


def _run_cases(cases, start, check, writer, case_seconds, memory, peak_mb, log) -> None:
    limit = _address_space() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def alarm(*_):
        raise _CaseHang()

    signal.signal(signal.SIGALRM, alarm)
    for index in range(start, len(cases)):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.ftruncate(log.fileno(), 0)  # the log holds the current case's output only
        os.lseek(log.fileno(), 0, os.SEEK_SET)
        with contextlib.suppress(OSError):  # reset the peak RSS
            Path("/proc/self/clear_refs").write_text("5")
        before, hang = _status("VmRSS"), False
        record: dict = {"i": index}
        signal.alarm(case_seconds)
        try:
            outcome = check(cases[index])
            record["labels"] = [outcome] if isinstance(outcome, str) else list(outcome)
        except _CaseHang:
            record["finding"], hang = f"a hang (still running after {case_seconds} s)", True
        except BaseException as exc:  # every other exception is the finding
            record["finding"] = _escaped(exc)
        finally:
            signal.alarm(0)
        grown = (_status("VmHWM") - before) / 2**20
        if peak_mb is not None and grown > peak_mb and "finding" not in record:
            record["finding"] = f"its peak memory grew by {grown:.0f} MiB (bound {peak_mb:.0f})"
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(writer, data) :]
        if hang:  # threads it started may still run: the next case gets a fresh child
            return


def _escaped(exc: BaseException) -> str:
    """``escaped: Type: message (in torchgraft/FILE:LINE, FUNCTION)`` and the innermost frames."""
    trace = traceback.format_exception(exc)
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if "/torchgraft/" in f.filename]
    where = ""
    if ours:
        path = ours[-1].filename
        where = (
            f" (in {path[path.rindex('/torchgraft/') + 1 :]}:{ours[-1].lineno}, {ours[-1].name})"
        )
    first = "".join(trace[-1:]).strip().replace("\n", " ")[:800]
    return f"escaped: {first}{where}\n" + "".join(trace[-7:-1])[-2500:]
