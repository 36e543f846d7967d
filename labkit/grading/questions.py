"""The graded questions: what each asks, its points, and its public tests.

A test is a function ``test(answer) -> None`` that raises `Mismatch` (what went in, what was
expected, what came back, a hint) when the answer is wrong. Hidden tests, kept by instructors
outside the students' copies, have the same form (see `labkit.grading.grade`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Mismatch", "Question", "QUESTIONS", "expect"]


class Mismatch(AssertionError):
    """A wrong answer, with everything the learner needs to see why."""

    def __init__(self, call: str, expected: Any, got: Any, hint: str = "") -> None:
        self.call, self.expected, self.got, self.hint = call, expected, got, hint
        super().__init__(f"{call}: expected {expected!r}, got {got!r}" + (f". Hint: {hint}" if hint else ""))


Test = Callable[[Callable[..., Any]], None]


@dataclass(frozen=True)
class Question:
    id: str
    title: str
    points: float
    tests: tuple[Test, ...]


def expect(fn: Callable[..., Any], args: tuple, expected: Any, hint: str = "", *, name: str | None = None) -> None:
    """Call ``fn(*args)`` and raise `Mismatch` unless it returns ``expected``."""
    call = f"{name or getattr(fn, '__name__', 'answer')}{_show(args)}"
    got = fn(*args)
    if got != expected:
        raise Mismatch(call, expected, got, hint)


def _show(args: tuple) -> str:
    return "(" + ", ".join(repr(a) for a in args) + ")"


def _cases(*cases: tuple[tuple, Any, str]) -> tuple[Test, ...]:
    # `expect` bound now: a submission that rebinds the module's name later changes nothing here
    return tuple((lambda fn, a=a, e=e, h=h, check=expect: check(fn, a, e, h)) for a, e, h in cases)


# -- 01 dynamic batching ------------------------------------------------------------------------

_Q01_DUE = _cases(
    (([], 5.0, 4, 0.01), 0, "an empty queue sends nothing"),
    (([1.0, 1.001], 1.002, 4, 0.01), 0, "two requests, the oldest has waited 2 ms of 10: keep waiting"),
    (([1.0, 1.001, 1.002, 1.003, 1.004], 1.004, 4, 0.01), 4, "a full batch leaves at once, at most max_batch_size"),
    (([1.0, 1.005], 1.0101, 4, 0.01), 2, "the oldest has waited past max_wait_s: send what is there"),
    (([1.0], 1.01, 4, 0.01), 1, "waiting exactly max_wait_s is enough"),
)

_Q01_WAKE = _cases(
    (([], 0.005), None, "nothing queued: no timer (sleep until a request arrives)"),
    (([2.0, 2.003], 0.005), 2.005, "the timer starts at the oldest request, not the newest"),
    (([7.5], 0.02), 7.52, "one request: it is due max_wait_s after it arrived"),
)


# -- 02 priority ----------------------------------------------------------------------------------

_Q02_STRICT = _cases(
    (([["a0", "a1"], ["b0"], ["c0", "c1"]], 4), ["a0", "a1", "b0", "c0"], "level 0 first, then 1, then 2"),
    (([[], [], ["c0", "c1", "c2"]], 2), ["c0", "c1"], "work-conserving: empty levels leave no empty slots"),
    (([["a0"], []], 3), ["a0"], "fewer waiting than slots: take them all"),
    (([["a0", "a1", "a2"], ["b0"]], 2), ["a0", "a1"], "a full batch of level 0 leaves level 1 waiting"),
)

_Q02_WEIGHTED = _cases(
    (([["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "a1", "a2", "b0"],
     "shares by weight: 3 of 4 slots to level 0, 1 to level 1"),
    (([["a0"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "b0", "b1", "b2"],
     "level 0 cannot use its share: give the unused slots to level 1 (work-conserving)"),
    (([[], ["b0", "b1"]], [3, 1], 4), ["b0", "b1"], "an empty level's weight does not count"),
    (([["a0", "a1"], ["b0", "b1"], ["c0", "c1"]], [1, 1, 1], 4), ["a0", "b0", "c0", "a1"],
     "equal shares of 1 each; the slot left over goes to the highest priority with items left"),
)


# -- 03 data parallel -----------------------------------------------------------------------------

_Q03_SPLIT = _cases(
    ((10, 3), [4, 3, 3], "sizes differ by at most one, larger first"),
    ((9, 3), [3, 3, 3], "even when it divides"),
    ((2, 4), [1, 1, 0, 0], "more devices than items: some get nothing"),
    ((0, 2), [0, 0], "nothing to split"),
)


def _gather_tests() -> tuple[Test, ...]:
    def in_order(fn):
        import torch  # here, not at the top: only this exercise needs it

        parts = [(2, torch.tensor([[5.0]])), (0, torch.tensor([[1.0], [2.0]])), (1, torch.tensor([[3.0], [4.0]]))]
        got = fn(parts)
        expected = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
        if not isinstance(got, torch.Tensor) or not torch.equal(got, expected):
            raise Mismatch("gather(chunks finished in the order 2, 0, 1)", expected.flatten().tolist(),
                           got.flatten().tolist() if isinstance(got, torch.Tensor) else got,
                           "sort by chunk index before concatenating: completion order is not input order")

    def one_part(fn):
        import torch

        x = torch.arange(6.0).reshape(3, 2)
        got = fn([(0, x)])
        if not isinstance(got, torch.Tensor) or not torch.equal(got, x):
            raise Mismatch("gather([(0, x)])", x.tolist(), got, "a single chunk comes back unchanged")

    return in_order, one_part


# -- 04 memory ------------------------------------------------------------------------------------

_Q04_PREDICT = _cases(
    ((1, 1100, 2, 1200, 2000), 10, "peak = 1000 + 100 n: the largest n with peak <= budget"),
    ((4, 500, 8, 900, 2000), 19, "slope (900-500)/(8-4) = 100 per item; round down"),
    ((1, 1100, 2, 1200, 1050), 0, "a budget below the fixed part fits nothing: 0, not a negative number"),
)


def _find_max_tests() -> tuple[Test, ...]:
    def case(truth: int, limit: int):
        def test(fn):
            calls: list[int] = []

            def fits(n: int) -> bool:
                calls.append(n)
                return n <= truth

            got = fn(fits, limit)
            if got != min(truth, limit):
                raise Mismatch(f"find_max(fits = n <= {truth}, limit={limit})", min(truth, limit), got,
                               "keep the largest n that fitted and the smallest that did not")
            budget = 2 * math.ceil(math.log2(limit)) + 2
            if len(calls) > budget:
                raise Mismatch(f"trials for limit={limit}", f"at most {budget}", len(calls),
                               "halve the interval each time (or double up to the first failure)")
        return test

    return case(37, 1000), case(1, 64), case(0, 64), case(5000, 4096)


# -- 05 concurrency -------------------------------------------------------------------------------


def _concurrent_tests() -> tuple[Test, ...]:
    def slow(factor: float, delay: float = 0.2):
        def model(x):
            time.sleep(delay)
            if x < 0:
                raise ValueError(f"negative input {x}")
            return x * factor
        return model

    def results_in_order(fn):
        models = {"double": slow(2, 0.05), "triple": slow(3, 0.01)}
        got = asyncio.run(fn(models, [("double", 1), ("triple", 1), ("double", 5)]))
        if got != [2, 3, 10]:
            raise Mismatch("predict_all(double 1, triple 1, double 5)", [2, 3, 10], got,
                           "return results in the order of the requests, not of completion")

    def concurrent_and_loop_free(fn):
        ticks = []

        async def main():
            stop = threading.Event()

            async def tick():
                while not stop.is_set():
                    ticks.append(time.perf_counter())
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            t0 = time.perf_counter()
            await fn({f"m{i}": slow(1) for i in range(4)}, [(f"m{i}", i) for i in range(4)])
            elapsed = time.perf_counter() - t0
            stop.set()
            await ticker
            return elapsed

        elapsed = asyncio.run(main())
        if elapsed > 0.6:
            raise Mismatch("four 0.2 s models at once: seconds taken", "under 0.6", round(elapsed, 2),
                           "run each blocking call in a thread (asyncio.to_thread) and gather them")
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        if not gaps or max(gaps) > 0.1:
            raise Mismatch("longest pause of the event loop (s)", "under 0.1", round(max(gaps, default=9), 2),
                           "a blocking call inside a coroutine stops the event loop")

    def errors_in_place(fn):
        got = asyncio.run(fn({"m": slow(1, 0.01)}, [("m", 1), ("m", -1), ("m", 2)]))
        ok = isinstance(got, list) and len(got) == 3 and got[0] == 1 and got[2] == 2 and isinstance(got[1], ValueError)
        if not ok:
            raise Mismatch("predict_all(m 1, m -1, m 2)", "[1, ValueError(...), 2]", got,
                           "a failing request's exception takes its place; the others still succeed")

    return results_in_order, concurrent_and_loop_free, errors_in_place


_Q05_ORDER = _cases(
    ((3, 2), [("load", 0), ("load", 1), ("collect", 0), ("load", 2), ("collect", 1), ("collect", 2)],
     "before batch i reuses a buffer, collect batch i - buffers; at the end collect the rest in order"),
    ((2, 1), [("load", 0), ("collect", 0), ("load", 1), ("collect", 1)], "one buffer: no overlap at all"),
    ((2, 3), [("load", 0), ("load", 1), ("collect", 0), ("collect", 1)], "more buffers than batches"),
)


QUESTIONS: dict[str, Question] = {q.id: q for q in (
    Question("01.batch_due", "How many requests leave now?", 3, _Q01_DUE),
    Question("01.next_wakeup", "When must the scheduler look again?", 2, _Q01_WAKE),
    Question("02.strict_select", "Strict priority, work-conserving", 2, _Q02_STRICT),
    Question("02.weighted_select", "Weighted shares, work-conserving", 3, _Q02_WEIGHTED),
    Question("03.split_sizes", "Balanced contiguous split", 2, _Q03_SPLIT),
    Question("03.gather", "Gather in input order", 2, _gather_tests()),
    Question("04.predict_max_batch", "Predict the largest batch from two probes", 2, _Q04_PREDICT),
    Question("04.find_max", "Find the largest batch in few trials", 3, _find_max_tests()),
    Question("05.predict_all", "Several blocking models without blocking the event loop", 3, _concurrent_tests()),
    Question("05.issue_order", "The order of a double-buffered pipeline", 2, _Q05_ORDER),
)}
