"""Load generators for async ``submit`` functions: closed loop and open loop (Poisson).

A *closed* loop keeps N clients busy, each sending its next request when the last one returns: it
finds the throughput a server sustains. An *open* loop sends requests at random (Poisson) times
whatever the server does, as real users do: it shows latency at a given offered load. Latency in
the open loop counts from the *scheduled* send time, so a stalled sender cannot hide queueing
("coordinated omission"). Both are bounded in requests and in time, and every request ends in
exactly one bucket: completed, failed (the exception's type is counted) or timed out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit.measure import LatencyStats

__all__ = ["LoadResult", "closed_loop", "open_loop", "poisson_arrivals"]

Submit = Callable[[Any], Awaitable[Any]]
MakeInput = Callable[[int], Any]


@dataclass(frozen=True)
class LoadResult:
    """What a load run saw. ``sent == completed + failed + timed_out`` always holds.

    ``duration_s`` runs from the start to the last request's outcome, whatever it was;
    ``throughput_rps`` counts completed requests only.
    """

    mode: str
    sent: int
    completed: int
    failed: int
    timed_out: int
    errors: dict[str, int]
    duration_s: float
    throughput_rps: float
    latency: LatencyStats
    offered_rps: float | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)


class _Tally:
    """Counts outcomes; latencies only for successful requests."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent = self.timed_out = 0
        self.last_done = 0.0

    async def one(self, submit: Submit, x: Any, t_sched: float, timeout_s: float) -> None:
        """Send one request and file its outcome; cancels it if it outlives ``timeout_s``."""
        self.sent += 1

        async def call() -> Any:  # so that a submit raising before its first await is filed too
            return await submit(x)

        task = asyncio.ensure_future(call())
        done, _ = await asyncio.wait({task}, timeout=max(0.0, t_sched + timeout_s - time.perf_counter()))
        self.last_done = time.perf_counter()
        if not done:
            task.cancel()
            self.timed_out += 1
        elif task.cancelled():  # cancelled inside the server: a failure like any other
            self.errors["CancelledError"] += 1
        elif (exc := task.exception()) is not None:
            self.errors[type(exc).__name__] += 1
        else:
            self.latencies_ms.append((self.last_done - t_sched) * 1e3)

    def result(self, mode: str, t0: float, offered_rps: float | None = None) -> LoadResult:
        completed = len(self.latencies_ms)
        duration = max(self.last_done - t0, 1e-9)
        return LoadResult(
            mode=mode,
            sent=self.sent,
            completed=completed,
            failed=sum(self.errors.values()),
            timed_out=self.timed_out,
            errors=dict(self.errors),
            duration_s=duration,
            throughput_rps=completed / duration if completed else 0.0,
            latency=LatencyStats.from_samples(self.latencies_ms),
            offered_rps=offered_rps,
            latencies_ms=tuple(self.latencies_ms),
        )


async def closed_loop(
    submit: Submit,
    make_input: MakeInput,
    *,
    clients: int = 8,
    requests: int | None = 1000,
    duration_s: float | None = None,
    request_timeout_s: float = 30.0,
) -> LoadResult:
    """``clients`` concurrent clients, each sending its next request when the last one returns.

    Stops issuing after ``requests`` requests or ``duration_s`` seconds, whichever comes first (at
    least one must be given); a request still running after ``request_timeout_s`` is cancelled and
    counted as timed out, so the run always ends.
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    if requests is None and duration_s is None:
        raise ValueError("give requests=, duration_s= or both: a load run must be bounded")
    tally = _Tally()
    t0 = time.perf_counter()
    deadline = t0 + duration_s if duration_s is not None else float("inf")
    issued = 0

    async def client() -> None:
        nonlocal issued
        while (requests is None or issued < requests) and time.perf_counter() < deadline:
            i = issued
            issued += 1
            await tally.one(submit, make_input(i), time.perf_counter(), request_timeout_s)

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally.result("closed", t0)


def poisson_arrivals(rate_rps: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (seconds from start) of a Poisson process of ``rate_rps`` over ``duration_s``."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate_rps and duration_s must be positive, got {rate_rps}, {duration_s}")
    rng = np.random.default_rng(seed)
    expected = rate_rps * duration_s
    gaps = rng.exponential(1.0 / rate_rps, size=int(expected + 10 * expected**0.5 + 10))
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # astronomically rare: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate_rps, 100))])
    return times[times < duration_s]


async def open_loop(
    submit: Submit,
    make_input: MakeInput,
    *,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    max_requests: int | None = None,
    request_timeout_s: float = 30.0,
) -> LoadResult:
    """Send requests at Poisson-distributed times, ``rate_rps`` on average, for ``duration_s``.

    The schedule depends only on ``seed``, so two servers can be compared on the same arrivals.
    Latency counts from each request's scheduled time. Requests still running
    ``request_timeout_s`` after their scheduled time are cancelled and counted as timed out.
    """
    arrivals = poisson_arrivals(rate_rps, duration_s, seed)
    if max_requests is not None:
        arrivals = arrivals[:max_requests]
    tally = _Tally()
    t0 = time.perf_counter()
    pending: set[asyncio.Future] = set()  # only unfinished ones: thousands of done tasks kept
    for i, at in enumerate(arrivals):     # alive would make each garbage collection slower
        t_sched = t0 + float(at)
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(tally.one(submit, make_input(i), t_sched, request_timeout_s))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return tally.result("open", t0, offered_rps=rate_rps)
