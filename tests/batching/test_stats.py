"""BatcherStats: every accepted request counted exactly once."""

from __future__ import annotations

import asyncio

import pytest
import torch

from labkit.batching import (
    DynamicBatcher,
    QueueFullError,
)

from .conftest import Recorder, occupy, run, vec


def test_summary_counts_add_up(gate):

    def fn(x):
        if (x[:, 0] < 0).any():
            raise RuntimeError("negative input")
        return x * 2

    model = Recorder(fn=fn, gate=gate)

    async def main():
        b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_inflight=1, max_queue_size=6)
        await b.start()
        try:
            blocker = await occupy(b.submit(vec(100)), model)
            good = [asyncio.create_task(b.submit(vec(i))) for i in (1, 2)]
            bad = [asyncio.create_task(b.submit(vec(-i))) for i in (1, 2)]
            late = asyncio.create_task(b.submit(vec(3), timeout_ms=30))
            gone = asyncio.create_task(b.submit(vec(4)))
            await asyncio.sleep(0.005)
            with pytest.raises(QueueFullError):
                await b.submit(vec(5))
            with pytest.raises(ValueError):
                await b.submit(torch.zeros(3))
            gone.cancel()
            await asyncio.sleep(0.06)  # `late` expires
        finally:
            gate.set()
        await b.stop()
        out = await asyncio.gather(blocker, *good, *bad, late, gone, return_exceptions=True)
        return out, b.stats.summary(), b.stats

    out, s, stats = run(main())
    assert isinstance(out[3], RuntimeError) and isinstance(out[4], RuntimeError)
    assert isinstance(out[5], TimeoutError)
    assert isinstance(out[6], asyncio.CancelledError)
    assert (s["submitted"], s["completed"], s["failed"], s["timed_out"], s["cancelled"]) == (7, 3, 2, 1, 1)
    assert (s["rejected"], s["invalid"], s["shed"]) == (1, 1, 0)
    assert s["submitted"] == s["completed"] + s["failed"] + s["timed_out"] + s["cancelled"] + s["shed"]
    dispatched = sum(n * c for n, c in s["batch_sizes"].items())
    assert dispatched == s["completed"] + s["failed"]
    assert sum(s["batch_sizes"].values()) == s["batches"] == stats.batches
    assert s["mean_batch_size"] == pytest.approx(dispatched / s["batches"])
    assert len(stats.queue_wait_ms) == dispatched


def test_summary_counts_add_up_when_a_caller_gives_up_during_compute(gate):
    model = Recorder(gate=gate)

    async def main():
        b = DynamicBatcher(model, max_batch_size=2, max_wait_ms=1, max_inflight=1)
        await b.start()
        try:
            tasks = [asyncio.create_task(b.submit(vec(i))) for i in range(2)]
            assert await asyncio.to_thread(model.entered.wait, 5)  # both are computing
            tasks[0].cancel()
            await asyncio.sleep(0.01)
        finally:
            gate.set()
        await b.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        return b.stats.summary()

    s = run(main())
    assert s["submitted"] == s["completed"] + s["failed"] + s["timed_out"] + s["cancelled"] + s["shed"]
