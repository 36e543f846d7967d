import asyncio
import time

import numpy as np
import pytest

from labkit.load import closed_loop, open_loop, poisson_arrivals


async def echo(x):
    await asyncio.sleep(0.001)
    return x


async def hang(x):
    await asyncio.Event().wait()


def identity(i):
    return i


def assert_accounted(r):
    assert r.sent == r.completed + r.failed + r.timed_out
    assert r.failed == sum(r.errors.values())
    assert r.latency.n == r.completed == len(r.latencies_ms)


# --- closed loop ----------------------------------------------------------------------------

@pytest.mark.parametrize("clients, requests", [(1, 5), (4, 50), (8, 3)])
def test_closed_loop_sends_exactly_requests(clients, requests):
    r = asyncio.run(closed_loop(echo, identity, clients=clients, requests=requests))
    assert r.mode == "closed"
    assert r.sent == r.completed == requests
    assert r.failed == r.timed_out == 0 and r.errors == {}
    assert r.offered_rps is None
    assert r.throughput_rps > 0
    assert_accounted(r)


def test_closed_loop_keeps_exactly_clients_in_flight():
    live = peak = 0

    async def submit(x):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.001)
        live -= 1

    asyncio.run(closed_loop(submit, identity, clients=5, requests=200))
    assert peak == 5
    assert live == 0


def test_closed_loop_makes_each_input_once():
    seen = []

    def make_input(i):
        seen.append(i)
        return i

    asyncio.run(closed_loop(echo, make_input, clients=3, requests=40))
    assert sorted(seen) == list(range(40))


def test_closed_loop_passes_inputs_to_submit():
    got = []

    async def submit(x):
        got.append(x)
        await asyncio.sleep(0)

    asyncio.run(closed_loop(submit, lambda i: f"req-{i}", clients=2, requests=6))
    assert sorted(got) == sorted(f"req-{i}" for i in range(6))


def test_closed_loop_measures_latency_of_each_request():
    async def slow(x):
        await asyncio.sleep(0.02)

    r = asyncio.run(closed_loop(slow, identity, clients=2, requests=6))
    assert r.latency.p50_ms >= 19
    assert min(r.latencies_ms) >= 19
    assert r.latency.max_ms < 2000


def test_closed_loop_counts_failures_by_type():
    async def flaky(x):
        await asyncio.sleep(0)
        if x % 3 == 0:
            raise ValueError("bad input")
        if x % 3 == 1:
            raise KeyError(x)
        return x

    r = asyncio.run(closed_loop(flaky, identity, clients=4, requests=30))
    assert r.sent == 30
    assert r.completed == 10
    assert r.failed == 20
    assert r.errors == {"ValueError": 10, "KeyError": 10}
    assert_accounted(r)


def test_closed_loop_counts_a_plain_function_that_raises():
    def submit(x):
        raise RuntimeError("refused")

    r = asyncio.run(closed_loop(submit, identity, clients=2, requests=4))
    assert (r.sent, r.completed, r.failed) == (4, 0, 4)
    assert r.errors == {"RuntimeError": 4}


def test_closed_loop_counts_a_coroutine_raising_before_its_first_await():
    async def submit(x):
        raise ConnectionError("down")

    r = asyncio.run(closed_loop(submit, identity, clients=2, requests=4))
    assert r.errors == {"ConnectionError": 4}
    assert_accounted(r)


def test_closed_loop_times_out_hanging_requests():
    t0 = time.perf_counter()
    r = asyncio.run(closed_loop(hang, identity, clients=2, requests=4, request_timeout_s=0.1))
    elapsed = time.perf_counter() - t0
    assert (r.sent, r.completed, r.failed, r.timed_out) == (4, 0, 0, 4)
    assert 0.19 <= elapsed < 2.0  # two rounds of 0.1 s timeouts
    assert r.throughput_rps == 0.0
    assert r.latency.n == 0


def test_closed_loop_mixed_outcomes_add_up():
    async def submit(x):
        if x % 3 == 0:
            await asyncio.Event().wait()
        await asyncio.sleep(0.001)
        if x % 3 == 1:
            raise TimeoutError
        return x

    r = asyncio.run(closed_loop(submit, identity, clients=3, requests=9, request_timeout_s=0.1))
    assert (r.sent, r.completed, r.failed, r.timed_out) == (9, 3, 3, 3)
    assert r.errors == {"TimeoutError": 3}
    assert_accounted(r)


def test_closed_loop_duration_bound_stops_issuing():
    async def submit(x):
        await asyncio.sleep(0.01)

    t0 = time.perf_counter()
    r = asyncio.run(closed_loop(submit, identity, clients=2, requests=None, duration_s=0.3))
    elapsed = time.perf_counter() - t0
    assert 0.3 <= elapsed < 2.0
    assert r.sent > 0
    assert r.sent == r.completed
    assert r.sent < 2 * (0.3 / 0.01) + 2 * 2  # two clients at most one request past the deadline


