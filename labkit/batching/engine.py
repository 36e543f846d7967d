"""Running one batch on the device, in a worker thread.

Each in-flight slot owns a pinned host buffer (reused, so pinning is paid once) and, on CUDA, a
stream of its own: the copy and compute of one batch overlap with those of the next. A batch
that raises is split in halves and retried until the failing request is isolated, so the good
requests still get results and only the culprit gets the model's exception. An output whose
batch dimension is not the input's is the model breaking its contract, not one bad input: every
request of that batch gets the error at once, with no retry that could hide it.

A tiny CPU batch is collated, and its output split into rows, on the event loop's thread
(`BatchRunner.collates_here`, `Unsplit`); only the model runs on the worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["BatchRunner", "FAST_BELOW_MS", "HERE_BELOW_BYTES", "OWN_ROWS_FROM_BYTES", "Unsplit", "request_error",
           "worker_setup"]

FAST_BELOW_MS = 0.5
HERE_BELOW_BYTES = 64 << 10  # a CPU batch of inputs this small is collated on the loop (`collates_here`)
# Rows of a batch output at least this large are copied, so a kept row does not pin the whole
# batch (a 4 MB row of a batch of 64 would keep 256 MB). Below it a kept row pins at most 1 MiB
# extra, while a copy costs ~2-3 µs a row whatever its size (row_copy_cpu in
# bench/results/2026-12-02-cpu-batching.json).
OWN_ROWS_FROM_BYTES = 1 << 20

Outcome = Any  # a per-request output, or the exception that request earned


def request_error(exc: BaseException) -> Exception:
    """The exception a request gets for ``exc`` raised by the model.

    An `Exception` reaches the caller unchanged. Anything else (`SystemExit`, `KeyboardInterrupt`,
    a custom `BaseException`) and `StopIteration` (which a future refuses) is wrapped in a
    `RuntimeError`: raised from a caller's ``await``, it would escape the caller's task and stop
    its event loop, leaving the batcher's threads behind.
    """
    if isinstance(exc, Exception) and not isinstance(exc, (StopIteration, StopAsyncIteration)):
        return exc
    error = RuntimeError(f"the model raised {exc!r}")
    error.__cause__ = exc
    return error


def worker_setup() -> None:
    """Once on each worker thread, before its first batch: no autograd there (grad mode is per
    thread). Set once rather than a ``torch.no_grad()`` block per batch, which costs about as much
    as a tiny model's whole batch of bookkeeping. ``no_grad`` rather than ``inference_mode``:
    results are ordinary tensors a caller may modify."""
    torch.set_grad_enabled(False)


class _Slot:
    def __init__(self, device: torch.device, capacity: int) -> None:
        self.device = device
        self.capacity = capacity
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.host: torch.Tensor | None = None

    def stage(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Collate ``xs`` into one batch on the device."""
        if self.stream is None:
            return torch.stack(xs)  # a fresh tensor: outputs may alias inputs (an identity model)
        n, shape, dtype = len(xs), xs[0].shape, xs[0].dtype
        if self.host is None or self.host.shape[1:] != shape or self.host.dtype != dtype or self.host.shape[0] < n:
            # Sized for a full batch at once: pinning is slow, and growing batch by batch would
            # pay it again for each new size while the first requests wait.
            self.host = torch.empty((max(n, self.capacity), *shape), dtype=dtype, pin_memory=True)
        torch.stack(xs, out=self.host[:n])
        # The copy is queued on this slot's stream, so it overlaps another slot's compute. The
        # host buffer is reused only after this slot's stream is synchronised (end of `run`).
        return self.host[:n].to(self.device, non_blocking=True)


class Unsplit:
    """A whole batch's output, handed back unsplit: the event loop splits it into its requests'
    rows (`rows`), beside the callers who use them (`BatchRunner.collates_here`)."""

    __slots__ = ("runner", "out", "n")

    def __init__(self, runner: BatchRunner, out: torch.Tensor, n: int) -> None:
        self.runner, self.out, self.n = runner, out, n

    def rows(self) -> Sequence[Outcome]:
        return self.runner.rows(self.out, self.n)


