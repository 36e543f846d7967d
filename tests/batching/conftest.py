"""What the batching tests share: a time limit, a model gate that always opens, test models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator

import pytest
import torch

TIME_LIMIT_S = 60  # every test here; a hang fails one test instead of the run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIME_LIMIT_S))


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """A closed gate for a `GatedModel`, opened at teardown, so a failing test never leaves a
    worker waiting on it."""
    event = threading.Event()
    yield event
    event.set()


def run(coro):
    return asyncio.run(coro)


def vec(i: float, n: int = 4) -> torch.Tensor:
    """A request input that says which request it is: every element is ``i``."""
    return torch.full((n,), float(i))


def batcher_threads() -> set[threading.Thread]:
    """The batcher's own threads alive now (workers and private loops)."""
    return {t for t in threading.enumerate() if t.name.startswith("labkit-batcher")}


class GatedModel:
    """Base for test models: says when it is entered, then waits for ``gate`` and sleeps ``sleep_s``.

    Subclasses call `enter` first in ``__call__`` and guard what they record with ``lock``.
    """

    def __init__(self, gate: threading.Event | None = None, sleep_s: float = 0.0):
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.gate = gate
        self.sleep_s = sleep_s

    def enter(self) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the model"
        if self.sleep_s:
            time.sleep(self.sleep_s)


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


async def occupy(request: Awaitable, model: GatedModel) -> asyncio.Task:
    """Send ``request`` and return once ``model`` computes it: with ``max_inflight=1`` and the
    model's gate closed, the batcher's only slot is now held and later requests stay queued."""
    blocker = asyncio.ensure_future(request)
    assert await asyncio.to_thread(model.entered.wait, 5)
    return blocker


class TurnsSlow:
    """Doubles its input; once ``slow`` is set, sleeps ``delay_s`` first: a model proven fast that
    then stalls (the fast path must never run it on the event loop)."""

    def __init__(self, delay_s: float = 1.5) -> None:
        self.slow, self.delay_s = threading.Event(), delay_s

    def __call__(self, x):
        if self.slow.is_set():
            time.sleep(self.delay_s)
        return x * 2


async def warm_fast_path(b, batches: int = 10) -> None:
    """Enough tiny batches that the CPU fast path is on (`BatchRunner.proven_fast`)."""
    for _ in range(batches):
        await asyncio.gather(*(b.submit(vec(1)) for _ in range(4)))
