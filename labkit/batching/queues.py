"""Request queues: who waits, in what order, and who goes into the next batch.

A queue holds `Request`s and counts only the live ones. A request that times out or whose
caller gives up stays in its container as a tombstone (removing from the middle of a deque or a
heap is slow) and is skipped when reached; ``len()`` is always the number still waiting.
Containers are compacted once tombstones outnumber the live requests, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from labkit.batching.errors import QueueFullError

__all__ = ["Request", "InFlight", "RequestQueue", "FifoLevel", "EdfLevel", "FifoQueue", "PriorityQueues"]

QUEUED, DISPATCHED, DROPPED = 0, 1, 2
_seq = itertools.count()
_SLACK = 64  # tombstones tolerated before compaction, beyond one per live request


@dataclass(eq=False, slots=True)
class Request:
    """One submitted input and the future its caller awaits."""

    x: torch.Tensor
    future: asyncio.Future
    arrival: float  # event-loop clock, seconds
    deadline: float | None = None  # drop it with TimeoutError if not computing by then
    priority: int = 0
    state: int = QUEUED
    timer: asyncio.TimerHandle | None = None
    batch: Any = None  # the in-flight batch it was dispatched in, while it has a timer

    @property
    def queued(self) -> bool:
        return self.state == QUEUED


class InFlight:
    """A dispatched batch. Until a worker starts it (`claim`), its requests may still time out."""

    __slots__ = ("reqs", "slot", "taken", "timed", "collated", "lock", "started", "result")

    def __init__(self, reqs: list[Request], slot: int, taken: float) -> None:
        self.reqs = reqs
        self.slot = slot
        self.taken = taken  # when it left the queue (loop clock)
        self.timed = False  # does any of its requests have a timer (that may drop it)?
        self.collated: torch.Tensor | None = None  # its inputs stacked on the loop (engine.BatchRunner.collates_here)
        self.lock = threading.Lock()
        self.started = False
        self.result: tuple[list[Request], list[Any], float, float] | None = None

    def claim(self) -> list[Request]:
        """On the worker, as compute starts: the requests still to compute."""
        with self.lock:
            self.started = True
            return [r for r in self.reqs if r.state == DISPATCHED] if self.timed else self.reqs

    def expire(self, req: Request) -> bool:
        """On the loop, at ``req``'s deadline: True if it left the batch before compute began."""
        with self.lock:
            if self.started:
                return False
            req.state = DROPPED
            return True


class RequestQueue(Protocol):
    """What a `Batcher` needs from its queue."""

    def __len__(self) -> int: ...
    def push(self, req: Request) -> int: ...  # the number now waiting; QueueFullError when full
    def discard(self, req: Request) -> None: ...  # a waiting request left without dispatch
    def oldest_arrival(self) -> float | None: ...
    def take(self, n: int, now: float | None = None) -> list[Request]: ...  # marked DISPATCHED
    def waiting(self) -> list[Request]: ...


class FifoLevel:
    """Requests in arrival order (a deque), at most ``max_size`` of them waiting."""

    def __init__(self, max_size: float = math.inf) -> None:
        self._items: deque[Request] = deque()
        self.live = 0
        self.max_size = max_size

    def push(self, req: Request) -> int:
        """Queue ``req``; the number now waiting. `QueueFullError` when ``max_size`` already wait."""
        if self.live >= self.max_size:
            raise QueueFullError(f"queue full: {self.live} requests waiting (max_queue_size={self.max_size})")
        items = self._items
        if len(items) > 2 * self.live + _SLACK:
            self._items = items = deque(r for r in items if r.state == QUEUED)
        items.append(req)
        self.live += 1
        return self.live

    def head(self) -> Request | None:
        items = self._items
        while items and items[0].state != QUEUED:
            items.popleft()
        return items[0] if items else None

    def oldest_arrival(self) -> float | None:
        head = self.head()
        return head.arrival if head is not None else None

    def discard(self, req: Request) -> None:
        """Forget a waiting request that left without being dispatched (a tombstone now)."""
        req.state = DROPPED
        self.live -= 1

    def pop(self) -> Request:
        """The head, removed (the caller marks it)."""
        req = self.head()
        assert req is not None
        self._items.popleft()
        self.live -= 1
        return req

    def take(self, n: int, now: float | None = None) -> list[Request]:
        """Up to ``n`` live requests, oldest first, marked dispatched (``now``: unused, as in
        `RequestQueue`)."""
        batch: list[Request] = []
        items = self._items
        while items and len(batch) < n:
            req = items.popleft()
            if req.state == QUEUED:
                req.state = DISPATCHED
                batch.append(req)
        self.live -= len(batch)
        return batch

    def aged(self, cutoff: float, k: int) -> list[Request]:
        """Up to ``k`` of the oldest live requests that arrived at or before ``cutoff``."""
        found = []
        for r in self._items:
            if r.arrival > cutoff or len(found) == k:
                break
            if r.state == QUEUED:
                found.append(r)
        return found

    def items(self) -> list[Request]:
        return [r for r in self._items if r.state == QUEUED]


