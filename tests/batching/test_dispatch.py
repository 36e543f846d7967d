"""DynamicBatcher: when a batch leaves, how many run at once, the CPU fast path."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from labkit.batching import (
    DynamicBatcher,
    engine,
)
from labkit.batching.core import FEED_DEPTH
from labkit.batching.engine import FAST_BELOW_MS, HERE_BELOW_BYTES, BatchRunner

from .conftest import Recorder, TurnsSlow, run, vec, warm_fast_path


def test_full_batch_leaves_at_once():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=10_000) as b:
            t0 = time.perf_counter()
            out = await asyncio.gather(*(b.submit(vec(i)) for i in range(4)))
            return time.perf_counter() - t0, out

    elapsed, out = run(main())
    assert elapsed < 1.0
    assert model.sizes == [4]
    assert [o[0].item() for o in out] == [0.0, 2.0, 4.0, 6.0]


def test_lone_request_leaves_after_max_wait():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=100, max_wait_ms=50) as b:
            t0 = time.perf_counter()
            y = await b.submit(vec(3))
            return time.perf_counter() - t0, y

    elapsed, y = run(main())
    assert 0.045 <= elapsed < 1.0
    assert model.sizes == [1]
    assert torch.equal(y, vec(6))


def test_wait_timer_starts_at_the_oldest_request():
    model = Recorder()
    wait_s = 0.2

    async def main():
        async with DynamicBatcher(model, max_batch_size=100, max_wait_ms=wait_s * 1e3) as b:
            t0 = time.perf_counter()
            first = asyncio.create_task(b.submit(vec(1)))
            await asyncio.sleep(0.12)
            second = asyncio.create_task(b.submit(vec(2)))
            await asyncio.gather(first, second)
            return time.perf_counter() - t0

    elapsed = run(main())
    assert model.sizes == [2]  # one batch
    # due when the first has waited max_wait_ms (0.2 s), not the second (0.32 s)
    assert wait_s * 0.95 <= elapsed < wait_s + 0.09


def test_idle_batcher_uses_no_cpu():
    async def main():
        async with DynamicBatcher(Recorder(), max_batch_size=8, max_wait_ms=5) as b:
            await b.submit(vec(1))  # workers warmed up, then idle
            c0 = time.process_time()
            await asyncio.sleep(0.5)
            return time.process_time() - c0

    assert run(main()) < 0.01  # measured ~0.0003 s; polling every 0.5 ms costs ~0.025 s


def test_batcher_waiting_on_its_timer_uses_no_cpu():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=8, max_wait_ms=10_000) as b:
            task = asyncio.create_task(b.submit(vec(1)))
            await asyncio.sleep(0.01)
            c0 = time.process_time()
            await asyncio.sleep(0.5)
            used = time.process_time() - c0
            assert not task.done()
        return used, await task  # stop() drains it

    used, y = run(main())
    assert used < 0.01
    assert torch.equal(y, vec(2))


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    spans = sorted(spans)
    return any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))


def _second_batch_wait_ms(max_inflight: int) -> list[float]:
    model = Recorder(sleep_s=0.05)

    async def main():
        async with DynamicBatcher(model, max_batch_size=2, max_wait_ms=1, max_inflight=max_inflight) as b:
            await asyncio.gather(*(b.submit(vec(i)) for i in range(4)))
            return list(b.stats.queue_wait_ms)

    waits = run(main())
    assert model.sizes == [2, 2]
    if max_inflight == 1:
        assert not _overlaps(model.spans)
    return waits[2:]


def test_second_inflight_batch_is_dispatched_while_the_first_computes():
    # On a CPU the batches of a batcher compute on one worker thread (engine.BatchRunner.threads),
    # so "in flight" means taken from the queue and collated while the previous batch computes;
    # the overlap of two computing batches is checked on a GPU (tests/gpu/test_gpu_batching.py).
    assert max(_second_batch_wait_ms(max_inflight=2)) < 25


def test_one_inflight_batch_never_overlaps_and_the_next_waits_for_it():
    assert min(_second_batch_wait_ms(max_inflight=1)) >= 45


def _partial_batch_sizes(monkeypatch, threads: int) -> tuple[dict[int, int], list[int]]:
    """Batches of 4, up to 4 in flight, on ``threads`` worker threads: 1 and 2 arrive 10 ms
    apart, 3 and 4 wait past max_wait_ms while the model computes, then 5-8 arrive at once."""
    if threads > 1:  # as on a GPU: one thread per slot
        monkeypatch.setattr(BatchRunner, "threads", property(lambda self: len(self.slots)))
    model = Recorder(sleep_s=0.15)

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_inflight=4) as b:
            first = []
            for i in (1, 2):
                first.append(asyncio.create_task(b.submit(vec(i))))
                await asyncio.sleep(0.01)
            held = [asyncio.create_task(b.submit(vec(i))) for i in (3, 4)]
            await asyncio.sleep(0.03)  # long past max_wait_ms, yet they wait: the feed is full
            assert b.stats.batches == 0 and len(b._queue) == (3 if threads == 1 else 2)
            full = [asyncio.create_task(b.submit(vec(i))) for i in (5, 6, 7, 8)]
            await asyncio.gather(*first, *held, *full)
            return dict(b.stats.batch_sizes)

    sizes = run(main())
    return sizes, sorted(model.sizes)


def test_with_a_thread_per_slot_partial_batches_wait_behind_two_in_flight_but_full_ones_use_every_slot(monkeypatch):
    # Slots beyond FEED_DEPTH (2) take only full batches: a partial batch would just queue on a
    # busy device, so it keeps filling until a batch finishes. 1 and 2 leave alone (fewer than
    # two in flight then); 3-6 fill a batch at once; 7 and 8 wait for a slot.
    sizes, computed = _partial_batch_sizes(monkeypatch, threads=FEED_DEPTH)
    assert sizes == {1: 2, 4: 1, 2: 1}, sizes
    assert computed == [1, 1, 2, 4]


def test_on_one_cpu_thread_a_partial_batch_keeps_filling_behind_the_computing_one(monkeypatch):
    # One worker thread computes one batch at a time: 2 would start no sooner for leaving early,
    # so it waits in the queue and 3 and 4 join it (before: a batch of 1 frozen in the worker's
    # queue, then one of 2). Full batches still leave at once: 2-5 go while 1 computes.
    sizes, computed = _partial_batch_sizes(monkeypatch, threads=1)
    assert sizes == {1: 1, 4: 1, 3: 1}, sizes
    assert computed == [1, 3, 4]


def test_tiny_cpu_batches_take_the_fast_path_on_a_worker_and_slow_ones_end_it():
    # The fast path (engine.BatchRunner.proven_fast): once the median of the last 8 batches' CPU
    # time is tiny the next ones compute on one OpenMP thread; a few slow batches end it, a single
    # slow one does not. The model always runs on a worker thread, never on the caller's loop (it
    # used to run inline there, where a slow one froze the loop).
    threads: list[str] = []
    slow = threading.Event()

    def model(x):
        threads.append(threading.current_thread().name)
        if slow.is_set():  # slow in CPU time, as a model that turns heavy is (a sleep costs none)
            end = time.thread_time() + 2 * FAST_BELOW_MS / 1e3
            while time.thread_time() < end:
                pass
        return x * 2

    async def batch(b):
        return await asyncio.gather(*(b.submit(vec(j)) for j in range(4)))

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            warm = []
            for _ in range(40):  # a busy box may slow a batch past the bound: room for a few
                await batch(b)
                warm.append(b._runner.proven_fast)
            slow.set()
            outs = [await batch(b)]
            after_one = b._runner.proven_fast
            outs += [await batch(b) for _ in range(4)]
            return warm, after_one, b._runner.proven_fast, outs

    warm, after_one, after_five, outs = run(main())
    assert warm[:7] == [False] * 7 and warm[-1], warm  # on once 8 tiny batches are seen
    assert after_one and not after_five
    assert all(t.startswith("labkit-batcher") for t in threads), threads
    assert all(torch.equal(y, vec(2 * j)) for out in outs for j, y in enumerate(out))


def test_a_proven_fast_model_that_turns_slow_never_freezes_the_loop():
    model = TurnsSlow()
    slow = model.slow

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_inflight=1) as b:
            await warm_fast_path(b)
            assert b._runner.proven_fast
            slow.set()
            gaps, last = [], time.perf_counter()
            slow_batch = asyncio.gather(*(b.submit(vec(j)) for j in range(4)))
            while not slow_batch.done():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            return max(gaps), await slow_batch

    worst_gap, out = run(main())
    assert worst_gap < 0.3, worst_gap  # the loop kept running while the model slept 1.5 s
    assert all(torch.equal(y, vec(2 * j)) for j, y in enumerate(out))


def _where_batches_collate_and_split(monkeypatch, width: int) -> tuple[set[str], set[str], list]:
    """(threads that stacked inputs on a slot, threads that split outputs into rows, the outputs)
    for three batches of four inputs of ``width`` floats."""
    staged, split = set(), set()
    stage, rows = engine._Slot.stage, BatchRunner._rows

    def spy_stage(self, xs):
        staged.add(threading.current_thread().name)
        return stage(self, xs)

    def spy_rows(self, out, n):
        split.add(threading.current_thread().name)
        return rows(self, out, n)

    monkeypatch.setattr(engine._Slot, "stage", spy_stage)
    monkeypatch.setattr(BatchRunner, "_rows", spy_rows)

    async def main():
        async with DynamicBatcher(lambda x: x * 2, max_batch_size=4, max_wait_ms=1) as b:
            return [await asyncio.gather(*(b.submit(vec(4 * k + j, width)) for j in range(4))) for k in range(3)]

    return staged, split, run(main())


def test_a_small_cpu_batch_is_collated_and_split_on_the_loop_and_a_large_one_on_the_worker(monkeypatch):
    # engine.BatchRunner.collates_here: the loop stacks a small batch's inputs and splits its output
    # (beside its callers, on the loop's core); only the model runs on the worker. A batch of
    # HERE_BELOW_BYTES or more is stacked and split on the worker. Same results either way.
    small = HERE_BELOW_BYTES // (4 * 4 * 4)  # floats per input: a batch of 4 is a quarter of the bound
    large = HERE_BELOW_BYTES // (4 * 4)  # a batch of 4 is exactly the bound
    for width, where in ((small, "loop"), (large, "worker")):
        staged, split, outs = _where_batches_collate_and_split(monkeypatch, width)
        if where == "loop":
            assert staged == set() and split == {threading.current_thread().name}, (staged, split)
        else:
            assert staged == split and all(t.startswith("labkit-batcher") for t in split), (staged, split)
        for k, out in enumerate(outs):
            assert all(torch.equal(y, vec(2 * (4 * k + j), width)) for j, y in enumerate(out))
        monkeypatch.undo()


def test_a_collated_batch_that_loses_a_request_while_it_waits_computes_the_rest(gate):
    # A small batch is stacked on the loop at dispatch; if one of its requests times out while
    # the batch waits behind another on the CPU worker, the rest are collated again without it.
    model = Recorder(gate=gate)

    async def main():
        async with DynamicBatcher(model, max_batch_size=3, max_wait_ms=0, max_inflight=2) as b:
            blocker = asyncio.gather(*(b.submit(vec(100 + j)) for j in range(3)))
            assert await asyncio.to_thread(model.entered.wait, 5)
            waiting = [asyncio.ensure_future(b.submit(vec(j), timeout_ms=60 if j == 1 else None)) for j in range(3)]
            with pytest.raises(TimeoutError):
                await waiting[1]
            gate.set()
            await blocker
            return await asyncio.gather(waiting[0], waiting[2]), b.stats.summary()

    (first, third), s = run(main())
    assert torch.equal(first, vec(0)) and torch.equal(third, vec(4))
    assert 1.0 not in model.seen and model.sizes[-1] == 2
    assert s["timed_out"] == 1 and s["completed"] == 5
