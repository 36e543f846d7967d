"""Small helpers shared by the batching tests."""

import asyncio
import threading
import time
from collections.abc import Awaitable

import torch


def run(coro):
    return asyncio.run(coro)


def vec(i: float, n: int = 4) -> torch.Tensor:
    """A request input that says which request it is: every element is ``i``."""
    return torch.full((n,), float(i))


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


async def occupy(request: Awaitable, model: GatedModel) -> asyncio.Task:
    """Send ``request`` and return once ``model`` computes it: with ``max_inflight=1`` and the
    model's gate closed, the batcher's only slot is now held and later requests stay queued."""
    blocker = asyncio.ensure_future(request)
    assert await asyncio.to_thread(model.entered.wait, 5)
    return blocker
