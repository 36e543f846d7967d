"""What a batcher did: the figures the notebooks plot and the report records."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from labkit.measure import LatencyStats

__all__ = ["BatcherStats"]


class BatcherStats:
    """Counters and recent samples, updated on the batcher's event loop (never from a worker).

    Samples keep the last ``window`` values, so a long-running batcher's memory stays bounded.
    """

    def __init__(self, window: int = 20_000) -> None:
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.submitted = 0  # accepted into the queue
        self.completed = 0  # got a result
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self.queue_wait_ms: deque[float] = deque(maxlen=self.window)
        self.batch_ms: deque[float] = deque(maxlen=self.window)
        self.rejected = 0  # queue full at submit
        self.invalid = 0  # wrong shape, dtype or device at submit
        self.timed_out = 0
        self.cancelled = 0
        self.failed = 0  # the model raised for this request
        self.shed = 0  # refused by the latency target (AdaptiveBatcher)

    def summary(self) -> dict[str, Any]:
        """Counts, mean batch size and p50/p99 of queue wait and batch time, as plain numbers."""
        waits = LatencyStats.from_samples(self.queue_wait_ms)
        times = LatencyStats.from_samples(self.batch_ms)
        dispatched = sum(n * c for n, c in self.batch_sizes.items())
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "batches": self.batches,
            "mean_batch_size": dispatched / self.batches if self.batches else 0.0,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "queue_wait_p50_ms": waits.p50_ms,
            "queue_wait_p99_ms": waits.p99_ms,
            "batch_p50_ms": times.p50_ms,
            "batch_p99_ms": times.p99_ms,
            "rejected": self.rejected,
            "invalid": self.invalid,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "shed": self.shed,
        }
