"""A batcher's life around its scheduler task: ``async with``, a drain that finishes what was
accepted, and, from code without asyncio, ``with`` and ``submit_sync`` on a private event loop
in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from labkit.batching.errors import BatcherError, BatcherStoppedError
from labkit.batching.wakeup import Wakeup

__all__ = ["PrivateLoop"]


class PrivateLoop:
    """``with batcher:`` and ``submit_sync``, for a class with async ``start``/``stop``.

    A second ``with`` on a batcher already serving (nested, or after ``async with``) is refused
    before anything is created: one batcher serves from one loop, and the outer block must be
    the one that stops it.
    """

    _loop: asyncio.AbstractEventLoop | None
    _task: asyncio.Task | None
    _accepting: bool
    _private: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    _stopping: bool
    _wake: Wakeup

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _drain(self) -> None:
        """Stop accepting and wait for the scheduler task to finish every accepted request; a
        task that had ended on its own by crashing says so rather than stay silent."""
        self._accepting = False
        if self._task is None:
            return
        if self._task.done():
            if not self._task.cancelled() and self._task.exception() is not None:
                raise BatcherStoppedError(f"{type(self).__name__}'s scheduler had crashed") from self._task.exception()
            return
        self._stopping = True
        self._wake.set()
        await asyncio.shield(self._task)

    def __enter__(self) -> Any:
        if self._task is not None or self._private is not None:
            raise BatcherError(f"this {type(self).__name__} is already started; nest no `with` "
                               "inside another for one batcher (create a second batcher)")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="labkit-batcher-loop", daemon=True)
        thread.start()
        self._private = (loop, thread)
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
        except BaseException:
            self._close_private_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._private is not None
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), self._private[0]).result()
        finally:
            self._close_private_loop()

    def _close_private_loop(self) -> None:
        loop, thread = self._private
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def _call_sync(self, make_coro: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or not self._accepting:
            raise BatcherStoppedError(f"{type(self).__name__} is not running; request refused")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("submit_sync would block the batcher's own event loop; use `await batcher.submit(x)`")
        done = asyncio.run_coroutine_threadsafe(make_coro(), loop)
        while True:  # wait, but never on a loop that has stopped and will not answer
            try:
                return done.result(timeout=0.25)
            except TimeoutError:
                if done.done():  # the request's own TimeoutError
                    raise
                if loop.is_closed() or not loop.is_running():
                    done.cancel()
                    raise BatcherStoppedError(f"{type(self).__name__} stopped before answering") from None
