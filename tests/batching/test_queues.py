"""FifoQueue and PriorityQueues on their own: exact selection order, bounds, tombstones."""

from __future__ import annotations

import asyncio

import pytest
import torch

from labkit.batching import QueueFullError
from labkit.batching.queues import DISPATCHED, DROPPED, QUEUED, FifoQueue, PriorityQueues, Request


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def make(loop):
    """make(name, arrival, priority=0, deadline=None) -> a Request whose x is tensor([name])."""

    def make(name: int, arrival: float = 0.0, priority: int = 0, deadline: float | None = None) -> Request:
        return Request(torch.tensor([float(name)]), loop.create_future(), arrival, deadline=deadline, priority=priority)

    return make


def names(reqs: list[Request]) -> list[int]:
    return [int(r.x.item()) for r in reqs]


# -- FifoQueue ----------------------------------------------------------------------------------


def test_fifo_takes_oldest_first_and_marks_dispatched(make):
    q = FifoQueue(max_size=10)
    reqs = [make(i, arrival=i) for i in range(5)]
    for r in reqs:
        q.push(r)
    assert len(q) == 5
    batch = q.take(3)
    assert names(batch) == [0, 1, 2]
    assert all(r.state == DISPATCHED for r in batch)
    assert all(r.state == QUEUED for r in reqs[3:])
    assert len(q) == 2
    assert names(q.take(10)) == [3, 4]
    assert len(q) == 0 and q.take(4) == [] and q.oldest_arrival() is None


def test_fifo_bound_counts_live_requests_only(make):
    q = FifoQueue(max_size=2)
    a, b, c = make(0), make(1), make(2)
    q.push(a)
    q.push(b)
    with pytest.raises(QueueFullError, match="max_queue_size=2"):
        q.push(c)
    q.discard(a)  # a timed out or was cancelled: its place is free again
    assert a.state == DROPPED and len(q) == 1
    q.push(c)
    assert len(q) == 2
    with pytest.raises(QueueFullError):
        q.push(make(3))


def test_fifo_skips_tombstones(make):
    q = FifoQueue(max_size=10)
    reqs = [make(i, arrival=10.0 + i) for i in range(5)]
    for r in reqs:
        q.push(r)
    q.discard(reqs[0])
    q.discard(reqs[2])
    assert len(q) == 3
    assert q.oldest_arrival() == 11.0
    assert names(q.waiting()) == [1, 3, 4]
    assert names(q.take(2)) == [1, 3]
    assert len(q) == 1
    assert names(q.take(5)) == [4]
    assert len(q) == 0


# -- PriorityQueues -----------------------------------------------------------------------------


def _pq(levels=3, **kw) -> PriorityQueues:
    kw.setdefault("max_sizes", [100] * levels)
    return PriorityQueues(levels, **kw)


def test_strict_takes_by_level_then_arrival(make):
    q = _pq(policy="strict")
    spec = [(0, 2), (1, 1), (2, 0), (3, 2), (4, 0), (5, 1)]  # (name, priority)
    for n, p in spec:
        q.push(make(n, arrival=n, priority=p))
    assert len(q) == 6
    assert names(q.take(4)) == [2, 4, 1, 5]
    assert len(q) == 2
    assert names(q.take(4)) == [0, 3]


def test_work_conserving_fills_from_the_only_level_with_requests(make):
    q = _pq(policy="strict")
    for n in range(6):
        q.push(make(n, arrival=n, priority=2))
    assert names(q.take(4)) == [0, 1, 2, 3]
    wq = _pq(policy="weighted")
    for n in range(6):
        wq.push(make(n, arrival=n, priority=1))
    assert names(wq.take(4)) == [0, 1, 2, 3]


def test_weighted_exact_smooth_round_robin(make):
    q = _pq(levels=2, policy="weighted", weights=(3, 1))
    for n in range(20):
        q.push(make(n, arrival=n, priority=0))
        q.push(make(100 + n, arrival=n, priority=1))
    levels = [r.priority for _ in range(8) for r in q.take(1)]
    assert levels == [0, 0, 1, 0, 0, 0, 1, 0]
    batch = q.take(8)  # shares hold within a batch, and continue across batches
    assert sum(r.priority == 0 for r in batch) == 6
    assert names([r for r in batch if r.priority == 1]) == [102, 103]  # FIFO within a level


def test_weighted_default_weights_halve_per_level(make):
    q = _pq(levels=3, policy="weighted")
    assert q.weights == [4.0, 2.0, 1.0]
    for n in range(30):
        for p in range(3):
            q.push(make(100 * p + n, arrival=n, priority=p))
    batch = q.take(14)
    assert [sum(r.priority == p for r in batch) for p in range(3)] == [8, 4, 2]


