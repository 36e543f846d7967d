"""Request queues: who waits, in what order, and who goes into the next batch.

A queue holds `Request`s and counts only the live ones. A request that times out or whose
caller gives up stays in the container as a tombstone (removing from the middle of a deque or a
heap is slow) and is skipped when reached; ``len()`` is always the number still waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from labkit.batching.errors import QueueFullError

__all__ = ["Request", "FifoQueue", "PriorityQueues"]

QUEUED, DISPATCHED, DROPPED = 0, 1, 2
_seq = itertools.count()


@dataclass(eq=False, slots=True)
class Request:
    """One submitted input and the future its caller awaits."""

    x: torch.Tensor
    future: asyncio.Future
    arrival: float  # event-loop clock, seconds
    deadline: float | None = None  # drop it with TimeoutError if not dispatched by then
    priority: int = 0
    state: int = QUEUED
    timer: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> bool:
        return self.state == QUEUED


class FifoQueue:
    """First in, first out, with a bound on the number waiting."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: deque[Request] = deque()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, req: Request) -> None:
        if self._live >= self.max_size:
            raise QueueFullError(f"queue full: {self._live} requests waiting (max_queue_size={self.max_size})")
        self._items.append(req)
        self._live += 1

    def discard(self, req: Request) -> None:
        """Forget a request that left the queue without being dispatched."""
        req.state = DROPPED
        self._live -= 1

    def oldest_arrival(self) -> float | None:
        while self._items and not self._items[0].queued:
            self._items.popleft()
        return self._items[0].arrival if self._items else None

    def take(self, n: int, now: float | None = None) -> list[Request]:
        """Up to ``n`` live requests, oldest first, marked dispatched."""
        batch: list[Request] = []
        items = self._items
        while items and len(batch) < n:
            req = items.popleft()
            if req.state == QUEUED:
                req.state = DISPATCHED
                batch.append(req)
        self._live -= len(batch)
        return batch

    def waiting(self) -> list[Request]:
        return [r for r in self._items if r.queued]


class _Level:
    """One priority level: FIFO (a deque) or earliest deadline first (a heap)."""

    def __init__(self, order: str, max_size: int) -> None:
        self.order = order
        self.max_size = max_size
        self.fifo: deque[Request] = deque()
        self.heap: list[tuple[float, int, Request]] = []
        self.live = 0

    def push(self, req: Request) -> None:
        if self.order == "fifo":
            self.fifo.append(req)
        else:  # requests without a deadline go after every request that has one, in arrival order
            key = req.deadline if req.deadline is not None else float("inf")
            heapq.heappush(self.heap, (key, next(_seq), req))
        self.live += 1

    def _prune(self) -> None:
        if self.order == "fifo":
            while self.fifo and not self.fifo[0].queued:
                self.fifo.popleft()
        else:
            while self.heap and not self.heap[0][2].queued:
                heapq.heappop(self.heap)

    def head(self) -> Request | None:
        self._prune()
        if self.order == "fifo":
            return self.fifo[0] if self.fifo else None
        return self.heap[0][2] if self.heap else None

    def pop(self) -> Request:
        req = self.head()
        assert req is not None
        if self.order == "fifo":
            self.fifo.popleft()
        else:
            heapq.heappop(self.heap)
        self.live -= 1
        return req

    def aged(self, cutoff: float, k: int) -> list[Request]:
        """Up to ``k`` of the oldest live requests that arrived at or before ``cutoff``."""
        if self.order == "fifo":  # arrival order: the aged ones are at the front
            found = []
            for r in self.fifo:
                if r.arrival > cutoff or len(found) == k:
                    break
                if r.queued:
                    found.append(r)
            return found
        return sorted((r for _, _, r in self.heap if r.queued and r.arrival <= cutoff), key=lambda r: r.arrival)[:k]

    def items(self) -> list[Request]:
        reqs = list(self.fifo) if self.order == "fifo" else [r for _, _, r in self.heap]
        return [r for r in reqs if r.queued]


