"""DynamicBatcher: timeouts and cancellation, on time wherever the request waits."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from labkit.batching import (
    DynamicBatcher,
)

from .conftest import Recorder, TurnsSlow, occupy, run, vec, warm_fast_path


def test_timeout_while_queued_fires_at_the_deadline_and_is_never_computed(gate):
    model = Recorder(gate=gate)

    async def main():
        b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=0, max_inflight=1)
        await b.start()
        try:
            blocker = await occupy(b.submit(vec(100)), model)
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await b.submit(vec(7), timeout_ms=100)
            elapsed = time.perf_counter() - t0
            model_still_blocked = not gate.is_set()
        finally:
            gate.set()
        await blocker
        after = await b.submit(vec(8), timeout_ms=1000)
        await b.stop()
        return elapsed, model_still_blocked, b.stats.timed_out, after

    elapsed, blocked, timed_out, after = run(main())
    assert blocked
    assert 0.095 <= elapsed < 0.4
    assert timed_out == 1
    assert torch.equal(after, vec(16))
    assert 7.0 not in model.seen


def test_cancelled_while_queued_is_never_computed(gate):
    model = Recorder(gate=gate)

    async def main():
        b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=0, max_inflight=1)
        await b.start()
        try:
            blocker = await occupy(b.submit(vec(100)), model)
            victim = asyncio.create_task(b.submit(vec(7)))
            await asyncio.sleep(0.02)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            cancelled = b.stats.cancelled
        finally:
            gate.set()
        await blocker
        after = await b.submit(vec(8))
        await b.stop()
        return cancelled, after

    cancelled, after = run(main())
    assert cancelled == 1
    assert torch.equal(after, vec(16))
    assert 7.0 not in model.seen


def test_cancel_racing_with_dispatch_is_not_computed():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=2, max_wait_ms=10_000) as b:
            victim = asyncio.create_task(b.submit(vec(7)))
            await asyncio.sleep(0.02)  # queued; the scheduler sleeps on its 10 s timer
            other = asyncio.create_task(b.submit(vec(8)))
            await asyncio.sleep(0)  # `other` fills the batch and wakes the scheduler...
            victim.cancel()  # ...and the victim's caller gives up in the same loop turn
            with pytest.raises(asyncio.CancelledError):
                await victim
            y = await other
            return y, b.stats.cancelled

    y, cancelled = run(main())
    assert torch.equal(y, vec(16))
    assert 7.0 not in model.seen
    assert cancelled == 1


def test_cancel_racing_with_expired_deadline_keeps_the_batcher_alive():
    model = Recorder()

    async def main():
        b = DynamicBatcher(model, max_batch_size=2, max_wait_ms=10_000)
        await b.start()
        try:
            victim = asyncio.create_task(b.submit(vec(7), timeout_ms=30))
            await asyncio.sleep(0.01)
            other = asyncio.create_task(b.submit(vec(8)))
            await asyncio.sleep(0)  # `other` fills the batch and wakes the scheduler
            victim.cancel()
            time.sleep(0.04)  # the victim's deadline passes before its timer can run
            with pytest.raises(asyncio.CancelledError):
                await victim
            y = await asyncio.wait_for(other, 2)
            b.max_wait_ms = 1
            z = await asyncio.wait_for(b.submit(vec(9)), 2)
            return y, z
        finally:
            await b.stop()
            if b._task.done() and not b._task.cancelled():
                b._task.exception()  # retrieved, so asyncio does not log it at exit

    y, z = run(main())
    assert torch.equal(y, vec(16))
    assert torch.equal(z, vec(18))


def test_timeout_holds_while_its_batch_waits_behind_another_on_the_cpu_worker(gate):
    # One CPU worker, two in flight: the second batch is dispatched but waits in the worker's
    # queue behind the first. Its request's deadline still holds there.
    model = Recorder(gate=gate)

    async def main():
        async with DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, max_inflight=2) as b:
            blocker = await occupy(b.submit(vec(100)), model)
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await b.submit(vec(7), timeout_ms=100)
            elapsed = time.perf_counter() - t0
            dispatched = b.stats.timed_out == 1 and len(b._queue) == 0
            gate.set()
            await blocker
            return elapsed, dispatched, await b.submit(vec(8), timeout_ms=1000), b.stats.summary()

    elapsed, dispatched, after, s = run(main())
    assert dispatched
    assert 0.095 <= elapsed < 0.5
    assert 7.0 not in model.seen
    assert torch.equal(after, vec(16))
    assert s["submitted"] == s["completed"] + s["timed_out"] == 3
    assert s["batch_sizes"] == {1: 2}  # the expired batch is not counted as computed


def test_timeout_fires_on_time_when_a_proven_fast_model_turns_slow():
    model = TurnsSlow()
    slow = model.slow

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_inflight=1) as b:
            await warm_fast_path(b)
            slow.set()
            slow_batch = asyncio.gather(*(b.submit(vec(j)) for j in range(4)))
            await asyncio.sleep(0.02)  # dispatched, computing
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await b.submit(vec(9), timeout_ms=100)
            elapsed = time.perf_counter() - t0
            slow.clear()
            return elapsed, await slow_batch

    elapsed, out = run(main())
    assert 0.095 <= elapsed < 0.5, elapsed
    assert all(torch.equal(y, vec(2 * j)) for j, y in enumerate(out))
