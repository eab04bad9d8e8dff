"""N requests in flight, results handled in the order they were asked for.

    run_ordered(next_item, work, on_result, workers=16)

`work(item)` runs on `workers` threads; `on_result(item, result)` runs on the calling thread, one
item at a time, in the order `next_item()` gave the items, whatever order they finish in. So the
caller alone writes the output, and writes it in source order: a result that finishes early waits
in memory until every earlier one has been handled. A kill at any moment therefore leaves a file
that holds an unbroken prefix of the run's items, which a rerun continues.

`next_item()` is asked for more whenever fewer than `ahead` items are waiting to be handled; it
returns None when it has nothing to give now (it is asked again after the next result). The loop
ends when it has nothing and nothing is waiting, when `on_result` returns True, or when `work` or
`on_result` raises (the error surfaces when that item's turn comes; later items are dropped).

The threads are daemons: after an error or Ctrl-C the process exits without waiting for requests
still in flight (their answers are dropped, never written).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

AHEAD_PER_WORKER = 4  # items waiting per worker: enough that one slow item does not idle the others


class _Job(Generic[Item, Result]):
    __slots__ = ("item", "done", "result", "error", "cancelled")

    def __init__(self, item: Item):
        self.item = item
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def wait(self) -> Result:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


def _serve(jobs: queue.SimpleQueue, work: Callable) -> None:
    while (job := jobs.get()) is not None:
        if job.cancelled:
            continue
        try:
            job.result = work(job.item)
        except BaseException as e:  # handed to the calling thread, raised when this item's turn comes
            job.error = e
        job.done.set()


def run_ordered(next_item: Callable[[], Item | None], work: Callable[[Item], Result],
                on_result: Callable[[Item, Result], bool | None], workers: int, ahead: int | None = None) -> None:
    ahead = ahead or AHEAD_PER_WORKER * workers
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    threads = [threading.Thread(target=_serve, args=(jobs, work), daemon=True, name=f"worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    waiting: deque[_Job] = deque()
    try:
        while True:
            while len(waiting) < ahead and (item := next_item()) is not None:
                waiting.append(_Job(item))
                jobs.put(waiting[-1])
            if not waiting:
                return
            job = waiting.popleft()
            if on_result(job.item, job.wait()):
                return
    finally:
        for job in waiting:
            job.cancelled = True
        for _ in threads:
            jobs.put(None)