class EdfLevel:
    """Earliest deadline first (a heap); requests without a deadline go last, in arrival order.

    A second, arrival-ordered view (`FifoLevel`, sharing the tombstones) answers "oldest" and
    "aged" without scanning the heap: each is O(1) amortised, not O(waiting), per batch.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Request]] = []
        self._by_arrival = FifoLevel()
        self.live = 0

    def push(self, req: Request) -> None:
        heap = self._heap
        if len(heap) > 2 * self.live + _SLACK:
            self._heap = heap = [e for e in heap if e[2].state == QUEUED]
            heapq.heapify(heap)
        key = req.deadline if req.deadline is not None else math.inf
        heapq.heappush(heap, (key, next(_seq), req))
        self._by_arrival.push(req)
        self.live += 1

    def head(self) -> Request | None:
        heap = self._heap
        while heap and heap[0][2].state != QUEUED:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def oldest_arrival(self) -> float | None:
        return self._by_arrival.oldest_arrival()

    def discard(self, req: Request) -> None:
        self._by_arrival.discard(req)
        self.live -= 1

    def pop(self) -> Request:
        req = self.head()
        assert req is not None
        heapq.heappop(self._heap)
        self._by_arrival.live -= 1  # its entry there is skipped once the caller marks it
        self.live -= 1
        return req

    def aged(self, cutoff: float, k: int) -> list[Request]:
        return self._by_arrival.aged(cutoff, k)

    def items(self) -> list[Request]:
        return [r for _, _, r in self._heap if r.state == QUEUED]


class FifoQueue(FifoLevel):
    """First in, first out, with a bound on the number waiting: `DynamicBatcher`'s queue (one
    level, so a push is one call: every request pays it)."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_size}")
        super().__init__(max_size)

    def __len__(self) -> int:
        return self.live

    def waiting(self) -> list[Request]:
        return self.items()


LEVEL_ORDERS = {"fifo": FifoLevel, "edf": EdfLevel}


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
        if order not in LEVEL_ORDERS:
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
        self.max_sizes = list(max_sizes)
        self.levels: list[FifoLevel | EdfLevel] = [LEVEL_ORDERS[order]() for _ in self.max_sizes]
        self._credit = [0.0] * levels

    def __len__(self) -> int:
        return sum(level.live for level in self.levels)

    def push(self, req: Request) -> None:
        level, bound = self.levels[req.priority], self.max_sizes[req.priority]
        if level.live >= bound:
            raise QueueFullError(f"queue full for priority {req.priority}: {level.live} requests waiting (max {bound})")
        level.push(req)
        return len(self)

    def discard(self, req: Request) -> None:
        self.levels[req.priority].discard(req)

    def oldest_arrival(self) -> float | None:
        return min((a for lv in self.levels if (a := lv.oldest_arrival()) is not None), default=None)

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
        nonempty = [i for i, lv in enumerate(self.levels) if lv.live]
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
            self.discard(req)  # leaves its level as a tombstone...
            req.state = DISPATCHED  # ...and goes into this batch
        return aged

    def waiting(self) -> list[Request]:
        return [r for lv in self.levels for r in lv.items()]

    def describe(self) -> dict[str, Any]:
        return {"waiting_per_level": [lv.live for lv in self.levels]}
