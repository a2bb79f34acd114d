"""`torchgraft train`, its first all-layers epoch measured for the tensors training holds.

Run: ``python bench/_training_memory.py OUT.json [train options…]`` (what bench/peft.py runs
as each child process). It is the installed CLI's ``main(["train", …])`` with one change:
the first epoch that trains through the model (not on cached features) runs its first
:data:`STEPS` optimizer steps under torch's profiler with ``profile_memory``, and ``OUT.json`` receives, in bytes:

- ``held``: the tensors training holds when the epoch starts — the model's parameters and
  buffers (adapters included), their gradients and the optimizer's state (each storage once);
- ``growth``: the most the CPU allocator's live bytes rose above their level at the epoch's
  start while it ran (gradients, the optimizer's state created at its first step, the
  activations autograd keeps, each step's temporaries, the batches);
- ``peak``: ``held + growth`` — the CPU counterpart of ``torch.cuda.max_memory_allocated``
  over training steps, which is what "peak training memory" means to people fine-tuning
  on GPUs. CPU has no allocator statistics outside the profiler.

The process's resident memory is another figure (bench/peft.py reports both): on a CPU it
is dominated by what every run loads (torch's libraries, the model, the data, the graft's
reference model) and by what glibc's allocator keeps of freed blocks, not by training.

The steps measured run slower (the profiler records every operation and allocation): a few
seconds of an epoch whose time is one of those bench/peft.py takes a median over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0], where bench/peft.py would shadow Hugging Face
# peft for torchgraft.adapters.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402
from torch._C._profiler import _EventType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from torchgraft.cli.main import main  # noqa: E402
from torchgraft.engine import session  # noqa: E402

#: Optimizer steps measured: the first allocates the gradients and the optimizer's state,
#: the next ones show a step with both held (every batch but the last has the same shape).
STEPS = 3


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters, buffers and gradients and the optimizer's state,
    each storage counted once."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
    return sum(nbytes for _, nbytes in storages)


def growth_bytes(profiler: profile) -> int:
    """The highest the allocator's live bytes rose above their level at the profile's start
    (blocks allocated before it and freed during it are not seen: the caller frees the
    gradients first)."""
    events = list(profiler.profiler.kineto_results.experimental_event_tree())
    totals: list[tuple[int, int]] = []
    while events:
        event = events.pop()
        if event.typed[0] == _EventType.Allocation:
            totals.append((event.start_time_ns, event.typed[1].total_allocated))
        events.extend(event.children)
    return max((total for _, total in totals), default=0)


def measured(out: Path):
    """Session._train with its first all-layers epoch's first steps measured into ``out``."""
    original = session.Session._train

    def _train(self, epoch: int, cached: bool, progress):
        if cached or out.exists():
            return original(self, epoch, cached, progress)
        trainer = self.trainer
        # The epoch starts so (train_one_epoch), and a gradient freed inside the profile but
        # allocated before it would not be subtracted.
        trainer.optimizer.zero_grad(set_to_none=True)
        held = held_bytes(trainer.model, trainer.optimizer)
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        steps = 0

        def count(optimizer, args, kwargs) -> None:
            nonlocal steps
            steps += 1
            if steps == STEPS:
                profiler.stop()

        hook = trainer.optimizer.register_step_post_hook(count)
        profiler.start()
        try:
            result = original(self, epoch, cached, progress)
        finally:
            hook.remove()
            if steps < STEPS:
                profiler.stop()
        growth = growth_bytes(profiler)
        figures = {
            "epoch": epoch + 1,
            "steps": min(steps, STEPS),
            "held": held,
            "growth": growth,
            "peak": held + growth,
        }
        out.write_text(json.dumps(figures))
        return result

    return _train


if __name__ == "__main__":
    target = Path(sys.argv[1]).resolve()
    session.Session._train = measured(target)
    sys.exit(main(["train", *sys.argv[2:]]))