class BatchRunner:
    """Runs ``fn`` on batches, one worker thread and one slot per batch in flight."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], Any],
        device: torch.device,
        slots: int,
        *,
        results_on_device: bool = False,
        capacity: int = 1,
    ) -> None:
        """``capacity``: the batch size host buffers are first made for (they grow if needed)."""
        self.fn = fn
        self.device = device
        self.results_on_device = results_on_device
        self.slots = [_Slot(device, capacity) for _ in range(slots)]
        self._on_cpu = device.type != "cuda"
        self._recent_cpu_ms: deque[float] = deque(maxlen=8)
        self._last_end = 0.0  # when the latest batch finished (perf_counter), for `run`'s busy time
        self._end_lock = threading.Lock()

    @property
    def proven_fast(self) -> bool:
        """Is the median of the last 8 batches' CPU time on their worker thread under
        `FAST_BELOW_MS`, on a CPU?

        Then the next batch computes with one OpenMP thread. At that size a second one computes
        nothing useful, and its spinning after each batch takes the core the event loop needs: on
        the 2-core box a tiny MLP through the batcher (bench/batching.py, `batcher_cost`) cost
        48-90 µs a request with it, 18-20 µs without, as with OMP_WAIT_POLICY=passive. CPU time,
        not wall time, and the median, not every batch: a tiny batch's wall time includes its
        waits for the GIL while the loop settles the previous one, and there a third of them had
        looked slow (with a rule of "each of the last 8"), each sending the next 8 batches to two
        OpenMP threads. A model that turns slow gets its threads back after 5 slow batches.
        Other threads keep their thread count.
        """
        recent = self._recent_cpu_ms
        return self._on_cpu and len(recent) == recent.maxlen and sorted(recent)[recent.maxlen // 2] < FAST_BELOW_MS

    @property
    def threads(self) -> int:
        """Worker threads to run batches on.

        On a GPU, one per slot: each thread queues its batch's kernels on its own stream while
        the GPU works through the others'. On a CPU, one: the model already uses every core, and
        a second thread brings a second OpenMP thread team whose spinning workers steal those
        cores (measured on 2 cores: 4,250 requests/s with two threads, 6,100 with one). Further
        in-flight batches wait, collated, in that thread's queue.
        """
        return len(self.slots) if self.device.type == "cuda" else 1

    def collates_here(self, x: torch.Tensor, n: int) -> bool:
        """Should the event loop collate a batch of ``n`` inputs like ``x`` (``torch.stack``) and
        split its output, leaving only the model to the worker? On a CPU, when the batch is
        under `HERE_BELOW_BYTES`: its inputs were just made on the loop's core and its rows are
        about to be used there, and a worker on the other core pays cache misses on every one
        of those small objects. Measured on the 2-core box (bench/batching.py, `batcher_cost`,
        interleaved rounds): 6-10% more requests/s for the tiny MLP. A larger batch stays off the
        loop (its copy takes time), and on a GPU staging goes through the slot's pinned buffer
        and stream.
        """
        return self._on_cpu and n * x.nbytes < HERE_BELOW_BYTES

    def run(self, slot: int, inputs: Sequence[torch.Tensor] | torch.Tensor) -> tuple[list[Outcome] | Unsplit, float, float]:
        """``inputs``: one tensor per request, or the batch already collated (B, *input shape),
        as `collates_here` has the loop do; then a whole batch that computes comes back as
        `Unsplit`, for the loop to split.

        Returns the outcomes in input order, the batch's wall time in ms (staging to results on the host),
        and its *busy* time: the wall time less the part spent while an earlier batch was still
        running (``end - max(start, previous end)``).

        With several batches in flight their wall times overlap: each includes waiting for the
        device (or the GIL) behind the others, so a cost fitted to wall times grows with the load.
        Measured on an H200 (eager ResNet-50, fp32, batches of 32): 6.2 ms a batch called
        directly, 14.5 ms wall through the batcher with 2 in flight, 30.4 ms with 4. Busy times
        add up to the time the device was working, whatever the overlap: the cost of a batch.
        """
        t0, cpu0 = time.perf_counter(), time.thread_time()
        s = self.slots[slot]
        n = len(inputs)
        outcomes: list[Outcome] | Unsplit = [None] * n
        threads = torch.get_num_threads() if self.proven_fast else 0
        try:
            if threads:
                torch.set_num_threads(1)
            if isinstance(inputs, torch.Tensor):
                outcomes = self._run_isolating(inputs, 0, n, outcomes, whole=True) or outcomes
            elif s.stream is None:
                self._run_isolating(s.stage(inputs), 0, n, outcomes)  # stage: (B, *input shape)
            else:
                with torch.cuda.stream(s.stream):
                    self._run_isolating(s.stage(inputs), 0, n, outcomes)
                    s.stream.synchronize()
        except BaseException as exc:  # staging or the stream failed: the batch as a whole
            outcomes = [request_error(exc)] * n
        finally:
            if threads:
                torch.set_num_threads(threads)
        t1 = time.perf_counter()
        with self._end_lock:
            busy_ms = (t1 - max(t0, self._last_end)) * 1e3
            self._last_end = max(self._last_end, t1)
        cpu_ms = (time.thread_time() - cpu0) * 1e3  # not the wall time: that counts waits for the GIL
        self._recent_cpu_ms.append(cpu_ms)
        return outcomes, (t1 - t0) * 1e3, busy_ms

    def _run_isolating(self, batch: torch.Tensor, lo: int, hi: int, outcomes: list[Outcome],
                       whole: bool = False) -> Unsplit | None:
        """Fill ``outcomes[lo:hi]``, halving the range until a raising request is alone; with
        ``whole``, a small CPU output of the whole batch comes back `Unsplit` instead."""
        part = batch if hi - lo == len(batch) else batch[lo:hi]
        try:
            out = self.fn(part)
        except BaseException as exc:  # even SystemExit: one culprit, found by halving
            if hi - lo == 1:
                outcomes[lo] = request_error(exc)
                return None
            mid = (lo + hi) // 2
            self._run_isolating(batch, lo, mid, outcomes)
            self._run_isolating(batch, mid, hi, outcomes)
            return None
        if whole and type(out) is torch.Tensor and out.is_cpu and out.nbytes < OWN_ROWS_FROM_BYTES:
            return Unsplit(self, out, hi - lo)
        outcomes[lo:hi] = self.rows(out, hi - lo)
        return None

    def rows(self, out: Any, n: int) -> Sequence[Outcome]:
        """``out`` split into ``n`` rows, or, when it breaks the contract, that error for each."""
        try:
            return self._rows(out, n)
        except (TypeError, ValueError) as exc:
            return [exc] * n

    def _rows(self, out: Any, n: int) -> Sequence[Any]:
        """Split a batched output (a tensor, or a tuple/dict of them) into ``n`` rows.

        A list is refused: a list of per-row outputs (``[f(row) for row in x]``) cannot be told
        from a list of batched outputs when a row has ``n`` elements, and read as columns it
        would come back silently transposed.
        """
        if isinstance(out, torch.Tensor):
            if out.dim() == 0 or out.shape[0] != n:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for a batch of {n}; "
                                 f"expected the batch dimension first, of size {n}")
            out = self._deliver(out)  # (B, ...)
            rows = out.unbind(0)
            if out.nbytes >= OWN_ROWS_FROM_BYTES:
                return [row.clone() for row in rows]
            return rows
        if isinstance(out, Mapping):
            columns = {k: self._rows(v, n) for k, v in out.items()}
            return [{k: col[i] for k, col in columns.items()} for i in range(n)]
        if isinstance(out, tuple):
            columns = [self._rows(v, n) for v in out]
            rows = [[col[i] for col in columns] for i in range(n)]
            if hasattr(out, "_fields"):  # a named tuple takes its fields as arguments
                return [type(out)(*row) for row in rows]
            return [type(out)(row) for row in rows]
        if isinstance(out, list):
            raise TypeError(f"the model returned a list of {len(out)} for a batch of {n}; return one tensor "
                            "with the batch dimension first (torch.stack the rows), or a tuple or dict of them")
        raise TypeError(f"the model returned {type(out).__name__}; expected a tensor, or a tuple/dict of tensors")

    def _deliver(self, out: torch.Tensor) -> torch.Tensor:
        if out.requires_grad:  # a fn that enabled grad itself
            out = out.detach()
        if not self.results_on_device:
            return out if out.is_cpu else out.to("cpu")
        if out.device.type == "cuda":
            # Callers use the rows on the default stream; tell the allocator, so this memory is
            # not handed to the next batch on the slot's stream while callers still read it.
            out.record_stream(torch.cuda.default_stream(out.device))
        return out
