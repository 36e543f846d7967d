"""DynamicBatcher: dispatch rule, results, validation, backpressure, lifecycle, settings, stats."""

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
    QueueFullError,
)
from labkit.batching.engine import INLINE_BELOW_MS
from labkit.models import InputSpec, build_model, example_batch

from .helpers import GatedModel, occupy, run, vec

pytestmark = pytest.mark.timeout(60)



class Recorder(GatedModel):
    """A model that doubles its input and records, per call, the batch it saw (thread-safe)."""

    def __init__(self, fn=None, sleep_s: float = 0.0, gate: threading.Event | None = None):
        super().__init__(gate, sleep_s)
        self.sizes: list[int] = []
        self.seen: list[float] = []  # first element of every row it computed
        self.spans: list[tuple[float, float]] = []
        self.fn = fn or (lambda x: x * 2)

    def __call__(self, x: torch.Tensor):
        t0 = time.perf_counter()
        self.enter()
        with self.lock:
            self.sizes.append(x.shape[0])
            self.seen.extend(x[:, 0].tolist())
        out = self.fn(x)
        with self.lock:
            self.spans.append((t0, time.perf_counter()))
        return out



# -- dispatch rule ------------------------------------------------------------------------------


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


# -- results ------------------------------------------------------------------------------------


def test_each_caller_gets_its_own_row_as_a_cpu_tensor():
    model = Recorder(fn=lambda x: x[:, :1] * 10)

    async def main():
        async with DynamicBatcher(model, max_batch_size=8, max_wait_ms=20) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(20)))

    out = run(main())
    for i, y in enumerate(out):
        assert isinstance(y, torch.Tensor)
        assert y.device.type == "cpu"
        assert y.shape == (1,)
        assert y.item() == 10.0 * i
    assert sum(model.sizes) == 20


def test_tuple_and_dict_outputs_are_split_per_caller():
    def tuple_model(x):
        return x * 2, x.sum(dim=1)

    def dict_model(x):
        return {"double": x * 2, "sum": x.sum(dim=1)}

    async def main():
        async with DynamicBatcher(tuple_model, max_batch_size=4, max_wait_ms=20) as bt, \
                DynamicBatcher(dict_model, max_batch_size=4, max_wait_ms=20) as bd:
            tuples = await asyncio.gather(*(bt.submit(vec(i)) for i in range(6)))
            dicts = await asyncio.gather(*(bd.submit(vec(i)) for i in range(6)))
            return tuples, dicts

    tuples, dicts = run(main())
    for i, t in enumerate(tuples):
        assert isinstance(t, tuple) and len(t) == 2
        assert torch.equal(t[0], vec(2 * i))
        assert t[1].shape == () and t[1].item() == 4.0 * i
    for i, d in enumerate(dicts):
        assert isinstance(d, dict) and set(d) == {"double", "sum"}
        assert torch.equal(d["double"], vec(2 * i))
        assert d["sum"].item() == 4.0 * i


def test_wrong_batch_dimension_gives_every_request_a_value_error():
    def doubled_rows(x):
        return torch.cat([x, x])  # 2n rows for n inputs, whatever n is

    async def main():
        async with DynamicBatcher(doubled_rows, max_batch_size=4, max_wait_ms=20) as b:
            out = await asyncio.gather(*(b.submit(vec(i)) for i in range(4)), return_exceptions=True)
            return out, b.stats.failed

    out, failed = run(main())
    assert all(isinstance(o, ValueError) for o in out), out
    assert failed == 4


# -- validation at submit -----------------------------------------------------------------------


