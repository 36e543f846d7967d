"""The life of a request in a batcher: admission, waiting, dispatch, one outcome.

`Batcher` owns the event-loop side: it validates and queues requests, decides when a batch
leaves (full, or its oldest request has waited ``max_wait_ms``), keeps up to ``max_inflight``
batches running in worker threads (`BatchRunner`), and gives every request exactly one outcome,
in one place (`Batcher._settle_all`). The scheduler sleeps until woken when there is nothing to do:
an idle batcher uses no CPU. Subclasses pass the queue in (`RequestQueue`) and may steer each
batch's size.

Slots beyond the feed depth are for full batches only. On a GPU the depth is `FEED_DEPTH`: two
batches in flight (one computing, the next staged) keep the device busy; a partial batch sent
behind them would only wait in the device's queue, at nearly the cost of a full one (launch
overhead, padding to a captured size), so it keeps filling until a batch finishes. Measured on
an H200 (ResNet-50, CUDA graphs, 4 in flight, Poisson load at 70% of capacity;
bench/results/2026-11-27-h200.json): without this rule batches of ~21 each cost a full batch's
time, the device saturated and p99 reached 154 ms. On a CPU batches compute one at a time on
one thread (`engine.BatchRunner.threads`), so the depth is one: a partial batch sent behind a
computing one would start no sooner, only smaller, than if it kept filling in the queue.

The model never runs on the event loop, not even a tiny one: a slow or hung model cannot delay
a timeout or freeze the caller's loop. What running tiny CPU batches inline used to buy is now
bought around the model: the loop collates a small CPU batch and splits its output, next to the
callers whose inputs and rows those are (`engine.BatchRunner.collates_here`), and the worker
computes it with one OpenMP thread (`engine.BatchRunner.proven_fast`). A request's timeout
holds until its batch starts computing, including while the batch waits behind another in the
worker's queue (`queues.InFlight`).
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import torch
from torch import nn

from labkit.batching.engine import BatchRunner, Unsplit, request_error, worker_setup
from labkit.batching.errors import BatcherError, BatcherStoppedError, QueueFullError, finite
from labkit.batching.lifecycle import PrivateLoop
from labkit.batching.queues import QUEUED, InFlight, Request, RequestQueue
from labkit.batching.signature import Signature
from labkit.batching.stats import BatcherStats
from labkit.batching.wakeup import Wakeup
from labkit.batching.workers import Workers
from labkit.device import device_of
from labkit.models import InputSpec, input_spec_of

__all__ = ["Batcher", "FEED_DEPTH"]

FEED_DEPTH = 2


class Batcher(PrivateLoop):
    """Shared machinery of `DynamicBatcher`, `AdaptiveBatcher` and `PriorityBatcher`.

    Inputs: one CPU tensor per request, all of one shape and dtype (the *signature*). It comes
    from ``input_spec=``, else the model's ``input_spec`` (labkit models have one), else the
    first request. Other shapes are refused at `submit` with a `ValueError`, not bucketed: one
    batcher serves one signature, so run one batcher per input shape.

    ``freeze_gc=True`` (the default): `start` runs a full garbage collection and then
    ``gc.freeze()``, moving every object alive then (torch, the model, the notebook) out of the
    collector's reach. Otherwise a full collection, whenever allocations trigger one, walks all
    of them with the loop stopped: on the 2-core CPU box, with torch imported, one took 143 ms
    mid-run and became the p99 of the adaptive batcher's test at 70% load. Frozen objects are
    never collected, so pass ``freeze_gc=False`` in a process that keeps creating and dropping
    large object graphs. Put a launch-bound model behind `labkit.graphs.GraphRunner`.
    """

    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        queue: RequestQueue,
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
        self._signature = Signature(input_spec)
        self.results_on_device = results_on_device
        self.freeze_gc = freeze_gc
        self.stats = BatcherStats()
        self._queue = queue
        self._admits = type(self)._admit is not Batcher._admit  # skip the call when nobody refuses
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._stopping = False

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
        self._max_wait_ms = finite("max_wait_ms", value)
        self._poke()

    @property
    def input_spec(self) -> InputSpec | None:
        """The one input signature this batcher accepts (None until the first request fixes it)."""
        return self._signature.spec

    # -- subclass hooks ------------------------------------------------------------------------

    def _plan(self) -> tuple[int, float]:
        """(batch cap, wait in seconds) for the next batch; reads state, never changes it."""
        return self._max_batch_size, self._max_wait_ms / 1e3

    def _admit(self, req: Request) -> None:
        """Raise to refuse ``req`` at submit (after validation, before queueing)."""

    def _screen(self, batch: list[Request], now: float) -> list[Request]:
        """Last look before compute; requests removed here must have been `_settle`d."""
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
        self._wake = Wakeup(self._loop)
        self._free_slots = list(range(self.max_inflight))
        self._runner = BatchRunner(self.fn, self.device, self.max_inflight, results_on_device=self.results_on_device,
                                   capacity=self._max_batch_size)
        self._workers = Workers(self._runner.threads, setup=worker_setup)
        self._feed_depth = min(FEED_DEPTH, self._runner.threads)  # see the module docstring
        self._running = 0  # batches dispatched and not yet finished
        self._cap = self._max_batch_size
        self._accepting = True
        self._task = asyncio.create_task(self._serve(), name=f"{type(self).__name__}-scheduler")

    async def stop(self) -> None:
        """Stop accepting, finish every accepted request, then release the worker threads."""
        await self._drain()

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, x: torch.Tensor, *, timeout_ms: float | None = None) -> Coroutine[Any, Any, Any]:
        """Queue ``x`` (one input, no batch dimension); awaiting gives its output row.

        (A plain method returning the coroutine, so ``await batcher.submit(x)`` costs one
        coroutine, not two: at tens of thousands of requests a second, that shows.)

        Raises `ValueError` for an input that does not match the signature or a bad
        ``timeout_ms``, `QueueFullError` when the queue is full, `BatcherStoppedError` when not
        running, `TimeoutError` when ``timeout_ms`` passes before its batch starts computing
        (once computing, it finishes), or the model's own exception for this input.
        """
        return self._submit(x, timeout_ms, 0)

    def submit_sync(self, x: torch.Tensor, *, timeout_ms: float | None = None) -> Any:
        """`submit` from any thread other than the batcher's own event loop; blocks for the result."""
        return self._call_sync(lambda: self._submit(x, timeout_ms, 0))

    async def _submit(self, x: torch.Tensor, timeout_ms: float | None, priority: int) -> Any:
        """Every request passes here, so it is written for speed: the common case (a matching
        CPU tensor, no range to check, no admission rule) costs one comparison chain."""
        loop = self._loop
        if not self._accepting or asyncio.get_running_loop() is not loop:
            raise self._refusal()
        sig = self._signature
        if not (type(x) is torch.Tensor and x.dtype is sig.dtype and x.shape == sig.shape and x.is_cpu
                and sig.high is None):
            self._validate(x)
        now = loop.time()
        deadline = None if timeout_ms is None else now + finite("timeout_ms", timeout_ms, positive=True) / 1e3
        req = Request(x, loop.create_future(), now, deadline, priority)
        try:
            if self._admits:
                self._admit(req)
                waiting = 0 if req.future.done() else self._queue.push(req)  # done: settled at admission
            else:
                waiting = self._queue.push(req)
        except QueueFullError:
            self.stats.rejected += 1
            raise
        self.stats.submitted += 1
        if deadline is not None and waiting:
            req.timer = loop.call_at(deadline, self._expire, req)
        if waiting == 1 or waiting == self._cap:  # the queue was empty, or a batch just filled: look again
            self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            if req.state == QUEUED:
                self._queue.discard(req)
                self._settle(req, None)  # counted as cancelled: its future is
            raise

    def _refusal(self) -> Exception:
        """Why `submit` refuses a request that is not the input's fault."""
        if not self._accepting:
            state = "stopped" if self._task is not None else "not started (use `async with batcher:` or `await batcher.start()`)"
            return BatcherStoppedError(f"{type(self).__name__} is {state}; request refused")
        return RuntimeError(f"{type(self).__name__}.submit must be awaited on the event loop it was started on; "
                            "from another thread or loop use submit_sync")

    def _validate(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            self.stats.invalid += 1
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        problem = self._signature.problem(x)
        if problem is not None:
            self.stats.invalid += 1
            raise ValueError(f"{type(self).__name__}: expected one input of {problem} (no batch dimension)")

    def _expire(self, req: Request) -> None:
        """``req``'s deadline: a timeout, unless its batch is already computing."""
        if req.state == QUEUED:
            self._queue.discard(req)
        elif req.batch is None or not req.batch.expire(req):
            return
        timeout_ms = (req.deadline - req.arrival) * 1e3
        self._settle(req, TimeoutError(f"request not computing within timeout_ms={timeout_ms:g}"), "timed_out")

    def _settle(self, req: Request, outcome: Any, counter: str = "failed") -> None:
        """One request's outcome (`_settle_all`)."""
        self._settle_all((req,), (outcome,), counter)

    def _settle_all(self, reqs: Sequence[Request], outcomes: Sequence[Any], counter: str = "failed") -> None:
        """The one place requests get their outcomes and are counted, each exactly once.

        A result counts as completed; an exception under ``counter`` (failed, timed_out, shed);
        a request whose caller already gave up (its future is done) as cancelled. A whole batch
        passes in one call: per request, this loop is all the bookkeeping there is.
        """
        completed = cancelled = raised = 0
        for req, outcome in zip(reqs, outcomes, strict=True):
            if req.timer is not None:
                req.timer.cancel()
            future = req.future
            if future.done():
                cancelled += 1
            elif isinstance(outcome, BaseException):
                raised += 1
                future.set_exception(outcome)
            else:
                completed += 1
                future.set_result(outcome)
        stats = self.stats
        stats.completed += completed
        stats.cancelled += cancelled
        if raised:
            setattr(stats, counter, getattr(stats, counter) + raised)

    def _poke(self) -> None:
        task, loop = getattr(self, "_task", None), getattr(self, "_loop", None)
        if task is not None and not task.done() and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- the scheduler ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                self._dispatch(batch)
            while self._running:
                await self._wake.sleep()
        except BaseException as exc:  # a bug or a cancelled loop: nobody may be left waiting
            self._accepting = False
            error = BatcherStoppedError(f"{type(self).__name__} stopped unexpectedly: {exc!r}")
            for req in self._queue.waiting():
                self._queue.discard(req)
                self._settle(req, error)
            raise
        finally:
            self._accepting = False
            self._workers.shutdown()

    async def _next_batch(self) -> list[Request] | None:
        """Wait until a slot is free and a batch is due, then take it (None: stopping, nothing left)."""
        loop, queue = self._loop, self._queue
        while True:
            if not len(queue):
                if self._stopping:
                    return None
                await self._wake.sleep()
                continue
            if not self._free_slots:
                await self._wake.sleep()
                continue
            cap, wait_s = self._plan()
            cap = self._cap = max(1, cap)
            due = queue.oldest_arrival() + wait_s
            now = loop.time()
            fed = self._running >= self._feed_depth
            if len(queue) >= cap or self._stopping or (now >= due and not fed):
                batch = self._screen(self._take(cap, now), now)
                if batch:
                    return batch
                continue
            await self._wake.sleep(None if now >= due else due)

    def _take(self, cap: int, now: float) -> list[Request]:
        """Up to ``cap`` requests for a batch; cancelled or expired ones are settled here."""
        batch: list[Request] = []
        queue = self._queue
        while len(batch) < cap and len(queue):
            for req in queue.take(cap - len(batch), now):
                if req.future.done():  # cancelled by its caller, whose handler has not run yet
                    self._settle(req, None)
                elif req.deadline is not None and req.deadline <= now:  # its timer is due, not yet run
                    self._settle(req, TimeoutError("request not computing within its timeout_ms"), "timed_out")
                else:
                    batch.append(req)
        return batch

    def _dispatch(self, reqs: list[Request]) -> None:
        batch = InFlight(reqs, self._free_slots.pop(), self._loop.time())
        timed = [req for req in reqs if req.timer is not None]
        for req in timed:  # it may still time out while the batch waits for a worker
            req.batch = batch
        batch.timed = bool(timed)
        if self._runner.collates_here(reqs[0].x, len(reqs)):
            batch.collated = torch.stack([req.x for req in reqs])  # (B, *input shape)
        self._running += 1
        self._workers.put(batch.slot, lambda: self._compute(batch))

    def _compute(self, batch: InFlight) -> None:
        """On a worker: run the requests still live; give the loop them, their outcomes, and the
        batch's wall and busy ms."""
        live = batch.claim()
        # collated on the loop, unless a request left while the batch waited (collate the rest)
        inputs = batch.collated if batch.collated is not None and len(live) == len(batch.reqs) else [r.x for r in live]
        try:
            result = (live, *self._runner.run(batch.slot, inputs)) if live else (live, [], math.nan, math.nan)
        except BaseException as exc:  # BatchRunner.run catches the model's; this is a last guard
            result = (live, [request_error(exc)] * len(live), math.nan, math.nan)
        batch.result = result
        self._loop.call_soon_threadsafe(self._finish, batch)

    def _finish(self, batch: InFlight) -> None:
        self._running -= 1
        self._free_slots.append(batch.slot)
        self._wake.set()  # a partial batch held back by the feed depth may leave now
        live, outcomes, batch_ms, busy_ms = batch.result
        if not live:
            return
        if isinstance(outcomes, Unsplit):  # a tiny CPU batch's output: split here, beside its callers
            outcomes = outcomes.rows()
        stats = self.stats
        stats.batches += 1
        stats.batch_sizes[len(live)] += 1
        stats.batch_ms.append(batch_ms)
        taken = batch.taken
        stats.queue_wait_ms.extend([(taken - req.arrival) * 1e3 for req in live])
        try:
            self._settle_all(live, outcomes)
        finally:
            self._on_batch_done(live, busy_ms)
