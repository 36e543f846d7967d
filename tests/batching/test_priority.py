"""PriorityBatcher: strict and weighted shares, work conservation, aging, EDF, per-level limits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from labkit.batching import PriorityBatcher, QueueFullError

from .conftest import GatedModel, occupy, run


def item(level: int, i: int) -> torch.Tensor:
    """An input that names its level and its index: [level, i]."""
    return torch.tensor([float(level), float(i)])


class BatchLog(GatedModel):
    """Returns its input unchanged; records every batch as a list of (level, index) rows."""

    def __init__(self, gate: threading.Event | None = None, sleep_s: float = 0.0):
        super().__init__(gate, sleep_s)
        self.batches: list[list[tuple[int, int]]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.enter()
        with self.lock:
            self.batches.append([(int(a), int(b)) for a, b in x.tolist()])
        return x.clone()

    @property
    def rows(self) -> list[tuple[int, int]]:
        return [r for b in self.batches for r in b]


async def _blocked(b: PriorityBatcher, model: BatchLog, level: int = 0) -> asyncio.Task:
    """Occupy the only in-flight slot with one request; the model waits for ``model.gate``."""
    return await occupy(b.submit(item(level, 999), priority=level), model)


def test_strict_serves_level_0_then_1_then_2_in_each_batch(gate):
    model = BatchLog(gate)
    order = [2, 1, 0, 2, 0, 1, 1, 2, 0]

    async def main():
        b = PriorityBatcher(model, levels=3, policy="strict", max_age_ms=None, max_batch_size=9,
                            max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model)
            tasks = [asyncio.create_task(b.submit(item(lv, i), priority=lv)) for i, lv in enumerate(order)]
            await asyncio.sleep(0.01)
        finally:
            gate.set()
        out = await asyncio.gather(blocker, *tasks)
        await b.stop()
        return out

    out = run(main())
    for (i, lv), o in zip(enumerate(order), out[1:], strict=True):
        assert o.tolist() == [float(lv), float(i)]
    batch = model.batches[1]
    assert [lv for lv, _ in batch] == sorted(order)
    # FIFO within a level
    for level in range(3):
        assert [i for lv, i in batch if lv == level] == [i for i, lv in enumerate(order) if lv == level]


def test_work_conserving_fills_the_batch_from_a_lone_low_level(gate):
    model = BatchLog(gate)

    async def main():
        b = PriorityBatcher(model, levels=3, max_age_ms=None, max_batch_size=4, max_wait_ms=1,
                            max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model, level=2)
            b.max_wait_ms = 10_000  # from here, only a full batch leaves early
            tasks = [asyncio.create_task(b.submit(item(2, i), priority=2)) for i in range(8)]
            await asyncio.sleep(0.01)
        finally:
            gate.set()
        t0 = time.perf_counter()
        await asyncio.gather(blocker, *tasks)
        elapsed = time.perf_counter() - t0
        await b.stop()
        return elapsed

    assert run(main()) < 1.0
    assert [len(batch) for batch in model.batches] == [1, 4, 4]


def test_weighted_shares_follow_the_weights(gate):
    model = BatchLog(gate)
    per_level = 200

    async def main():
        b = PriorityBatcher(model, levels=2, policy="weighted", weights=(3, 1), max_age_ms=None,
                            max_batch_size=4, max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model, level=1)
            tasks = [asyncio.create_task(b.submit(item(lv, i), priority=lv))
                     for i in range(per_level) for lv in (1, 0)]
            await asyncio.sleep(0.02)
        finally:
            gate.set()
        await asyncio.gather(blocker, *tasks)
        await b.stop()

    run(main())
    # while both levels are backed up (level 0 runs out after ~per_level/3 batches)
    busy = model.batches[1:41]
    level0 = sum(lv == 0 for batch in busy for lv, _ in batch)
    level1 = sum(lv == 1 for batch in busy for lv, _ in batch)
    assert level0 + level1 == 160
    assert level0 / level1 == pytest.approx(3.0, rel=0.15)
    assert all(len(batch) == 4 for batch in busy)


async def _flood_with_one_low(max_age_ms: float | None, flood_s: float):
    """Level 0 floods the batcher for ``flood_s``; one level-2 request arrives early in the flood.

    Returns whether the level-2 request completed during the flood, and its result.
    """
    model = BatchLog(sleep_s=0.004)
    async with PriorityBatcher(model, levels=3, policy="strict", max_age_ms=max_age_ms,
                               max_batch_size=4, max_wait_ms=1, max_inflight=1) as b:
        flood: list[asyncio.Task] = []
        stop_at = time.perf_counter() + flood_s
        low = None
        i = 0
        while time.perf_counter() < stop_at:
            flood += [asyncio.create_task(b.submit(item(0, i + k), priority=0)) for k in range(12)]
            i += 12
            if low is None and i >= 40:
                low = asyncio.create_task(b.submit(item(2, 0), priority=2))
            await asyncio.sleep(0.005)
        done_during_flood = low.done()
        result = await low
        await asyncio.gather(*flood)
    return done_during_flood, result


def test_aging_lets_a_low_priority_request_through_a_flood():
    done_during_flood, result = run(_flood_with_one_low(max_age_ms=50, flood_s=0.5))
    assert done_during_flood
    assert result.tolist() == [2.0, 0.0]


def test_without_aging_a_low_priority_request_starves_during_a_flood():
    done_during_flood, result = run(_flood_with_one_low(max_age_ms=None, flood_s=0.5))
    assert not done_during_flood
    assert result.tolist() == [2.0, 0.0]  # served once the flood is over


def test_edf_order_serves_the_earliest_deadline_first(gate):
    model = BatchLog(gate)
    timeouts = [900, 500, None, 700, 600]

    async def main():
        b = PriorityBatcher(model, levels=2, order="edf", max_age_ms=None, max_batch_size=8,
                            max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model, level=1)
            tasks = [asyncio.create_task(b.submit(item(0, i), priority=0, timeout_ms=t))
                     for i, t in enumerate(timeouts)]
            await asyncio.sleep(0.01)
        finally:
            gate.set()
        await asyncio.gather(blocker, *tasks)
        await b.stop()

    run(main())
    assert [i for _, i in model.batches[1]] == [1, 4, 3, 0, 2]  # 500, 600, 700, 900, none


def test_per_level_queue_limit_refuses_only_that_level(gate):
    model = BatchLog(gate)

    async def main():
        b = PriorityBatcher(model, levels=3, max_queue_size=[1, 3, 3], max_age_ms=None,
                            max_batch_size=16, max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model, level=2)
            first0 = asyncio.create_task(b.submit(item(0, 0), priority=0))
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError, match="priority 0"):
                await b.submit(item(0, 1), priority=0)
            level1 = [asyncio.create_task(b.submit(item(1, i), priority=1)) for i in range(3)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError, match="priority 1"):
                await b.submit(item(1, 9), priority=1)
            rejected = b.stats.rejected
        finally:
            gate.set()
        out = await asyncio.gather(blocker, first0, *level1)
        await b.stop()
        return rejected, out

    rejected, out = run(main())
    assert rejected == 2
    assert [o.tolist() for o in out[1:]] == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    assert (0, 1) not in model.rows and (1, 9) not in model.rows


def test_per_level_default_timeouts_apply(gate):
    model = BatchLog(gate)

    async def main():
        b = PriorityBatcher(model, levels=3, timeouts_ms=[None, None, 50], max_age_ms=None,
                            max_batch_size=8, max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            blocker = await _blocked(b, model, level=0)
            patient = asyncio.create_task(b.submit(item(1, 0), priority=1))
            overridden = asyncio.create_task(b.submit(item(2, 1), priority=2, timeout_ms=5_000))
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await b.submit(item(2, 0), priority=2)
            elapsed = time.perf_counter() - t0
            assert not patient.done() and not overridden.done()
        finally:
            gate.set()
        out = await asyncio.gather(blocker, patient, overridden)
        await b.stop()
        return elapsed, out, b.stats.timed_out

    elapsed, out, timed_out = run(main())
    assert 0.045 <= elapsed < 0.4
    assert timed_out == 1
    assert [o.tolist() for o in out[1:]] == [[1.0, 0.0], [2.0, 1.0]]
    assert (2, 0) not in model.rows


def test_priority_out_of_range_or_missing_is_refused():
    model = BatchLog()

    async def main():
        async with PriorityBatcher(model, levels=3, max_batch_size=4, max_wait_ms=1) as b:
            for bad in (-1, 3, 1.0, None, "0"):
                with pytest.raises(ValueError, match="priority"):
                    await b.submit(item(0, 0), priority=bad)
            with pytest.raises(TypeError):
                await b.submit(item(0, 0))  # priority is required
            with pytest.raises(ValueError):
                b.submit_sync(item(0, 0), priority=7)
            ok = await b.submit(item(2, 5), priority=2)
            return ok, b.stats.submitted

    ok, submitted = run(main())
    assert ok.tolist() == [2.0, 5.0]
    assert submitted == 1
    assert model.rows == [(2, 5)]


def test_invalid_constructor_arguments_raise_value_error():
    for kwargs in (
        dict(levels=0),
        dict(levels=2, max_queue_size=[4, 4, 4]),
        dict(levels=2, timeouts_ms=[None]),
        dict(levels=2, max_age_ms=0),
        dict(levels=2, policy="lottery"),
        dict(levels=2, order="lifo"),
        dict(levels=2, policy="weighted", weights=(1, 0)),
        dict(levels=2, policy="weighted", weights=(1, 2, 3)),
    ):
        with pytest.raises(ValueError):
            PriorityBatcher(lambda x: x, **kwargs)


def test_submit_sync_with_priority_from_a_thread():
    model = BatchLog()
    with PriorityBatcher(model, levels=2, max_batch_size=4, max_wait_ms=1) as b:
        out: list[torch.Tensor] = []
        t = threading.Thread(target=lambda: out.append(b.submit_sync(item(1, 3), priority=1)))
        t.start()
        t.join(10)
    assert [o.tolist() for o in out] == [[1.0, 3.0]]
