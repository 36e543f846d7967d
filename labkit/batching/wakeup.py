"""How a batcher's scheduler sleeps and is woken: one bare future per sleep."""

from __future__ import annotations

import asyncio

__all__ = ["Wakeup"]


class Wakeup:
    """`sleep` until `set` (or a deadline); a `set` while nobody sleeps is dropped.

    Dropping is safe because the scheduler looks at all of its state, with no ``await`` between,
    before it sleeps. `asyncio.Event` would do, but its ``wait`` builds a coroutine and a deque
    entry per sleep, and `set` is called by every request that fills a batch.
    """

    __slots__ = ("_loop", "_waiter", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None

    def set(self) -> None:
        waiter, timer = self._waiter, self._timer
        if waiter is None:
            return
        self._waiter = self._timer = None
        if timer is not None:
            timer.cancel()
        if not waiter.done():  # done: the sleeping task was cancelled
            waiter.set_result(None)

    def sleep(self, until: float | None = None) -> asyncio.Future:
        """A future to await: done at the next `set`, or when the loop clock reaches ``until``."""
        self.set()  # an earlier sleep that was never woken (its task cancelled) leaves nothing behind
        waiter = self._waiter = self._loop.create_future()
        if until is not None:
            self._timer = self._loop.call_at(until, self.set)
        return waiter
