"""The life of a generation request, shared by `StaticBatcher` and `ContinuousBatcher`.

`GenerationServer` owns the event-loop side: it validates at submit (`check_prompt`, then the
batcher's own limit), queues, runs one model step at a time on one worker thread, samples
greedily, and gives every request exactly one outcome, in one place (`GenerationServer._settle`).
A subclass only decides, at each step boundary, who is in the next step (`_plan`) and what a
sequence that leaves gives back (`_leave`).

The model never runs on the event loop, so a slow step delays no timeout and never freezes the
caller's loop. A request that times out or is cancelled gets its outcome at once; the cache is
touched only between steps (here, on the loop, while the worker is idle), so its blocks go back
at the next step boundary, never mid-step.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Coroutine
from typing import Any

import torch

from labkit.batching.engine import request_error
from labkit.batching.errors import BatcherError, BatcherStoppedError, finite
from labkit.batching.lifecycle import PrivateLoop
from labkit.batching.workers import Workers
from labkit.generation.cache import PagedKVCache
from labkit.generation.model import GPT
from labkit.generation.reference import check_prompt
from labkit.generation.stats import GenerationStats, StepRecorder
from labkit.generation.step import forward_step

__all__ = ["GenerationServer", "GenRequest"]


def _greedy_step(model: GPT, kv: PagedKVCache, work: list[tuple[int, torch.Tensor]]) -> list[int]:
    """The next greedy token of each sequence of ``work``, in order, from one step.

    `forward_step` pads every sequence to the step's longest chunk, so a 200-token prompt beside
    30 decodes would push 30 x 200 rows through the model: decodes and prefill chunks go in two
    calls of the same step instead.
    """
    out = [0] * len(work)
    for group in ([i for i, (_, t) in enumerate(work) if len(t) == 1], [i for i, (_, t) in enumerate(work) if len(t) > 1]):
        if group:
            tokens = forward_step(model, kv, [work[i] for i in group]).argmax(-1).tolist()
            for i, token in zip(group, tokens, strict=True):
                out[i] = token
    return out


class GenRequest:
    """One request: its tokens so far (prompt, then what it generated) and its one future."""

    __slots__ = ("seq_id", "n_prompt", "max_new", "tokens", "future", "arrival", "deadline", "timer",
                 "first_token", "settled")

    def __init__(self, seq_id: int, prompt: torch.Tensor, max_new: int, future: asyncio.Future,
                 arrival: float, deadline: float | None) -> None:
        self.seq_id, self.n_prompt, self.max_new = seq_id, len(prompt), max_new
        self.tokens: list[int] = prompt.tolist()
        self.future, self.arrival, self.deadline = future, arrival, deadline
        self.timer: asyncio.TimerHandle | None = None
        self.first_token: float | None = None
        self.settled = False

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.n_prompt


class GenerationServer(PrivateLoop):
    """``async with b:`` / ``with b:``, `submit` / `submit_sync`, `stop` that drains, ``b.stats``."""

    kv: PagedKVCache

    def __init__(self, model: GPT, max_batch_size: int) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self._recorder = StepRecorder(max_batch_size)
        self._waiting: deque[GenRequest] = deque()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._accepting = self._stopping = False

    @property
    def stats(self) -> GenerationStats:
        return self._recorder.snapshot()


    def _limit(self, n_prompt: int, max_new: int) -> None:
        """Raise `ValueError` (saying what fits) for a request this batcher could never serve."""

    def _plan(self, now: float) -> list[tuple[GenRequest, int]]:
        """At a step boundary: release settled requests, admit, allocate; the step's (request,
        tokens to feed) pairs, empty when nothing is left to do."""
        raise NotImplementedError

    def _leave(self, req: GenRequest, finished: bool) -> None:
        """``req`` completed (``finished``) or failed after a step: it leaves the batch."""

    def _live(self) -> list[GenRequest]:
        """Requests holding cache memory (for the last-resort cleanup)."""
        raise NotImplementedError


    async def start(self) -> None:
        if self._task is not None:
            raise BatcherError(f"this {type(self).__name__} was already started; create a new one")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._workers = Workers(1, name="labkit-generation")
        self._accepting = True
        self._task = asyncio.create_task(self._serve(), name=f"{type(self).__name__}-scheduler")

    async def stop(self) -> None:
        """Stop accepting, finish every accepted request, then release the worker thread."""
        await self._drain()

    def submit(self, prompt_ids: torch.Tensor, *, max_new_tokens: int,
               timeout_ms: float | None = None) -> Coroutine[Any, Any, torch.Tensor]:
        """Queue a prompt; awaiting gives its ``(max_new_tokens,)`` new token ids (greedy).

        Raises `TypeError`/`ValueError` for a bad prompt or one this batcher cannot hold,
        `BatcherStoppedError` when not running, `TimeoutError` when ``timeout_ms`` passes before
        the last token, or the model's own exception for a step this request was in.
        """
        return self._submit(prompt_ids, max_new_tokens, timeout_ms)

    def submit_sync(self, prompt_ids: torch.Tensor, *, max_new_tokens: int,
                    timeout_ms: float | None = None) -> torch.Tensor:
        """`submit` from any thread other than the batcher's own event loop; blocks for the result."""
        return self._call_sync(lambda: self._submit(prompt_ids, max_new_tokens, timeout_ms))

    async def _submit(self, prompt_ids: torch.Tensor, max_new_tokens: int, timeout_ms: float | None) -> torch.Tensor:
        loop = self._loop
        try:
            if not self._accepting:
                state = "stopped" if self._task is not None else "not started (use `async with batcher:`)"
                raise BatcherStoppedError(f"{type(self).__name__} is {state}; request refused")
            if asyncio.get_running_loop() is not loop:
                raise RuntimeError(f"{type(self).__name__}.submit must be awaited on the loop it was "
                                   "started on; from another thread use submit_sync")
            prompt = check_prompt(self.model, prompt_ids, max_new_tokens)
            self._limit(len(prompt), max_new_tokens)
            if timeout_ms is not None:
                timeout_ms = finite("timeout_ms", timeout_ms, positive=True)
        except (TypeError, ValueError, BatcherStoppedError):
            self._recorder.counts["refused"] += 1
            raise
        now = loop.time()
        deadline = None if timeout_ms is None else now + timeout_ms / 1e3
        req = GenRequest(next(self._ids), prompt, int(max_new_tokens), loop.create_future(), now, deadline)
        if deadline is not None:
            req.timer = loop.call_at(deadline, self._expire, req, timeout_ms)
        self._waiting.append(req)
        self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            self._settle(req, None)  # its future is cancelled: counted as cancelled
            raise

    def _expire(self, req: GenRequest, timeout_ms: float) -> None:
        self._settle(req, TimeoutError(f"request did not finish within timeout_ms={timeout_ms:g} "
                                       f"({req.generated} of {req.max_new} tokens generated)"), "timed_out")

    def _settle(self, req: GenRequest, outcome: Any, counter: str = "failed") -> None:
        """The one place a request gets its outcome and is counted, exactly once: a result counts
        as completed, an exception under ``counter``, a future already done (the caller gave up)
        as cancelled. Its blocks go back at the next step boundary (`_plan`) or by `_leave`."""
        if req.settled:
            return
        req.settled = True
        if req.timer is not None:
            req.timer.cancel()
        counts, future = self._recorder.counts, req.future
        if future.done():
            counts["cancelled"] += 1
        elif isinstance(outcome, BaseException):
            counts[counter] += 1
            future.set_exception(outcome)
        else:
            counts["completed"] += 1
            future.set_result(outcome)


    def _front(self, k: int) -> list[GenRequest]:
        """Up to ``k`` live requests from the front of the queue, in order (settled ones are dropped)."""
        live: list[GenRequest] = []
        while self._waiting and len(live) < k:
            req = self._waiting.popleft()
            if not req.settled:
                live.append(req)
        self._waiting.extendleft(reversed(live))
        return live


    async def _serve(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                batch = self._plan(self._loop.time())
                if batch:
                    await self._step(batch)
                elif self._stopping:
                    return
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except BaseException as exc:  # a bug or a cancelled loop
            error = exc
            raise
        finally:  # nobody may be left waiting, no block left taken
            self._accepting = False
            self._workers.shutdown()
            stopped = BatcherStoppedError(f"{type(self).__name__} stopped unexpectedly: {error!r}")
            for req in [*self._waiting, *self._live()]:
                self._settle(req, stopped)
                self.kv.free(req.seq_id)
            self._waiting.clear()

    async def _step(self, batch: list[tuple[GenRequest, int]]) -> None:
        """One model step on the worker, then sampling, delivery and stats on the loop."""
        kv, loop = self.kv, self._loop
        held = [kv.length(req.seq_id) for req, _ in batch]
        flat = torch.tensor([t for (req, n), h in zip(batch, held, strict=True) for t in req.tokens[h:h + n]])
        work = list(zip([req.seq_id for req, _ in batch], flat.split([n for _, n in batch]), strict=True))
        done = loop.create_future()

        def compute() -> None:
            try:
                result: Any = _greedy_step(self.model, kv, work)
            except BaseException as exc:  # reaches the requests of this step, never the thread
                result = request_error(exc)
            try:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))
            except RuntimeError:  # the loop has closed: the scheduler was cancelled and cleaned up
                pass

        self._workers.put(0, compute)
        result = await done
        now = loop.time()
        rec = self._recorder
        rec.step(now, len(batch), kv.slots_reserved, kv.tokens_held, kv.sequences)
        if isinstance(result, BaseException):
            for req, _ in batch:
                self._settle(req, result)
                self._leave(req, finished=False)
            return
        for (req, _), token in zip(batch, result, strict=True):
            if req.settled or kv.length(req.seq_id) < len(req.tokens):
                continue  # ended during the step (released at the next boundary), or mid-prefill
            req.tokens.append(token)
            rec.tokens += 1
            if req.first_token is None:
                req.first_token = now
            if req.generated == req.max_new:
                rec.finished(req.arrival, req.first_token, now, req.max_new)
                self._settle(req, torch.tensor(req.tokens[req.n_prompt:]))
                self._leave(req, finished=True)