def test_wrong_shape_or_dtype_is_refused_naming_the_signature():
    model = Recorder()

    async def main():
        spec = InputSpec((4,), torch.float32)
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, input_spec=spec) as b:
            with pytest.raises(ValueError) as shape_err:
                await b.submit(torch.zeros(5))
            with pytest.raises(ValueError) as dtype_err:
                await b.submit(torch.zeros(4, dtype=torch.float64))
            with pytest.raises(TypeError):
                await b.submit([0.0, 1.0, 2.0, 3.0])
            ok = await b.submit(vec(1))
            return shape_err.value, dtype_err.value, ok, b.stats.invalid, b.stats.submitted

    shape_err, dtype_err, ok, invalid, submitted = run(main())
    for err in (shape_err, dtype_err):
        assert "(4,)" in str(err) and "torch.float32" in str(err)
    assert "(5,)" in str(shape_err)
    assert "torch.float64" in str(dtype_err)
    assert torch.equal(ok, vec(2))
    assert invalid == 3
    assert submitted == 1
    assert model.seen == [1.0]  # the invalid ones were never computed


def test_first_request_fixes_the_signature():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            assert b.input_spec is None
            first = await b.submit(torch.ones(3, dtype=torch.float64))
            with pytest.raises(ValueError, match=r"\(3,\).*torch.float64"):
                await b.submit(torch.ones(4, dtype=torch.float64))
            with pytest.raises(ValueError):
                await b.submit(torch.ones(3, dtype=torch.float32))
            return first, b.input_spec, b.stats.invalid

    first, spec, invalid = run(main())
    assert torch.equal(first, torch.full((3,), 2.0, dtype=torch.float64))
    assert tuple(spec.shape) == (3,) and spec.dtype == torch.float64
    assert invalid == 2


def test_labkit_model_input_spec_is_used():
    model = build_model("mlp", "small")
    in_features = model.input_spec.shape[0]
    x = torch.randn(in_features, generator=torch.Generator().manual_seed(0))

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            assert tuple(b.input_spec.shape) == (in_features,)
            with pytest.raises(ValueError, match=rf"\({in_features},\)"):
                await b.submit(torch.randn(in_features + 1))  # also the first request
            return await b.submit(x)

    y = run(main())
    with torch.no_grad():
        expected = model(x[None])[0]
    torch.testing.assert_close(y, expected)


def test_reduced_precision_labkit_model_is_served_with_its_own_inputs():
    model = build_model("mlp", "small").to(torch.bfloat16)
    x = example_batch(model, 1)[0]  # labkit's own input for this model: bfloat16

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            return await b.submit(x)

    y = run(main())
    with torch.no_grad():
        torch.testing.assert_close(y, model(x[None])[0])


# -- backpressure -------------------------------------------------------------------------------


def test_queue_full_is_immediate_and_accepted_requests_complete():
    gate = threading.Event()
    model = Recorder(gate=gate)
    capacity = 3

    async def main():
        b = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, max_inflight=1, max_queue_size=capacity)
        await b.start()
        try:
            blocker = await occupy(b.submit(vec(100)), model)  # dispatched: out of the queue
            queued = [asyncio.create_task(b.submit(vec(i))) for i in range(capacity)]
            await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            with pytest.raises(QueueFullError):
                await b.submit(vec(99))
            refused_in = time.perf_counter() - t0
            rejected = b.stats.rejected
        finally:
            gate.set()
        out = await asyncio.gather(blocker, *queued)
        await b.stop()
        return refused_in, rejected, out

    refused_in, rejected, out = run(main())
    assert refused_in < 0.1
    assert rejected == 1
    assert [o[0].item() for o in out] == [200.0, 0.0, 2.0, 4.0]
    assert 99.0 not in model.seen


# -- timeouts and cancellation ------------------------------------------------------------------


def test_timeout_while_queued_fires_at_the_deadline_and_is_never_computed():
    gate = threading.Event()
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


def test_cancelled_while_queued_is_never_computed():
    gate = threading.Event()
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


# -- lifecycle ----------------------------------------------------------------------------------


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


# -- settings -----------------------------------------------------------------------------------


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


# -- concurrency --------------------------------------------------------------------------------


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