class PriorityQueues:
    """N levels (0 is the most important), each with its own bound and order.

    ``take`` is *work-conserving*: it fills every slot while any request waits. Slots are shared
    by ``policy``: ``"strict"`` serves level 0 first, then 1, ...; ``"weighted"`` shares them by
    ``weights`` among the levels that have requests (smooth weighted round robin, so shares hold
    across batches too). Before either, any request that has waited ``max_age_s`` or more goes
    first, oldest first: the starvation bound.
    """

    def __init__(
        self,
        levels: int,
        *,
        policy: str = "strict",
        weights: Sequence[float] | None = None,
        order: str = "fifo",
        max_sizes: Sequence[int],
        max_age_s: float | None = None,
        aged_share: float = 0.25,
    ) -> None:
        if policy not in ("strict", "weighted"):
            raise ValueError(f"policy must be 'strict' or 'weighted', got {policy!r}")
        if order not in ("fifo", "edf"):
            raise ValueError(f"order must be 'fifo' or 'edf' (earliest deadline first), got {order!r}")
        weights = list(weights) if weights is not None else [float(2 ** (levels - 1 - i)) for i in range(levels)]
        if len(weights) != levels or min(weights) <= 0:
            raise ValueError(f"weights must be {levels} positive numbers, got {weights}")
        if not 0 < aged_share <= 1:
            raise ValueError(f"aged_share must be in (0, 1], got {aged_share}")
        self.policy = policy
        self.weights = weights
        self.max_age_s = max_age_s
        self.aged_share = aged_share
        self.levels = [_Level(order, m) for m in max_sizes]
        self._credit = [0.0] * levels

    def __len__(self) -> int:
        return sum(level.live for level in self.levels)

    def push(self, req: Request) -> None:
        level = self.levels[req.priority]
        if level.live >= level.max_size:
            raise QueueFullError(
                f"queue full for priority {req.priority}: {level.live} requests waiting (max {level.max_size})"
            )
        level.push(req)

    def discard(self, req: Request) -> None:
        req.state = DROPPED
        self.levels[req.priority].live -= 1

    def oldest_arrival(self) -> float | None:
        if self.levels[0].order == "edf":  # heap heads are the earliest deadlines, not the oldest
            return min((r.arrival for lv in self.levels for r in lv.items()), default=None)
        return min((h.arrival for lv in self.levels if (h := lv.head()) is not None), default=None)

    def take(self, n: int, now: float | None = None) -> list[Request]:
        batch: list[Request] = []
        if self.max_age_s is not None and now is not None:
            batch += self._take_aged(min(n, math.ceil(self.aged_share * n)), now)
        while len(batch) < n:
            level = self._next_level()
            if level is None:
                break
            req = self.levels[level].pop()
            req.state = DISPATCHED
            batch.append(req)
        return batch

    def _next_level(self) -> int | None:
        nonempty = [i for i, lv in enumerate(self.levels) if lv.head() is not None]
        if not nonempty:
            return None
        if self.policy == "strict":
            return nonempty[0]
        total = sum(self.weights[i] for i in nonempty)
        for i in nonempty:
            self._credit[i] += self.weights[i]
        best = max(nonempty, key=lambda i: self._credit[i])
        self._credit[best] -= total
        return best

    def _take_aged(self, k: int, now: float) -> list[Request]:
        """The ``k`` oldest requests that have waited ``max_age_s``, from any level."""
        cutoff = now - self.max_age_s
        candidates = [r for lv in self.levels for r in lv.aged(cutoff, k)]
        aged = sorted(candidates, key=lambda r: r.arrival)[:k]
        for req in aged:
            req.state = DISPATCHED
            self.levels[req.priority].live -= 1
        return aged

    def waiting(self) -> list[Request]:
        return [r for lv in self.levels for r in lv.items()]

    def describe(self) -> dict[str, Any]:
        return {"waiting_per_level": [lv.live for lv in self.levels]}
