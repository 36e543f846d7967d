"""The life of a request in a batcher: admission, waiting, dispatch, one outcome.

`Batcher` owns the event-loop side: it validates and queues requests, decides when a batch
leaves (full, or its oldest request has waited ``max_wait_ms``), keeps up to ``max_inflight``
batches running in worker threads (`BatchRunner`), and gives every request exactly one outcome.
The scheduler sleeps on an event when there is nothing to do: an idle batcher uses no CPU.
Subclasses choose the queue (`FifoQueue`, `PriorityQueues`) and may steer each batch's size.

Slots beyond `FEED_DEPTH` are for full batches only. Two batches in flight (one computing, the
next staged) keep a device busy; a partial batch sent behind them would only wait in the
device's queue, at nearly the cost of a full one (launch overhead, padding to a captured size),
so it keeps filling until a batch finishes. Measured on an H200 (ResNet-50, CUDA graphs, 4 in
flight, Poisson load at 70% of capacity): without this rule batches of ~21 each cost a full
batch's time, the device saturated and p99 reached 154 ms.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from labkit.batching.engine import BatchRunner
from labkit.batching.errors import BatcherError, BatcherStoppedError, QueueFullError
from labkit.batching.queues import DROPPED, FifoQueue, PriorityQueues, Request
from labkit.batching.stats import BatcherStats
from labkit.device import device_of
from labkit.models import InputSpec, input_spec_of

__all__ = ["Batcher", "FEED_DEPTH"]

FEED_DEPTH = 2


def _can_exceed(spec: InputSpec) -> bool:
    """Can an input of this dtype hold a value outside ``[0, spec.high)``? Not so for uint8 images
    with high=256; checking them anyway cost a min and a max over 150 KB per request, on the
    event loop (measured on an H200 box: uint8 ResNet-50 through the batcher fell to 79% of
    direct while float32 reached 98%)."""
    if spec.high is None or spec.dtype.is_floating_point or spec.dtype == torch.bool:
        return False
    info = torch.iinfo(spec.dtype)
    return info.min < 0 or info.max >= spec.high


class Batcher:
    """Shared machinery of `DynamicBatcher`, `AdaptiveBatcher` and `PriorityBatcher`.

    Inputs: one CPU tensor per request, all of one shape and dtype (the *signature*). It comes
    from ``input_spec=``, else the model's ``input_spec`` (labkit models have one), else the
    first request. Other shapes are refused at `submit` with a `ValueError`, not bucketed: one
    batcher serves one signature, so run one batcher per input shape.

    ``freeze_gc=True`` (the default): `start` runs a full garbage collection and then
    ``gc.freeze()``, moving every object alive then (torch, the model, the notebook) out of the
    collector's reach. Otherwise a full collection, whenever allocations trigger one, walks all
    of them with the loop stopped: on the 2-core CPU box, with torch imported, one took 143 ms
    mid-run and became the p99 (the adaptive batcher's test at 70% load: p99 193 ms with one
    such pause, 31-35 ms frozen; the remaining full collections took 1.5-3 ms). Frozen objects
    are never collected, so pass ``freeze_gc=False`` in a process that keeps creating and
    dropping large object graphs (reference cycles among them would stay in memory). Put a
    launch-bound model behind `labkit.graphs.GraphRunner`.
    """

    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_inflight: int = 2,
        device: str | torch.device | None = None,
        input_spec: InputSpec | None = None,
        results_on_device: bool = False,
        freeze_gc: bool = True,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_inflight = max_inflight
        self.device = torch.device(device) if device is not None else device_of(fn_or_model)
        if isinstance(fn_or_model, nn.Module):
            fn_or_model = fn_or_model.to(self.device).eval()
            input_spec = input_spec or input_spec_of(fn_or_model)
        else:  # a callable such as GraphRunner may say where it runs and what it takes
            input_spec = input_spec or getattr(fn_or_model, "input_spec", None)
        self.fn = fn_or_model
        self.input_spec = input_spec
        self.results_on_device = results_on_device
        self.freeze_gc = freeze_gc
        self.stats = BatcherStats()
        self._queue: FifoQueue | PriorityQueues = self._make_queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- settings that apply from the next batch ---------------------------------------------

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {value}")
        self._max_batch_size = int(value)
        self._poke()

    @property
    def max_wait_ms(self) -> float:
        return self._max_wait_ms

    @max_wait_ms.setter
    def max_wait_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {value}")
        self._max_wait_ms = float(value)
        self._poke()

    @property
    def input_spec(self) -> InputSpec | None:
        """The one input signature this batcher accepts (None until the first request fixes it)."""
        return self._input_spec

    @input_spec.setter
    def input_spec(self, spec: InputSpec | None) -> None:
        self._input_spec = spec
        self._shape = torch.Size(spec.shape) if spec is not None else None
        self._dtype = spec.dtype if spec is not None else None
        self._high = spec.high if spec is not None and _can_exceed(spec) else None

    # -- subclass hooks ------------------------------------------------------------------------

    def _make_queue(self) -> FifoQueue | PriorityQueues:
        raise NotImplementedError

    def _plan(self) -> tuple[int, float]:
        """(batch cap, wait in seconds) for the next batch."""
        return self._max_batch_size, self._max_wait_ms / 1e3

    def _admit(self, req: Request) -> None:
        """Raise to refuse ``req`` at submit (after validation, before queueing)."""

    def _screen(self, batch: list[Request], now: float) -> list[Request]:
        """Last look before compute; requests removed here must have been given an outcome."""
        return batch

    def _on_batch_done(self, batch: list[Request], busy_ms: float) -> None:
        """Called on the loop after each batch has its outcomes, with its busy time (`BatchRunner.run`)."""

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving on the running event loop."""
        if self._task is not None:
            raise BatcherError("this batcher was already started; create a new one")
        self._loop = asyncio.get_running_loop()
        if self.freeze_gc:  # see the class docstring: a full collection must not become the p99
            gc.collect()
            gc.freeze()
        self._wake = asyncio.Event()
        self._free_slots: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.max_inflight):
            self._free_slots.put_nowait(i)
        self._runner = BatchRunner(self.fn, self.device, self.max_inflight, results_on_device=self.results_on_device,
                                   capacity=self._max_batch_size)
        self._executor = ThreadPoolExecutor(self._runner.threads, thread_name_prefix="labkit-batcher")
        self._inflight: set[asyncio.Future] = set()
        self._cap = self._max_batch_size
        self._accepting = True
        self._task = asyncio.create_task(self._serve(), name=f"{type(self).__name__}-scheduler")

    async def stop(self) -> None:
        """Stop accepting, finish every accepted request, then release the worker threads."""
        self._accepting = False
        if self._task is None:
            return
        if self._task.done():  # it ended on its own: say so if it crashed, rather than stay silent
            if not self._task.cancelled() and self._task.exception() is not None:
                raise BatcherStoppedError(f"{type(self).__name__}'s scheduler had crashed") from self._task.exception()
            return
        self._stopping = True
        self._poke()
        await asyncio.shield(self._task)

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Batcher:
        """Serve from a private event loop in a background thread, for code without asyncio."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="labkit-batcher-loop", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
        except BaseException:
            self._close_private_loop(loop)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        assert loop is not None and self._thread is not None
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
        finally:
            self._close_private_loop(loop)

    def _close_private_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join()
        loop.close()

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, x: torch.Tensor, *, timeout_ms: float | None = None) -> Coroutine[Any, Any, Any]:
        """Queue ``x`` (one input, no batch dimension); awaiting gives its output row.

        (A plain method returning the coroutine, so ``await batcher.submit(x)`` costs one
        coroutine, not two: at tens of thousands of requests a second, that shows.)

        Raises `ValueError` for an input that does not match the signature, `QueueFullError`
        when the queue is full, `BatcherStoppedError` when not running, `TimeoutError` when
        ``timeout_ms`` passes before the request is scheduled (once computing, it finishes), or
        the model's own exception for this input.
        """
        return self._submit(x, timeout_ms, 0)

    def submit_sync(self, x: torch.Tensor, *, timeout_ms: float | None = None) -> Any:
        """`submit` from any thread other than the batcher's own event loop; blocks for the result."""
        return self._call_sync(lambda: self._submit(x, timeout_ms, 0))

    async def _submit(self, x: torch.Tensor, timeout_ms: float | None, priority: int) -> Any:
        if not self._accepting:
            state = "stopped" if self._task is not None else "not started (use `async with batcher:` or `await batcher.start()`)"
            raise BatcherStoppedError(f"{type(self).__name__} is {state}; request refused")
        if timeout_ms is not None and timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
        loop = self._loop
        if asyncio.get_running_loop() is not loop:
            raise RuntimeError(
                f"{type(self).__name__}.submit must be awaited on the event loop it was started on; "
                "from another thread or loop use submit_sync"
            )
        self._validate(x)
        now = loop.time()
        req = Request(x, loop.create_future(), now, priority=priority)
        if timeout_ms is not None:
            req.deadline = now + timeout_ms / 1e3
        try:
            self._admit(req)
            self._queue.push(req)
        except QueueFullError:
            self.stats.rejected += 1
            raise
        if timeout_ms is not None:
            req.timer = loop.call_at(req.deadline, self._expire, req, timeout_ms)
        self.stats.submitted += 1
        waiting = len(self._queue)
        if waiting == 1 or waiting >= self._cap:  # the scheduler needs to look again
            self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            if req.queued:
                self._drop(req)
                self.stats.cancelled += 1
            raise

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

    def _validate(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            self.stats.invalid += 1
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        spec = self.input_spec
        if x.is_cpu and x.shape == self._shape and x.dtype == self._dtype:  # the common case, fast
            if self._high is None:
                return
            # An out-of-range token id would be a device-side assert on a GPU, which poisons the
            # CUDA context for every later request; refuse it here, where it is one request's error.
            lo, hi = int(x.min()), int(x.max())
            if lo >= 0 and hi < self._high:
                return
            problem = f"ids in [0, {self._high}), got values from {lo} to {hi}"
        elif not x.is_cpu:
            problem = f"a CPU tensor (inputs are staged in host memory), got one on {x.device}"
        elif spec is None:  # the first request fixes the signature
            self.input_spec = InputSpec(tuple(x.shape), x.dtype)
            return
        else:
            problem = f"shape {tuple(spec.shape)} and dtype {spec.dtype}, got shape {tuple(x.shape)} and dtype {x.dtype}"
        self.stats.invalid += 1
        raise ValueError(f"{type(self).__name__}: expected one input of {problem} (no batch dimension)")

    def _drop(self, req: Request) -> None:
        self._queue.discard(req)
        if req.timer is not None:
            req.timer.cancel()

    def _expire(self, req: Request, timeout_ms: float) -> None:
        if req.queued:
            self._drop(req)
            self.stats.timed_out += 1
            if not req.future.done():
                req.future.set_exception(TimeoutError(f"request not scheduled within timeout_ms={timeout_ms:g}"))

    def _poke(self) -> None:
        task, loop = getattr(self, "_task", None), getattr(self, "_loop", None)
        if task is not None and not task.done() and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- the scheduler ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                slot = await self._free_slots.get()
                batch = await self._next_batch()
                if batch is None:
                    break
                self._dispatch(batch, slot)
            while self._inflight:
                await asyncio.wait(set(self._inflight))
        except BaseException as exc:  # a bug or a cancelled loop: nobody may be left waiting
            self._fail_everything(exc)
            raise
        finally:
            self._accepting = False
            self._executor.shutdown(wait=False)

    async def _next_batch(self) -> list[Request] | None:
        """Wait until a batch is due, then take it (None: stopping and nothing left)."""
        loop = self._loop
        while True:
            if len(self._queue) == 0:
                if self._stopping:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            cap, wait_s = self._plan()
            cap = self._cap = max(1, cap)
            due = self._queue.oldest_arrival() + wait_s
            now = loop.time()
            fed = len(self._inflight) >= FEED_DEPTH
            if len(self._queue) >= cap or self._stopping or (now >= due and not fed):
                batch = self._screen(self._take(cap, now), now)
                if batch:
                    return batch
                continue
            self._wake.clear()  # woken by a new request, a finished batch (`_finish`) or the timer
            timer = None if now >= due else loop.call_at(due, self._wake.set)
            await self._wake.wait()
            if timer is not None:
                timer.cancel()

    def _take(self, cap: int, now: float) -> list[Request]:
        """Up to ``cap`` requests for a batch; expired or cancelled ones get their outcome here."""
        batch: list[Request] = []
        while len(batch) < cap and len(self._queue):
            for req in self._queue.take(cap - len(batch), now):
                if req.timer is not None:
                    req.timer.cancel()
                if req.future.done():  # cancelled by its caller, whose handler has not run yet
                    req.state = DROPPED
                    self.stats.cancelled += 1
                elif req.deadline is not None and req.deadline <= now:  # its timer is due, not yet run
                    req.state = DROPPED
                    self.stats.timed_out += 1
                    req.future.set_exception(TimeoutError("request not scheduled within its timeout_ms"))
                else:
                    batch.append(req)
                    self.stats.queue_wait_ms.append((now - req.arrival) * 1e3)
        return batch

    def _dispatch(self, batch: list[Request], slot: int) -> None:
        xs = [r.x for r in batch]
        if self._runner.inline:  # a tiny CPU batch: cheaper here than a thread hop away
            done = self._loop.create_future()
            try:
                done.set_result(self._runner.run(slot, xs))
            except BaseException as exc:  # even KeyboardInterrupt: this batch still gets outcomes
                done.set_exception(exc)
            self._finish(batch, slot, done)
            return
        done = self._loop.run_in_executor(self._executor, self._runner.run, slot, xs)
        self._inflight.add(done)
        done.add_done_callback(lambda f: self._finish(batch, slot, f))

    def _finish(self, batch: list[Request], slot: int, done: asyncio.Future) -> None:
        self._inflight.discard(done)
        self._free_slots.put_nowait(slot)
        self._wake.set()  # a partial batch held back by FEED_DEPTH may leave now
        if done.cancelled() or done.exception() is not None:  # the batch failed as a whole
            error = done.exception() if not done.cancelled() else BatcherStoppedError("batch cancelled")
            outcomes, batch_ms, busy_ms = [error] * len(batch), float("nan"), float("nan")
        else:
            outcomes, batch_ms, busy_ms = done.result()
        self.stats.batches += 1
        self.stats.batch_sizes[len(batch)] += 1
        self.stats.batch_ms.append(batch_ms)
        try:
            for req, outcome in zip(batch, outcomes, strict=True):
                self._resolve(req, outcome)
        finally:
            self._on_batch_done(batch, busy_ms)

    def _resolve(self, req: Request, outcome: Any) -> None:
        """Give ``req`` its outcome, whatever the outcome is."""
        future = req.future
        if future.done():  # the caller gave up while its batch was running
            self.stats.cancelled += 1
            return
        if not isinstance(outcome, BaseException):
            self.stats.completed += 1
            future.set_result(outcome)
            return
        self.stats.failed += 1
        if isinstance(outcome, (StopIteration, StopAsyncIteration)):  # a future refuses these
            outcome = RuntimeError(f"the model raised {outcome!r}")
        future.set_exception(outcome)

    def _fail_everything(self, exc: BaseException) -> None:
        self._accepting = False
        error = BatcherStoppedError(f"{type(self).__name__} stopped unexpectedly: {exc!r}")
        for req in self._queue.waiting():
            self._drop(req)
            if not req.future.done():
                self.stats.failed += 1
                req.future.set_exception(error)
