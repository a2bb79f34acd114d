"""ONNX exports as predict loads them: every byte they run on accounted for, their interface
checked against the sidecar before they run, their failures typed.

What :func:`load_checked` does, in order (onnxruntime sees the model only after step 3):

1. The caller (:func:`~.load.load_exported`) read the file once (:func:`read_model_bytes`:
   a regular file of at most 2 GiB, what one protobuf holds) and checked its sha256. Those
   same bytes are what onnxruntime loads: the file is not read again by name.
2. The protobuf is parsed from the bytes, and every tensor in it (initializers, node
   attributes, the subgraphs of ``If``/``Loop``/``Scan``, functions, training graphs) visited
   with a stack: a tensor stored outside the file names its file by ``location``.
3. Each such file must be a plain file name in the model's folder (no folder part, no ``..``,
   no absolute path, no link leading out of the folder), recorded in the sidecar's
   ``external_data`` with its size and sha256, and match them now: the sha256 of the model
   file alone would not notice its weights changing (:mod:`.sidecar`). onnxruntime
   is then told that folder.
4. The session's declared interface is checked against the sidecar: one float32 input of
   rank 4 whose batch is not fixed and whose other sizes, where fixed, are the
   preprocessing's; one floating-point output of rank 2 with one column per class, where
   fixed; the names, where the sidecar records them. What is left symbolic is checked on each
   output, once run.

A model that does not fit is a :class:`~torchgraft.errors.CheckpointError` (exit status 2: the
file is not what its sidecar says, like a file whose sha256 differs); one that fits and fails
inside onnxruntime while running, an :class:`~torchgraft.errors.ExportError` (exit status 1:
the work was attempted and the model failed at it). onnxruntime's log is off: it prints node
names from the file, raw, on stderr.

Not promised: onnxruntime's kernels are not bounded in time or memory (a few hundred bytes of
``Loop`` run forever; docs/security.md). External files are hashed, then read by onnxruntime
by name: a file swapped between the two by someone who can write the folder goes unnoticed.

``onnx`` and ``onnxruntime`` (the ``[onnx]`` extra) are imported only when a function needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...checkpoint.regular_files import FileProblem, read_regular
from ...errors import CheckpointError, ExportError
from ...text import printable
from .sidecar import check_external_data, external_locations, sidecar_path

__all__ = [
    "Interface",
    "load_checked",
    "open_session",
    "read_model_bytes",
    "runner",
]

#: One protobuf message holds at most 2 GiB: a larger file is not an ONNX model.
MAX_ONNX_BYTES = (1 << 31) - 1
#: onnxruntime's log severity "fatal only": its messages quote node names from the file raw.
_QUIET = 4
#: Output types predict can turn into probabilities.
_FLOAT_OUTPUTS = {"tensor(float)", "tensor(double)", "tensor(float16)"}
_AGAIN = "export the run again"


@dataclass(frozen=True)
class Interface:
    """What the sidecar says the model takes and returns.

    Attributes:
        input_size: ``(channels, height, width)`` of one image (the preprocessing's).
        classes: the number of classes: columns of the output.
        input_name, output_name: the graph's names, where the sidecar records them.
    """

    input_size: tuple[int, int, int]
    classes: int
    input_name: str | None = None
    output_name: str | None = None


def read_model_bytes(path: Path) -> bytes:
    """The bytes of the ONNX file ``path``: a regular file of at most 2 GiB.

    Raises:
        CheckpointError: not a regular file (a FIFO, a device …), unreadable, or too long.
    """
    try:
        return read_regular(path, MAX_ONNX_BYTES)
    except FileProblem as problem:
        raise CheckpointError(f"{printable(path)}: {problem}; {_AGAIN}") from None


def load_checked(
    path: Path,
    data: bytes,
    recorded: Sequence[dict[str, Any]] | None,
    interface: Interface,
    threads: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model ``data`` (read from ``path``, sha256 already checked) as a callable, after
    steps 2-4 of the module docstring.

    Args:
        recorded: the sidecar's ``external_data`` (None: the sidecar has no such field).
        threads: onnxruntime's intra-op threads (default: torch's thread count).

    Raises:
        CheckpointError: not ONNX, external data not covered or not matching, an interface
            other than ``interface``, or a file onnxruntime cannot load.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(f"{printable(path)}: not ONNX ({_reason(exc)}); {_AGAIN}") from None
    locations = external_locations(model)
    check_external_data(path, locations, recorded)
    try:
        session = open_session(data, threads, path.parent if locations else None)
    except Exception as exc:  # onnxruntime's own types (Fail, InvalidGraph …)
        raise CheckpointError(
            f"{printable(path)}: cannot load it as onnx ({_reason(exc)}); {_AGAIN}"
        ) from None
    problems = interface_problems(session, interface)
    if problems:
        raise CheckpointError(_misfit(path, problems))
    return runner(session, path, interface.classes)


# -- running -----------------------------------------------------------------------------------


def open_session(source: bytes | str, threads: int | None, folder: Path | None = None) -> Any:
    """An onnxruntime session on the CPU, its log off.

    Args:
        source: the model's bytes, or a path (the export's check, on the file it wrote).
        threads: intra-op threads; default torch's count, so an export is not faster or slower
            than the eager model merely because it uses other cores.
        folder: where the model's external files are, when it is loaded from bytes.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = _QUIET
    if folder is not None:
        key = "session.model_external_initializers_file_folder_path"
        options.add_session_config_entry(key, str(folder.resolve()))
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def runner(
    session: Any, path: Path, classes: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``session`` as a function of a normalised batch ``(B, C, H, W)``: logits ``(B, classes)``.

    Raises (when called):
        ExportError: onnxruntime failed while running the model.
        CheckpointError: an output that is not ``(B, classes)`` floats (``classes`` given).
    """
    import onnxruntime

    name = session.get_inputs()[0].name
    options = onnxruntime.RunOptions()
    options.log_severity_level = _QUIET

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            output = session.run(None, {name: array}, options)[0]
        except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument …)
            raise ExportError(
                f"{printable(path)}: onnxruntime failed while running it ({_reason(exc)}); it "
                "declares the input and output its sidecar describes, so the model itself "
                "fails on these images: export the run again, or ask whoever made the file"
            ) from None
        if classes is not None:
            _check_output(output, (len(array), classes), path)
        return torch.from_numpy(output)

    return run


def _check_output(output: Any, want: tuple[int, int], path: Path) -> None:
    """An output of ``want`` floats (batch, classes), or a CheckpointError saying what it is."""
    import numpy as np

    if not isinstance(output, np.ndarray):
        got = f"a {type(output).__name__}, not an array,"
    elif output.dtype.kind != "f" or output.shape != want:
        got = f"{output.dtype} of shape {_shape(output.shape)}"
    else:
        return
    found = f"its output is {got} for a batch of {want[0]}; the sidecar says {_shape(want)}"
    raise CheckpointError(_misfit(path, [found]))


# -- the interface -----------------------------------------------------------------------------


def interface_problems(session: Any, want: Interface) -> list[str]:
    """How the inputs and outputs ``session`` declares differ from ``want`` (empty: none)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problems = []
    if len(inputs) != 1:
        problems.append(
            f"it takes {len(inputs)} inputs ({_names(inputs)}); the sidecar describes one "
            "(the image batch)"
        )
    else:
        problems += _declared_problems("input", inputs[0], want.input_name, (0, *want.input_size))
    if len(outputs) != 1:
        named = f" ({printable(want.output_name)})" if want.output_name else ""
        problems.append(
            f"it has {len(outputs)} outputs ({_names(outputs)}); the sidecar describes one{named}"
        )
    else:
        problems += _declared_problems("output", outputs[0], want.output_name, (0, want.classes))
    return problems


def _declared_problems(role: str, arg: Any, name: str | None, dims: tuple[int, ...]) -> list[str]:
    """One input's or output's name, type and shape against the sidecar's (``dims[0]``, the
    batch, is never fixed)."""
    problems = []
    if name is not None and arg.name != name:
        problems.append(
            f"its {role} is named {printable(arg.name)}; the sidecar says {printable(name)}"
        )
    if role == "input" and arg.type != "tensor(float)":
        problems.append(f"its input takes {_type(arg.type)}; the sidecar says float32")
    if role == "output" and arg.type not in _FLOAT_OUTPUTS:
        problems.append(f"its output holds {_type(arg.type)}, not floating-point logits")
    shape = list(arg.shape or [])  # []: a rank onnxruntime does not know; checked once run
    if shape and len(shape) != len(dims):
        problems.append(
            f"its {role} has {len(shape)} dimensions {_shape(shape)}; the sidecar says "
            f"{len(dims)} {_shape(['batch', *dims[1:]])}"
        )
        return problems
    for axis, (got, expected) in enumerate(zip(shape, dims, strict=False)):
        if not isinstance(got, int) or (axis == 0 and role == "output"):
            continue  # symbolic; an output's batch follows the input's
        if axis == 0:
            problems.append(
                f"its input has a fixed batch of {got} (predict sends batches of any size)"
            )
        elif got != expected and role == "output":
            problems.append(
                f"its output has {got} columns; the sidecar says {expected} (one per class)"
            )
        elif got != expected:
            problems.append(f"its input has size {got} at axis {axis}; the sidecar says {expected}")
    return problems


def _misfit(path: Path, problems: list[str]) -> str:
    return (
        f"{printable(path)}: does not fit its sidecar {printable(sidecar_path(path).name)}: "
        f"{'; '.join(problems)}; {_AGAIN}, or give the sidecar written with this file"
    )


def _shape(dims: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if d is None else printable(d) for d in dims) + ")"


def _type(kind: str) -> str:
    """``tensor(int64)`` -> ``int64``; other kinds (``seq(…)``, ``map(…)``) as they are."""
    inner = kind[len("tensor(") : -1] if kind.startswith("tensor(") else kind
    return printable(inner)


def _names(args: Sequence[Any]) -> str:
    return ", ".join(printable(arg.name) for arg in args)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, escaped and at most 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return printable(lines[0][:300]) if lines else type(exc).__name__