def test_closed_loop_first_bound_wins():
    r = asyncio.run(closed_loop(echo, identity, clients=2, requests=5, duration_s=10.0))
    assert r.sent == 5


def test_closed_loop_must_be_bounded():
    with pytest.raises(ValueError):
        asyncio.run(closed_loop(echo, identity, requests=None, duration_s=None))


@pytest.mark.parametrize("clients", [0, -2])
def test_closed_loop_needs_a_client(clients):
    with pytest.raises(ValueError):
        asyncio.run(closed_loop(echo, identity, clients=clients, requests=5))


def test_closed_loop_counts_a_submit_that_raises_cancelled_error():
    async def submit(x):
        await asyncio.sleep(0)
        if x == 1:
            raise asyncio.CancelledError()
        return x

    r = asyncio.run(closed_loop(submit, identity, clients=1, requests=3))
    assert r.sent == 3
    assert r.errors == {"CancelledError": 1}
    assert_accounted(r)


def test_closed_loop_duration_reflects_a_run_without_completions():
    r = asyncio.run(closed_loop(hang, identity, clients=2, requests=4, request_timeout_s=0.1))
    assert r.duration_s >= 0.19


# --- Poisson arrivals and the open loop -----------------------------------------------------

def test_poisson_arrivals_is_deterministic_per_seed():
    a = poisson_arrivals(100, 1.0, seed=7)
    assert np.array_equal(a, poisson_arrivals(100, 1.0, seed=7))
    assert not np.array_equal(a, poisson_arrivals(100, 1.0, seed=8))


def test_poisson_arrivals_shape_and_rate():
    rate, duration = 1000.0, 2.0
    a = poisson_arrivals(rate, duration, seed=0)
    expected = rate * duration
    assert abs(a.size - expected) <= 5 * expected**0.5
    assert np.all(np.diff(a) >= 0)
    assert a.min() > 0 and a.max() < duration
    assert np.mean(np.diff(a)) == pytest.approx(1 / rate, rel=0.1)


@pytest.mark.parametrize("rate, duration", [(0, 1.0), (-5, 1.0), (10, 0), (10, -1.0)])
def test_poisson_arrivals_rejects_non_positive(rate, duration):
    with pytest.raises(ValueError):
        poisson_arrivals(rate, duration)


def test_open_loop_follows_the_schedule():
    rate, duration, seed = 200.0, 0.5, 3
    expected = len(poisson_arrivals(rate, duration, seed))
    seen = []

    def make_input(i):
        seen.append(i)
        return i

    t0 = time.perf_counter()
    r = asyncio.run(open_loop(echo, make_input, rate_rps=rate, duration_s=duration, seed=seed))
    elapsed = time.perf_counter() - t0
    assert expected > 0
    assert r.mode == "open"
    assert r.sent == r.completed == expected
    assert sorted(seen) == list(range(expected))
    assert r.offered_rps == rate
    assert elapsed < duration + 2.0
    assert_accounted(r)


def test_open_loop_latency_includes_service_time():
    async def slow(x):
        await asyncio.sleep(0.02)

    r = asyncio.run(open_loop(slow, identity, rate_rps=100, duration_s=0.3, seed=1))
    assert r.completed > 0
    assert r.latency.p50_ms >= 19
    assert min(r.latencies_ms) >= 19


def test_open_loop_latency_counts_from_the_scheduled_time():
    # The sender stalls 100 ms building input 0; the server is instant. Latency measured from the
    # scheduled time must show the stall (no coordinated omission).
    def make_input(i):
        if i == 0:
            time.sleep(0.1)
        return i

    async def instant(x):
        return x

    r = asyncio.run(open_loop(instant, make_input, rate_rps=100, duration_s=0.3, seed=2))
    assert r.completed == r.sent > 1
    assert r.latency.max_ms >= 99


def test_open_loop_max_requests_caps():
    full = len(poisson_arrivals(500, 0.5, seed=0))
    assert full > 10
    r = asyncio.run(open_loop(echo, identity, rate_rps=500, duration_s=0.5, seed=0, max_requests=10))
    assert r.sent == r.completed == 10


def test_open_loop_times_out_hanging_requests():
    expected = len(poisson_arrivals(50, 0.2, seed=0))
    t0 = time.perf_counter()
    r = asyncio.run(open_loop(hang, identity, rate_rps=50, duration_s=0.2, seed=0, request_timeout_s=0.1))
    elapsed = time.perf_counter() - t0
    assert r.sent == r.timed_out == expected > 0
    assert r.completed == r.failed == 0
    assert elapsed < 2.0


def test_open_loop_counts_failures():
    async def failing(x):
        await asyncio.sleep(0)
        raise ValueError(x)

    r = asyncio.run(open_loop(failing, identity, rate_rps=100, duration_s=0.2, seed=4))
    assert r.sent > 0
    assert r.errors == {"ValueError": r.sent}
    assert_accounted(r)