def test_partial_batches_wait_to_fill_behind_two_in_flight_but_full_ones_use_every_slot():
    # Slots beyond FEED_DEPTH (2) take only full batches: a partial batch would just queue on a
    # busy device, so it keeps filling until a batch finishes.
    model = Recorder(sleep_s=0.15)

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, max_inflight=4) as b:
            first = []
            for i in (1, 2):  # each dispatched alone: fewer than two batches in flight then
                first.append(asyncio.create_task(b.submit(vec(i))))
                await asyncio.sleep(0.01)
            held = [asyncio.create_task(b.submit(vec(i))) for i in (3, 4)]
            await asyncio.sleep(0.03)  # long past max_wait_ms, yet they wait behind two batches
            assert b.stats.batches == 0 and len(b._queue) == 2
            full = [asyncio.create_task(b.submit(vec(i))) for i in (5, 6, 7, 8)]  # 2 held + these
            await asyncio.gather(*first, *held, *full)
            return dict(b.stats.batch_sizes)

    sizes = run(main())
    assert sizes == {1: 2, 4: 1, 2: 1}, sizes
    assert sorted(model.sizes) == [1, 1, 2, 4]


# -- stats --------------------------------------------------------------------------------------


def test_summary_counts_add_up():
    gate = threading.Event()

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


def test_summary_counts_add_up_when_a_caller_gives_up_during_compute():
    gate = threading.Event()
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


def test_tiny_cpu_batches_run_inline_and_a_slow_one_sends_them_back_to_the_worker():
    threads: list[str] = []
    slow = threading.Event()

    def model(x):
        threads.append(threading.current_thread().name)
        if slow.is_set():
            time.sleep(2 * INLINE_BELOW_MS / 1e3)
        return x * 2

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            for _ in range(12):
                await asyncio.gather(*(b.submit(vec(j)) for j in range(4)))
            fast = len(threads)
            slow.set()
            outs = [await asyncio.gather(*(b.submit(vec(j)) for j in range(4))) for _ in range(3)]
        return fast, outs

    fast, outs = run(main())
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    assert all(t.startswith("labkit-batcher") for t in threads[:8]), threads  # no history yet
    # 8 tiny batches seen: inline (a first batch slowed by warm-up may delay that by one or two)
    assert set(threads[11:fast]) == {loop_thread} and fast == 12, threads
    assert threads[fast] == loop_thread  # the first slow batch could not be foreseen...
    assert all(t.startswith("labkit-batcher") for t in threads[fast + 1:]), threads  # ...the rest could
    assert all(torch.equal(y, vec(2 * j)) for out in outs for j, y in enumerate(out))


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


def test_token_ids_out_of_range_are_refused_at_submit():
    model = build_model("transformer", "small")
    x = example_batch(model, 1, device="cpu")[0]
    high = model.input_spec.high

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            bad = x.clone()
            bad[0] = high
            with pytest.raises(ValueError, match=rf"\[0, {high}\)"):
                await b.submit(bad)
            bad[0] = -1
            with pytest.raises(ValueError):
                await b.submit(bad)
            return await b.submit(x), b.stats.invalid

    y, invalid = run(main())
    assert invalid == 2 and y.shape == (10,)


@pytest.mark.parametrize("high, refused", [(100, True), (256, False)])
def test_uint8_inputs_are_range_checked_only_when_a_byte_can_exceed_the_bound(high, refused):
    spec = InputSpec((3,), torch.uint8, high=high)
    x = torch.tensor([0, 7, 255], dtype=torch.uint8)

    async def main():
        async with DynamicBatcher(lambda b: b.float(), max_batch_size=4, max_wait_ms=1, input_spec=spec) as b:
            return await b.submit(x)

    if refused:
        with pytest.raises(ValueError, match=r"\[0, 100\)"):
            run(main())
    else:
        assert run(main()).tolist() == [0.0, 7.0, 255.0]