def test_aging_takes_old_requests_first_oldest_first(make):
    q = _pq(policy="strict", max_age_s=0.05, aged_share=0.5)
    q.push(make(1, arrival=0.00, priority=2))
    q.push(make(2, arrival=0.02, priority=1))
    q.push(make(3, arrival=0.01, priority=2))
    for n in range(10, 16):
        q.push(make(n, arrival=0.06, priority=0))
    # at t=0.065, requests 1 (65 ms) and 3 (55 ms) have waited max_age; 2 (45 ms) has not
    batch = q.take(4, now=0.065)
    assert names(batch) == [1, 3, 10, 11]
    assert len(q) == 5
    assert names(q.take(10, now=0.065)) == [12, 13, 14, 15, 2]
    assert len(q) == 0


def test_aging_never_exceeds_the_batch_and_needs_a_clock(make):
    q = _pq(policy="strict", max_age_s=0.01, aged_share=1.0)
    for n in range(5):
        q.push(make(n, arrival=n * 0.001, priority=2))
    q.push(make(9, arrival=0.0015, priority=0))
    assert names(q.take(2, now=1.0)) == [0, 1]  # all aged: the two oldest, whatever their level
    assert len(q) == 4
    assert names(q.take(2)) == [9, 2]  # no clock: plain strict order
    assert len(q) == 2


def test_aged_requests_take_at_most_their_share_of_a_batch(make):
    q = _pq(policy="strict", max_age_s=0.01)  # default aged_share: a quarter of each batch
    for n in range(10):
        q.push(make(n, arrival=0.0, priority=2))  # all aged by t=1
    for n in range(100, 110):
        q.push(make(n, arrival=0.999, priority=0))  # fresh
    assert names(q.take(8, now=1.0)) == [0, 1, 100, 101, 102, 103, 104, 105]
    assert names(q.take(1, now=1.0)) == [2]  # at least one slot, however small the batch


def test_aged_share_must_be_a_fraction(make):
    for share in (0, -0.5, 1.5):
        with pytest.raises(ValueError):
            _pq(max_age_s=0.01, aged_share=share)


def test_edf_orders_by_deadline_with_no_deadline_last(make):
    q = _pq(levels=1, order="edf")
    q.push(make(0, arrival=0.0, deadline=0.9))
    q.push(make(1, arrival=0.1, deadline=0.5))
    q.push(make(2, arrival=0.2))
    q.push(make(3, arrival=0.3, deadline=0.7))
    q.push(make(4, arrival=0.4))
    q.push(make(5, arrival=0.5, deadline=0.6))
    assert q.oldest_arrival() == 0.0  # the oldest, not the heap head
    assert names(q.take(6)) == [1, 5, 3, 0, 2, 4]


def test_edf_skips_tombstones_and_keeps_oldest_arrival_right(make):
    q = _pq(levels=2, order="edf")
    a = make(0, arrival=0.0, deadline=0.3, priority=1)
    b = make(1, arrival=0.1, deadline=0.2, priority=1)
    c = make(2, arrival=0.2, deadline=0.9, priority=0)
    for r in (a, b, c):
        q.push(r)
    q.discard(a)
    assert len(q) == 2
    assert q.oldest_arrival() == 0.1
    assert names(q.take(3)) == [2, 1]


def test_per_level_bounds(make):
    q = PriorityQueues(3, max_sizes=[1, 2, 3])
    q.push(make(0, priority=0))
    with pytest.raises(QueueFullError, match="priority 0"):
        q.push(make(1, priority=0))
    q.push(make(2, priority=1))
    q.push(make(3, priority=1))
    with pytest.raises(QueueFullError, match="priority 1"):
        q.push(make(4, priority=1))
    for n in range(3):
        q.push(make(10 + n, priority=2))
    assert q.describe() == {"waiting_per_level": [1, 2, 3]}
    assert names(q.take(1)) == [0]
    q.push(make(5, priority=0))  # room again at level 0
    assert len(q) == 6


def test_discard_in_the_middle_of_a_level(make):
    q = _pq(policy="strict")
    reqs = [make(n, arrival=n, priority=1) for n in range(4)]
    for r in reqs:
        q.push(r)
    q.discard(reqs[1])
    assert len(q) == 3
    assert names(q.waiting()) == [0, 2, 3]
    assert names(q.take(10)) == [0, 2, 3]
    assert q.describe() == {"waiting_per_level": [0, 0, 0]}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        PriorityQueues(2, policy="random", max_sizes=[1, 1])
    with pytest.raises(ValueError):
        PriorityQueues(2, order="lifo", max_sizes=[1, 1])
    with pytest.raises(ValueError):
        PriorityQueues(2, policy="weighted", weights=[1.0], max_sizes=[1, 1])
    with pytest.raises(ValueError):
        PriorityQueues(2, policy="weighted", weights=[1.0, -1.0], max_sizes=[1, 1])
