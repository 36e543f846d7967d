"""AdaptiveBatcher: the fitted cost model, the "model" and "aimd" policies, load shedding."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
import torch

from labkit.batching import AdaptiveBatcher, BatchCostModel, DynamicBatcher, LoadShedError

from .conftest import run, vec


class LinearCostModel:
    """Takes ``fixed_ms + per_item_ms * n`` (sleeping), doubles its input, records batch sizes."""

    def __init__(self, fixed_ms: float, per_item_ms: float):
        self.fixed_ms = fixed_ms
        self.per_item_ms = per_item_ms
        self.lock = threading.Lock()
        self.sizes: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep((self.fixed_ms + self.per_item_ms * x.shape[0]) / 1e3)
        with self.lock:
            self.sizes.append(x.shape[0])
        return x * 2


# -- BatchCostModel -----------------------------------------------------------------------------


def test_cost_model_fits_a_line_exactly():
    cost = BatchCostModel()
    assert not cost.ready
    for n in (1, 4, 8, 16, 32, 3):
        cost.observe(n, 2 + 0.5 * n)
    assert cost.ready
    assert cost.a == pytest.approx(2.0, abs=1e-9)
    assert cost.b == pytest.approx(0.5, abs=1e-9)
    assert cost.predict(28) == pytest.approx(16.0)


def test_cost_model_with_one_size_is_proportional():
    cost = BatchCostModel()
    for ms in (9.0, 11.0, 10.0):
        cost.observe(8, ms)
    assert cost.a == 0.0
    assert cost.b == pytest.approx(10.0 / 8)
    assert cost.predict(16) == pytest.approx(20.0)


def test_cost_model_ignores_non_finite_times_and_keeps_a_window():
    cost = BatchCostModel(window=4)
    cost.observe(4, math.nan)
    cost.observe(4, math.inf)
    assert not cost.ready
    for n in (100, 200):  # old points with a different line, pushed out of the window
        cost.observe(n, 1000.0 * n)
    for n in (2, 4, 6, 8):
        cost.observe(n, 1 + 2 * n)
    assert len(cost.sizes) == 4
    assert (cost.a, cost.b) == (pytest.approx(1.0), pytest.approx(2.0))


# -- policy="model" -----------------------------------------------------------------------------


def test_model_policy_converges_to_the_largest_cap_meeting_the_target():
    model = LinearCostModel(2.0, 0.5)

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=40, headroom=0.8, max_batch_size=64,
                                   max_wait_ms=5) as b:
            assert b.cap == 64  # nothing measured yet: the upper bound
            for _ in range(3):
                out = await asyncio.gather(*(b.submit(vec(i)) for i in range(150)))
                assert all(torch.equal(o, vec(2 * i)) for i, o in enumerate(out))
            return b.cap, list(b.history), b.stats.batches

    cap, history, batches = run(main())
    assert 1 < cap <= 28  # 2 * (2 + 0.5 * cap) <= 0.8 * 40
    assert 2 * (2 + 0.5 * cap) <= 32
    assert cap >= 12  # and not needlessly small: the fit follows the real cost
    assert len(history) == batches
    assert [h["size"] for h in history] == model.sizes
    assert history[0]["size"] == 64  # before any measurement the cap is max_batch_size
    assert all(1 < h["cap"] <= 28 for h in history[-5:])  # converged, and stays there
    assert max(model.sizes[-5:]) <= 28


def test_shed_refuses_requests_that_cannot_meet_the_target():
    model = LinearCostModel(20.0, 0.0)

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=30, shed=True, max_batch_size=8,
                                   max_wait_ms=1) as b:
            out = await asyncio.gather(*(b.submit(vec(i)) for i in range(100)), return_exceptions=True)
            after = await b.submit(vec(1000))  # the overload is over: served again
        return out, after, b.stats.summary()

    out, after, s = run(main())
    shed = [o for o in out if isinstance(o, LoadShedError)]
    served = [(i, o) for i, o in enumerate(out) if isinstance(o, torch.Tensor)]
    assert len(shed) + len(served) == 100, [o for o in out if not isinstance(o, (LoadShedError, torch.Tensor))]
    assert shed and served
    assert all(torch.equal(o, vec(2 * i)) for i, o in served)
    assert s["shed"] == len(shed)
    assert s["completed"] == len(served) + 1
    assert torch.equal(after, vec(2000))
    assert s["submitted"] == s["completed"] + s["failed"] + s["timed_out"] + s["cancelled"] + s["shed"]


def test_counts_add_up_when_shedding_at_admission():
    model = LinearCostModel(20.0, 0.0)

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=30, shed=True, max_batch_size=8,
                                   max_wait_ms=1) as b:
            await b.submit(vec(0))  # the cost model is ready from here on
            out = await asyncio.gather(*(b.submit(vec(i)) for i in range(100)), return_exceptions=True)
        return out, b.stats.summary()

    out, s = run(main())
    assert any(isinstance(o, LoadShedError) for o in out)
    assert s["submitted"] == s["completed"] + s["failed"] + s["timed_out"] + s["cancelled"] + s["shed"]


def test_shedding_does_not_lock_out_an_idle_batcher():
    model = LinearCostModel(20.0, 0.0)  # any batch takes 20 ms: a lone request meets 30 ms

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=30, shed=True, max_batch_size=8,
                                   max_wait_ms=1) as b:
            first = await b.submit(vec(1))
            later = []
            for i in range(3):
                await asyncio.sleep(0.03)  # idle: nothing queued, nothing running
                later.append(await b.submit(vec(i)))
            return first, later

    first, later = run(main())
    assert torch.equal(first, vec(2))
    assert [o[0].item() for o in later] == [0.0, 2.0, 4.0]


def test_invalid_arguments_raise_value_error():
    for kwargs in (
        dict(target_p99_ms=0),
        dict(target_p99_ms=-5),
        dict(target_p99_ms=10, policy="pid"),
        dict(target_p99_ms=10, headroom=0),
        dict(target_p99_ms=10, headroom=1.5),
        dict(target_p99_ms=10, max_batch_size=0),
        dict(target_p99_ms=10, max_queue_size=0),
    ):
        with pytest.raises(ValueError):
            AdaptiveBatcher(lambda x: x, **kwargs)
    AdaptiveBatcher(lambda x: x, target_p99_ms=10, headroom=1.0)  # the bounds that are allowed


@pytest.mark.parametrize("kwargs", [dict(aimd_step=-4), dict(window=0)], ids=["aimd_step<0", "window=0"])
def test_invalid_step_or_window_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        AdaptiveBatcher(lambda x: x, target_p99_ms=10, policy="aimd", **kwargs)


# -- policy="aimd" ------------------------------------------------------------------------------


def test_aimd_starts_at_one_grows_additively_and_halves_on_a_miss():
    slow = threading.Event()
    sizes: list[int] = []

    def model(x):
        sizes.append(x.shape[0])
        time.sleep(0.15 if slow.is_set() else 0.0)
        return x * 2

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=100, headroom=0.8, policy="aimd",
                                   aimd_step=4, max_batch_size=64, max_wait_ms=2,
                                   max_inflight=1) as b:
            assert b.cap == 1
            first = await asyncio.gather(*(b.submit(vec(i)) for i in range(3)))
            for i in range(3):
                await b.submit(vec(i))
            slow.set()
            await b.submit(vec(1))  # worst latency ~150 ms > 100 ms
            slow.clear()
            await b.submit(vec(2))
            return first, [h["cap"] for h in b.history]

    first, caps = run(main())
    assert sizes[:2] == [1, 2]  # the first batch was capped at 1
    assert [o[0].item() for o in first] == [0.0, 2.0, 4.0]
    assert caps == [5, 9, 13, 17, 21, 10, 14]


def test_raised_bounds_take_effect_again():
    async def main():
        async with AdaptiveBatcher(lambda x: x, target_p99_ms=50, policy="aimd", max_wait_ms=10) as b:
            b.max_wait_ms = 2
            low = b._plan()[1]
            b.max_wait_ms = 10
            high = b._plan()[1]
        async with AdaptiveBatcher(lambda x: x, target_p99_ms=50, max_batch_size=64) as m:
            m.max_batch_size = 8
            small = m._plan()[0]
            m.max_batch_size = 64
            large = m._plan()[0]  # the cost model has seen no batch yet: the bound is the cap
        return low, high, small, large

    assert run(main()) == (0.002, 0.01, 8, 64)


def test_sustained_overload_of_a_fixed_cost_model_raises_the_cap_instead_of_collapsing():
    # 20 ms a batch whatever its size: meeting target_p99_ms=25 would need batches of one, which
    # serve 50 requests/s against 150 arriving. A backlog that never empties raises the floor.
    from labkit.load import open_loop

    model = LinearCostModel(20.0, 0.1)

    async def main():
        async with AdaptiveBatcher(model, target_p99_ms=25, max_batch_size=32, max_wait_ms=5,
                                   max_queue_size=10_000) as b:
            r = await open_loop(b.submit, lambda i: vec(i), rate_rps=150, duration_s=3.0, seed=2)
            return r

    r = run(main())
    assert r.failed == 0 and r.timed_out == 0 and r.completed == r.sent
    assert max(model.sizes) >= 4  # at least 4 a batch are needed to keep up (150/s * 20 ms = 3)
    assert r.latency.p50_ms < 500, r.latency  # batches of one would leave a 2 s backlog by the end


# -- the H200 reproduction (issue 13) -------------------------------------------------------------

FIXED_MS, PER_ITEM_MS = 5.66, 0.014  # the fitted cost of eager fp32 ResNet-50 on an H200


def eager_like(x: torch.Tensor) -> torch.Tensor:
    """Holds the GIL for the H200 line's time, as eager launching does (a busy spin in Python)."""
    end = time.perf_counter() + (FIXED_MS + PER_ITEM_MS * x.shape[0]) / 1e3
    while time.perf_counter() < end:
        pass
    return x * 2


