"""Batcher settings: changes apply from the next batch; bad values are refused."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import torch

from labkit.batching import (
    AdaptiveBatcher,
    DynamicBatcher,
    PriorityBatcher,
)

from .conftest import Recorder, run, vec


def test_max_batch_size_change_applies_to_the_next_batch():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=16, max_wait_ms=50, max_inflight=1) as b:
            await asyncio.gather(*(b.submit(vec(i)) for i in range(16)))
            b.max_batch_size = 2
            await asyncio.gather(*(b.submit(vec(i)) for i in range(8)))

    run(main())
    assert model.sizes == [16, 2, 2, 2, 2]


def test_max_wait_change_applies_to_a_waiting_batch():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=16, max_wait_ms=10_000) as b:
            task = asyncio.create_task(b.submit(vec(1)))
            await asyncio.sleep(0.05)
            assert not task.done()
            t0 = time.perf_counter()
            b.max_wait_ms = 20
            y = await task
            return time.perf_counter() - t0, y

    elapsed, y = run(main())
    assert elapsed < 0.5
    assert torch.equal(y, vec(2))


def test_invalid_settings_raise_value_error():
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_wait_ms=-1)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_inflight=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_queue_size=0)
    b = DynamicBatcher(Recorder(), max_batch_size=4, max_wait_ms=1)
    with pytest.raises(ValueError):
        b.max_batch_size = 0
    with pytest.raises(ValueError):
        b.max_wait_ms = -0.5
    assert (b.max_batch_size, b.max_wait_ms) == (4, 1.0)

    async def bad_timeout():
        async with b:
            with pytest.raises(ValueError):
                await b.submit(vec(1), timeout_ms=0)

    run(bad_timeout())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_settings_are_refused(bad):
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(Recorder(), max_wait_ms=bad)
    with pytest.raises(ValueError, match="target_p99_ms"):
        AdaptiveBatcher(Recorder(), target_p99_ms=bad)
    with pytest.raises(ValueError, match="max_age_ms"):
        PriorityBatcher(Recorder(), max_age_ms=bad)
    with pytest.raises(ValueError, match="timeouts_ms"):
        PriorityBatcher(Recorder(), levels=2, timeouts_ms=[None, bad])
    b = DynamicBatcher(Recorder(), max_batch_size=4, max_wait_ms=1)
    with pytest.raises(ValueError, match="max_wait_ms"):
        b.max_wait_ms = bad
    assert b.max_wait_ms == 1.0

    async def main():
        async with b:
            with pytest.raises(ValueError, match="timeout_ms"):
                await b.submit(vec(1), timeout_ms=bad)
            return await b.submit(vec(2), timeout_ms=1000), b.stats.submitted

    y, submitted = run(main())
    assert torch.equal(y, vec(4)) and submitted == 1
