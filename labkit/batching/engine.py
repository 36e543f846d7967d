"""Running one batch on the device, in a worker thread.

Each in-flight slot owns a pinned host buffer (reused, so pinning is paid once) and, on CUDA, a
stream of its own: the copy and compute of one batch overlap with those of the next. A batch
that raises is split in halves and retried until the failing request is isolated, so the good
requests still get results and only the culprit gets the model's exception. An output whose
batch dimension is not the input's is the model breaking its contract, not one bad input: every
request of that batch gets the error at once, with no retry that could hide it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

__all__ = ["BatchRunner", "INLINE_BELOW_MS", "OWN_ROWS_FROM_BYTES", "request_error"]

INLINE_BELOW_MS = 0.5
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


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a tiny CPU batch on this thread alone.

    At that size a second OpenMP thread computes nothing useful, and its spinning after each
    batch takes the core the event loop needs: on the 2-core box, a tiny MLP through the
    batcher (bench/batching.py, `batcher_cost`) cost 48-90 µs a request with it and 18-20 µs
    without, as with OMP_WAIT_POLICY=passive. Restored after the batch: other threads keep theirs.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        self._recent_ms: deque[float] = deque(maxlen=8)
        self._last_end = 0.0  # when the latest batch finished (perf_counter), for `run`'s busy time
        self._end_lock = threading.Lock()

    @property
    def proven_fast(self) -> bool:
        """Has each of the last 8 batches taken under `INLINE_BELOW_MS` on a CPU?

        Then the next batch computes on its worker thread alone (`_one_thread`). One slower
        batch ends it. (Waiting for such batches on the loop's thread, bounded, bought nothing
        measurable in bench/batching.py's `batcher_cost` and cost a lone request ~20 µs; running
        them on the loop itself let a model that turned slow freeze the caller's loop.)
        """
        recent = self._recent_ms
        return self.device.type != "cuda" and len(recent) == recent.maxlen and max(recent) < INLINE_BELOW_MS

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

    def run(self, slot: int, xs: Sequence[torch.Tensor]) -> tuple[list[Outcome], float, float]:
        """Outcomes in input order, the batch's wall time in ms (staging to results on the host),
        and its *busy* time: the wall time less the part spent while an earlier batch was still
        running (``end - max(start, previous end)``).

        With several batches in flight their wall times overlap: each includes waiting for the
        device (or the GIL) behind the others, so a cost fitted to wall times grows with the load.
        Measured on an H200 (eager ResNet-50, fp32, batches of 32): 6.2 ms a batch called
        directly, 14.5 ms wall through the batcher with 2 in flight, 30.4 ms with 4. Busy times
        add up to the time the device was working, whatever the overlap: the cost of a batch.
        """
        t0 = time.perf_counter()
        s = self.slots[slot]
        outcomes: list[Outcome] = [None] * len(xs)
        # no_grad rather than inference_mode: results are ordinary tensors a caller may modify.
        try:
            with torch.no_grad(), (torch.cuda.stream(s.stream) if s.stream else nullcontext()), \
                    (_one_thread() if self.proven_fast else nullcontext()):
                batch = s.stage(xs)  # (B, *input shape)
                self._run_isolating(batch, 0, len(xs), outcomes)
                if s.stream is not None:
                    s.stream.synchronize()
        except BaseException as exc:  # staging or the stream failed: the batch as a whole
            outcomes = [request_error(exc)] * len(xs)
        t1 = time.perf_counter()
        with self._end_lock:
            busy_ms = (t1 - max(t0, self._last_end)) * 1e3
            self._last_end = max(self._last_end, t1)
        ms = (t1 - t0) * 1e3
        self._recent_ms.append(ms)
        return outcomes, ms, busy_ms

    def _run_isolating(self, batch: torch.Tensor, lo: int, hi: int, outcomes: list[Outcome]) -> None:
        part = batch if hi - lo == len(batch) else batch[lo:hi]
        try:
            out = self.fn(part)
        except BaseException as exc:  # even SystemExit: one culprit, found by halving
            if hi - lo == 1:
                outcomes[lo] = request_error(exc)
                return
            mid = (lo + hi) // 2
            self._run_isolating(batch, lo, mid, outcomes)
            self._run_isolating(batch, mid, hi, outcomes)
            return
        try:
            outcomes[lo:hi] = self._rows(out, hi - lo)
        except (TypeError, ValueError) as exc:  # the output breaks the contract: all of them get it
            outcomes[lo:hi] = [exc] * (hi - lo)

    def _rows(self, out: Any, n: int) -> list[Any]:
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
            return list(rows)
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