def device_like(x: torch.Tensor) -> torch.Tensor:
    """Sleeps the H200 line's time with the GIL released, as waiting for a device does."""
    time.sleep((FIXED_MS + PER_ITEM_MS * x.shape[0]) / 1e3)
    return x * 2


@pytest.mark.parametrize("model", [eager_like, device_like], ids=["holds-gil", "releases-gil"])
def test_adaptive_meets_a_reachable_target_at_70_percent_load(model):
    # The bench's H200 setting (target 50 ms, wait <= 20 ms, 4 in flight, load at 70% of the
    # batcher's batch-32 capacity measured in a closed loop), where the target was missed with
    # p50 282 ms. Two batch times are about 12 ms, so the target is well within reach. No
    # gc.freeze() here: the batcher's default must keep a full collection out of the tail.
    # A box shared with other jobs can take the CPU away for 100 ms, which no batcher can
    # hide; so up to three runs, and one must meet the target (each run is 9,000+ requests).
    from labkit.load import closed_loop, open_loop

    def x(i):
        return vec(i)

    async def capacity():
        async with DynamicBatcher(model, max_batch_size=32, max_wait_ms=5, max_inflight=4,
                                  max_queue_size=100_000) as d:
            await closed_loop(d.submit, x, clients=192, requests=500)
            windows = [await closed_loop(d.submit, x, clients=192, requests=None, duration_s=0.4)
                       for _ in range(3)]
        return max(w.throughput_rps for w in windows)

    async def main():
        seen = []
        for attempt in range(3):
            rate = 0.7 * await capacity()  # measured afresh: what the shared box gives now
            async with AdaptiveBatcher(model, target_p99_ms=50, max_batch_size=32, max_wait_ms=20,
                                       max_inflight=4, max_queue_size=100_000) as b:
                await open_loop(b.submit, x, rate_rps=rate, duration_s=0.5, seed=9)  # steady state
                r = await open_loop(b.submit, x, rate_rps=rate, duration_s=3.0, seed=attempt)
            assert r.completed == r.sent > 3000 and r.failed == r.timed_out == 0
            seen.append((round(rate), round(r.latency.p50_ms, 1), round(r.latency.p99_ms, 1)))
            if r.latency.p99_ms <= 50:
                break
        return seen

    seen = run(main())
    assert seen[-1][2] <= 50, f"(req/s, p50 ms, p99 ms) of each run: {seen}"


