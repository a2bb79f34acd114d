"""A thread-pool map over many small items, in bounded memory and with little overhead.

``Executor.map`` submits every item at once: a million items are a million queued futures
(about 1 KB each) before the first one runs, and each item pays a future's overhead (tens of
microseconds, more than a missing file costs to report). :func:`map_in_threads` hands each
thread a *batch* of items and keeps only a few batches queued per thread, so memory stays
constant and the overhead is paid once per batch. Pillow releases the GIL while it decodes,
so threads use several cores for image work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["map_in_threads"]

T = TypeVar("T")
R = TypeVar("R")

BATCH = 64  # items per task
AHEAD = 4  # tasks queued per thread


def map_in_threads(
    function: Callable[[T], R], items: Sequence[T], workers: int, *, name: str = "torchgraft"
) -> Iterator[tuple[T, R]]:
    """``(item, function(item))`` for every item, in the items' order.

    Args:
        function: called once per item, in one of ``workers`` threads (1 or more).
        items: the inputs; only their batches in flight are referenced by the pool.
        workers: threads.
        name: the threads' name prefix.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        pending: deque[Future] = deque()
        starts = iter(range(0, len(items), BATCH))
        for start in starts:
            pending.append(pool.submit(_batch, function, items[start : start + BATCH]))
            if len(pending) >= AHEAD * max(1, workers):
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _batch(function: Callable[[T], R], items: Sequence[T]) -> list[tuple[T, R]]:
    return [(item, function(item)) for item in items]
