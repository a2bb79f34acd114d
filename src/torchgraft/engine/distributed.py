"""The processes of one run: alone, or one of several started by ``torchrun``.

torchgraft manages no processes. Under ``torchrun`` (or anything that sets the same
variables: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) every
process runs the same ``train``; :func:`join` reads that environment, opens the process
group (``nccl`` when the run uses CUDA devices, ``gloo`` on CPUs) and gives each process its
device (``cuda:LOCAL_RANK``). Without those variables it returns :data:`ALONE`, whose
operations do nothing, so the engine has one code path.

Rules the engine keeps, so that nothing assumes one machine:

* rank 0 alone writes the run directory and prints; the others never read what it writes
  (the resume state, the run folder's name and the configuration reach them through the
  process group, :meth:`Processes.broadcast`), so a run directory on one node's local disk
  works;
* every process waits at a barrier after rank 0 writes a checkpoint, so all of them are
  at the same epoch boundary when one of them dies;
* no fixed ports or paths: the rendezvous is torchrun's.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..checkpoint.documents import DocumentLimits, read_json
from ..errors import CheckpointError, ConfigError, TrainingError

__all__ = [
    "ALONE",
    "Processes",
    "check_processes",
    "earlier_attempt",
    "join",
    "joined",
    "launched_by_torchrun",
    "torchrun_record",
]

#: torchrun.json is a few lines.
_RECORD_LIMITS = DocumentLimits(max_bytes=64 * 1024, max_depth=4)

#: How long a process waits for the others at a collective before the run fails. Long
#: enough for rank 0 to write a large checkpoint (and the others to compute a feature cache).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes.

    Attributes:
        rank: 0 … world - 1 (0 writes and prints).
        world: how many processes train together.
        local_rank: the index of this process on its machine (its GPU).
        backend: ``gloo``, ``nccl``, or None when alone.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def alone(self) -> bool:
        return self.world == 1

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def describe(self) -> str:
        if self.alone:
            return "1 process"
        return f"{self.world} processes ({self.backend})"

    def barrier(self) -> None:
        if not self.alone:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if self.alone:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's ``value``, in rank order, on rank 0 (None on the others)."""
        if self.alone:
            return [value]
        boxes = [None] * self.world if self.main else None
        dist.gather_object(value, boxes, dst=0)
        return boxes

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if self.alone:
            return [value]
        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, value)
        return boxes

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (in place; also returned)."""
        if not self.alone:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def concatenate(self, rows: torch.Tensor) -> torch.Tensor:
        """Every process's ``rows`` (first dimensions may differ) stacked in rank order."""
        if self.alone:
            return rows
        counts = torch.tensor([len(rows)], device=rows.device)
        sizes = [torch.zeros_like(counts) for _ in range(self.world)]
        dist.all_gather(sizes, counts)
        longest = int(max(s.item() for s in sizes))
        padded = rows.new_zeros((longest, *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat(
            [part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)]
        )

    def leave(self) -> None:
        """Close the process group (after the last collective)."""
        if not self.alone and dist.is_initialized():
            dist.destroy_process_group()


#: A run of one process: every collective is a no-op.
ALONE = Processes()

_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun (or alike)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def join(device: str) -> Processes:
    """Join the run's process group when launched by torchrun; :data:`ALONE` otherwise.

    Args:
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``): CUDA runs use ``nccl`` and
            one GPU per local rank; CPU runs use ``gloo``.

    Raises:
        ConfigError: torchrun's variables are incomplete, or more processes on this machine
            than GPUs for a CUDA run.
    """
    if not launched_by_torchrun():
        return ALONE
    missing = [name for name in _VARIABLES if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
            "several processes with torchrun (torchrun --nproc_per_node N -m torchgraft train)"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {rank} is local rank {local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes "
                "per machine (torchrun --nproc_per_node), or train.device=cpu"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        # torchrun's store can outlive an attempt: keys of a restarted run's killed
        # processes (their addresses) must not be read by the new ones.
        store, rank, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
        store = dist.PrefixStore(f"torchgraft/attempt-{torchrun_restart()}", store)
        dist.init_process_group(
            backend=backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT
        )
    return Processes(rank, world, local_rank, backend)


def rank_device(device: str, processes: Processes) -> str:
    """``train.device`` for this process: ``cuda:LOCAL_RANK`` for a CUDA run of several."""
    if processes.alone or processes.backend != "nccl":
        return device
    return f"cuda:{processes.local_rank}"


def torchrun_restart() -> int:
    """How many times torchrun restarted this run's workers (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def torchrun_run_id() -> str | None:
    """The rendezvous id (one per torchrun launch with ``--standalone``; ``--rdzv-id``)."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def launch_arguments(nproc: int, command: Sequence[str]) -> list[str]:
    """torchrun's arguments for ``torchgraft train --nproc N``: one machine, N processes."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "torchgraft", *command]


@contextlib.contextmanager
def joined(device: str) -> Iterator[Processes]:
    """:func:`join` for the length of a run, and the process group left after it. A
    collective that fails because another process is gone becomes a :class:`TrainingError`
    saying how to continue (that process's own error is the one to read)."""
    processes = join(device)
    try:
        yield processes
        # Every process ends together: none closes its connections while another is still
        # in a collective or writing (rank 0's last files).
        processes.barrier()
    except RuntimeError as exc:
        if processes.alone or not _lost_peer(exc):
            raise
        raise TrainingError(
            f"lost contact with another process of the run ({_first_line(exc)}); it failed or "
            "was stopped (its own error is above). torchrun --max-restarts N resumes the run "
            "from its last complete epoch; otherwise continue it with "
            "torchrun … -m torchgraft train --resume RUN_DIR"
        ) from exc
    finally:
        if not processes.alone:
            # DistributedDataParallel replicas (often in reference cycles) hold the process
            # group: freed now, so the group's threads stop here, while the interpreter is
            # whole, not during its shutdown (where gloo can abort a finished process).
            gc.collect()
        processes.leave()


def _lost_peer(exc: RuntimeError) -> bool:
    """A collective failed because a peer process is gone (not a bug of this process)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(
        marker in text
        for marker in ("Connection reset", "Connection closed", "Connection refused", "gloo/")
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def check_processes(config: Any, processes: Processes) -> None:
    """What several processes need of a run's configuration (a ``RunConfig``)."""
    if processes.alone:
        return
    batch = config.data.batch_size  # None: chosen later, a multiple of the processes
    if batch is not None and batch % processes.world:
        raise ConfigError(
            f"data.batch_size: {batch} is the global batch; with {processes.world} processes it "
            f"must be a multiple of {processes.world} (each process takes an equal part)"
        )
    if config.train.sync_bn and processes.backend != "nccl":
        raise ConfigError(
            "train.sync_bn: SyncBatchNorm runs on GPUs only (torch has no CPU implementation); "
            "drop it for a CPU run"
        )


def torchrun_record(processes: Processes) -> dict[str, Any]:
    """``torchrun.json``: which launch made a run folder (how a restart finds it again)."""
    return {"run_id": torchrun_run_id(), "world": processes.world, "restart": torchrun_restart()}


def earlier_attempt(output_dir: str | Path) -> Path | None:
    """After a torchrun restart: the run folder the failed attempt of this launch created
    in ``output_dir`` (the newest whose torchrun.json has this rendezvous id), or None."""
    run_id = torchrun_run_id()
    if torchrun_restart() == 0 or not run_id:
        return None
    found = []
    for record in Path(output_dir).glob("*/torchrun.json"):
        try:
            same = read_json(record, CheckpointError, _RECORD_LIMITS).get("run_id") == run_id
        except (CheckpointError, AttributeError):
            continue
        if same:
            found.append(record.parent)
    return max(found, key=lambda path: path.stat().st_mtime) if found else None