def test_cost_fit_uses_busy_time_not_wall_time_when_batches_overlap(monkeypatch):
    # As on a GPU: one worker thread per batch in flight, one device running one batch at a time.
    # Each batch's wall time includes waiting for the device behind the others; its busy time
    # does not, so the fitted line stays the device's own (2 + 0.5 n ms), whatever the overlap.
    from labkit.batching.engine import BatchRunner

    monkeypatch.setattr(BatchRunner, "threads", property(lambda self: len(self.slots)))
    device = threading.Lock()
    model = LinearCostModel(2.0, 0.5)

    def serialised(x):
        with device:
            return model(x)

    async def main():
        async with AdaptiveBatcher(serialised, target_p99_ms=1000, max_batch_size=16, max_wait_ms=0,
                                   max_inflight=4) as b:
            for n in (16, 5, 16, 9, 16, 3, 16, 12):
                await asyncio.gather(*(b.submit(vec(i)) for i in range(4 * n)))
            return b.cost, b.stats.summary()

    cost, stats = run(main())
    assert stats["batch_p50_ms"] > 1.5 * cost.predict(16)  # wall times did overlap
    assert cost.predict(16) == pytest.approx(10.0, rel=0.35)
    assert cost.predict(4) == pytest.approx(4.0, rel=0.5)


def test_start_freezes_the_collector_unless_told_not_to():
    # A full collection over every object alive at start (torch's ~176k) became the p99 (143 ms);
    # the batcher collects once and freezes them at start. freeze_gc=False leaves gc alone.
    import gc

    async def main(freeze):
        gc.unfreeze()
        async with AdaptiveBatcher(lambda x: x, target_p99_ms=50, freeze_gc=freeze) as b:
            frozen = gc.get_freeze_count()
            await b.submit(vec(1))
        return frozen

    try:
        assert run(main(False)) == 0
        assert run(main(True)) > 0
    finally:
        gc.unfreeze()
