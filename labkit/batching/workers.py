"""The threads batches compute on: one FIFO of jobs per thread, no futures.

A `concurrent.futures` pool builds a future, a work item and weak references per job; a batch
of a tiny model costs less than that bookkeeping on a 2-core box. Here a job is a plain call
whose result the job itself hands back (`Batcher._dispatch`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue

__all__ = ["Workers"]


class Workers:
    """``count`` threads (not daemons: at exit, a batch still computing finishes rather than
    being killed inside torch); job ``i`` of `put` runs on thread ``i % count``, in order.
    ``setup`` runs once on each thread before its first job (thread-local state, such as grad mode)."""

    def __init__(self, count: int, name: str = "labkit-batcher", setup: Callable[[], None] | None = None) -> None:
        self._queues: list[SimpleQueue[Callable[[], None] | None]] = [SimpleQueue() for _ in range(count)]
        self.threads = [threading.Thread(target=self._work, args=(q, setup), name=f"{name}_{i}")
                        for i, q in enumerate(self._queues)]
        for t in self.threads:
            t.start()

    def put(self, lane: int, job: Callable[[], None]) -> None:
        self._queues[lane % len(self._queues)].put(job)

    def shutdown(self) -> None:
        """Each thread ends once the jobs already queued on it have run."""
        for q in self._queues:
            q.put(None)

    @staticmethod
    def _work(jobs: SimpleQueue, setup: Callable[[], None] | None) -> None:
        if setup is not None:
            setup()
        while (job := jobs.get()) is not None:
            job()  # jobs catch their own exceptions (`Batcher._compute`)
