"""DynamicBatcher: start, stop, `async with`, `with` and submit_sync from threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from labkit.batching import (
    BatcherError,
    BatcherStoppedError,
    DynamicBatcher,
)

from .conftest import Recorder, batcher_threads, run, vec


def test_stop_drains_every_accepted_request():
    model = Recorder(sleep_s=0.005)

    async def main():
        b = DynamicBatcher(model, max_batch_size=8, max_wait_ms=10_000)
        await b.start()
        tasks = [asyncio.create_task(b.submit(vec(i))) for i in range(50)]
        await asyncio.sleep(0)  # all queued, none awaited
        t0 = time.perf_counter()
        await b.stop()
        stopped_in = time.perf_counter() - t0
        with pytest.raises(BatcherStoppedError):
            await b.submit(vec(1))
        return stopped_in, await asyncio.gather(*tasks)

    stopped_in, out = run(main())
    assert stopped_in < 2.0  # the last partial batch does not wait out max_wait_ms
    assert [o[0].item() for o in out] == [2.0 * i for i in range(50)]
    assert sorted(model.seen) == [float(i) for i in range(50)]


def test_submit_before_start_and_double_start():
    async def main():
        b = DynamicBatcher(Recorder(), max_batch_size=4, max_wait_ms=1)
        with pytest.raises(BatcherStoppedError):
            await b.submit(vec(1))
        with pytest.raises(BatcherStoppedError):
            b.submit_sync(vec(1))
        await b.start()
        try:
            with pytest.raises(BatcherError):
                await b.start()
            y = await b.submit(vec(1))  # the failed second start broke nothing
        finally:
            await b.stop()
        with pytest.raises(BatcherError):
            await b.start()  # not restartable either
        return y

    assert torch.equal(run(main()), vec(2))


def _threads_submit(b: DynamicBatcher, n: int) -> dict[int, torch.Tensor]:
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            results[i] = b.submit_sync(vec(i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    return results


def test_submit_sync_from_threads_with_async_with_in_another_thread():
    model = Recorder()
    b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=5)
    ready, done = threading.Event(), threading.Event()

    async def serve():
        async with b:
            ready.set()
            await asyncio.to_thread(done.wait, 30)

    server = threading.Thread(target=lambda: asyncio.run(serve()))
    server.start()
    try:
        assert ready.wait(10)
        results = _threads_submit(b, 12)
    finally:
        done.set()
        server.join(20)
    assert not server.is_alive()
    assert sorted(results) == list(range(12))
    for i, y in results.items():
        assert torch.equal(y, vec(2 * i))


def test_submit_sync_from_threads_with_sync_with():
    model = Recorder()
    b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=5)
    with b:
        results = _threads_submit(b, 12)
        own = b.submit_sync(vec(50))  # the calling thread too
    assert torch.equal(own, vec(100))
    assert sorted(results) == list(range(12))
    for i, y in results.items():
        assert torch.equal(y, vec(2 * i))
    with pytest.raises(BatcherStoppedError):
        b.submit_sync(vec(1))


def test_submit_sync_inside_the_batcher_loop_raises():
    async def main():
        async with DynamicBatcher(Recorder(), max_batch_size=4, max_wait_ms=1) as b:
            with pytest.raises(RuntimeError, match="submit_sync"):
                b.submit_sync(vec(1))
            return await b.submit(vec(2)), b.stats.submitted

    y, submitted = run(main())
    assert torch.equal(y, vec(4))
    assert submitted == 1


def test_settings_can_change_after_stop_without_touching_the_closed_loop():
    async def main():
        async with DynamicBatcher(lambda x: x, max_batch_size=4) as b:
            await b.submit(vec(1))
        return b

    b = run(main())  # its loop is closed now
    b.max_batch_size = 8
    b.max_wait_ms = 2
    assert (b.max_batch_size, b.max_wait_ms) == (8, 2.0)


def test_submit_sync_after_the_private_loop_closed_is_refused_not_hung():
    with DynamicBatcher(lambda x: x, max_batch_size=4) as b:
        assert torch.equal(b.submit_sync(vec(3)), vec(3))
    with pytest.raises(BatcherStoppedError):
        b.submit_sync(vec(3))


def test_nested_with_is_refused_and_the_outer_block_keeps_serving():
    before = batcher_threads()
    b = DynamicBatcher(lambda x: x * 2, max_batch_size=4, max_wait_ms=1)
    with b:
        with pytest.raises(BatcherError, match="already started"):
            with b:
                pass
        y = b.submit_sync(vec(1))
    assert torch.equal(y, vec(2))
    assert not {t for t in batcher_threads() - before if t.name == "labkit-batcher-loop"}  # joined by exit
    deadline = time.monotonic() + 5  # workers are released without waiting: give them a moment
    while batcher_threads() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher_threads() - before  # no loop or worker thread left behind


def test_with_on_a_batcher_started_with_async_with_is_refused():
    async def main():
        async with DynamicBatcher(lambda x: x * 2, max_batch_size=4, max_wait_ms=1) as b:
            with pytest.raises(BatcherError, match="already started"):
                await asyncio.to_thread(b.__enter__)
            return await b.submit(vec(3))

    assert torch.equal(run(main()), vec(6))
