"""The graded questions: what each asks, its points, and its public cases.

A question's cases are plain data handed to its case builder, which makes one `Trial` each.
Instructors' hidden tests are more cases of the same form (``TESTS = {"03.split_sizes":
[((7, 1), [7], "one device takes everything")]}`` in a ``*.py`` file given to ``labkit grade
--tests``): data only, so the grader can hand the submission's process the inputs and keep the
expected values to itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from labkit.grading.plain import describe, same, to_plain, value_of
from labkit.grading.trials import Mismatch, Observation, Trial, equal

__all__ = ["Question", "QUESTIONS"]


@dataclass(frozen=True)
class Question:
    """A graded question: its cases are data, and ``build`` makes each one a `Trial`, so that
    public and hidden cases share one form and one judge."""

    id: str
    title: str
    points: float
    build: Callable[..., Trial]  # one case (plain data) -> one trial
    cases: tuple[tuple, ...]  # the public ones

    @property
    def name(self) -> str:
        """The definition the notebook must make: ``03.split_sizes`` -> ``split_sizes``."""
        return self.id.split(".", 1)[1]

    def trials(self, hidden: Iterable[Sequence[Any]] = ()) -> list[Trial]:
        """The public trials, then one per hidden case (`ValueError` for a malformed case)."""
        made = [self.build(*case) for case in self.cases]
        for number, case in enumerate(hidden, 1):
            try:
                made.append(replace(self.build(*case), hidden=True))
            except Exception as e:
                raise ValueError(f"hidden case {number} of {self.id} ({case!r}) is not of the form "
                                 f"{self.build.__doc__}: {type(e).__name__}: {e}") from None
        return made


def _show(args: Sequence[Any]) -> str:
    return "(" + ", ".join(repr(a) for a in args) + ")"


def _calls(name: str) -> Callable[..., Trial]:
    def build(args: Sequence[Any], expected: Any, hint: str = "") -> Trial:
        """(args, expected, hint)"""
        call = f"{name}{_show(args)}"
        return Trial(call, "call", {"args": to_plain(list(args))}, equal(call, expected, hint), hint)
    return build


def _gather(parts: Sequence[tuple[int, list]], expected: list, hint: str = "") -> Trial:
    """(parts as [(index, nested list)], expected nested list, hint)"""
    call = f"gather(chunks finished in the order {', '.join(str(i) for i, _ in parts)})"
    want = to_plain(expected)

    def judge(seen: Observation) -> None:
        out = seen.output
        if not (isinstance(out, dict) and out.get("$") == "torch.Tensor" and same(out.get("value"), want)):
            raise Mismatch(call, f"torch.Tensor {want!r}", describe(out), hint)

    return Trial(call, "gather", {"parts": to_plain([[i, v] for i, v in parts])}, judge, hint)


def _find_max(truth: int, limit: int, hint: str = "keep the largest n that fitted and the smallest that did not") -> Trial:
    """(truth, limit, hint): fits(n) is n <= truth"""
    if not (isinstance(truth, int) and isinstance(limit, int) and limit > 0):
        raise ValueError("truth and limit must be integers, limit > 0")
    call = f"find_max(fits = n <= {truth}, limit={limit})"
    budget = 2 * math.ceil(math.log2(limit)) + 2

    def judge(seen: Observation) -> None:
        if not same(seen.output, min(truth, limit)):
            raise Mismatch(call, repr(min(truth, limit)), describe(seen.output), hint)
        if len(seen.calls) > budget:
            raise Mismatch(f"trials for limit={limit}", f"at most {budget}", str(len(seen.calls)),
                           "halve the interval each time (or double up to the first failure)")

    return Trial(call, "find_max", {"limit": limit}, judge, hint, oracles={"fits": lambda n: value_of(n) <= truth})


def _predict_all(models: dict[str, tuple[float, float]], requests: Sequence[tuple[str, float]], expected: list,
                 hint: str = "", max_seconds: float | None = None, max_pause_s: float | None = None) -> Trial:
    """(models {name: (factor, delay_s)}, requests [(name, x)], expected (None where it raises ValueError), hint,
    max_seconds, max_pause_s)"""
    call = f"predict_all({', '.join(f'{m} {x}' for m, x in requests)})"
    want = [("ValueError(...)" if e is None else e) for e in expected]

    def judge(seen: Observation) -> None:
        out = seen.output
        ok = isinstance(out, list) and len(out) == len(expected) and all(
            (isinstance(o, dict) and o.get("$") == "exception" and "ValueError" in o.get("bases", [])) if e is None
            else same(o, e)
            for o, e in zip(out, expected, strict=False))
        if not ok:
            raise Mismatch(call, repr(want), describe(out), hint)
        if max_seconds is not None and seen.seconds > max_seconds:
            raise Mismatch(f"{call}: seconds taken", f"under {max_seconds:g}", f"{seen.seconds:.2f}",
                           "run each blocking call in a thread (asyncio.to_thread) and gather them")
        pause = seen.extra.get("longest_pause_s", math.inf)
        if max_pause_s is not None and not pause <= max_pause_s:
            raise Mismatch("longest pause of the event loop (s)", f"under {max_pause_s:g}", f"{pause:.2f}",
                           "a blocking call inside a coroutine stops the event loop")

    inputs = {"models": to_plain(dict(models)), "requests": to_plain([list(r) for r in requests])}
    return Trial(call, "predict_all", inputs, judge, hint)


QUESTIONS: dict[str, Question] = {q.id: q for q in (
    Question("01.batch_due", "How many requests leave now?", 3, _calls("batch_due"), (
        (([], 5.0, 4, 0.01), 0, "an empty queue sends nothing"),
        (([1.0, 1.001], 1.002, 4, 0.01), 0, "two requests, the oldest has waited 2 ms of 10: keep waiting"),
        (([1.0, 1.001, 1.002, 1.003, 1.004], 1.004, 4, 0.01), 4, "a full batch leaves at once, at most max_batch_size"),
        (([1.0, 1.005], 1.0101, 4, 0.01), 2, "the oldest has waited past max_wait_s: send what is there"),
        (([1.0], 1.01, 4, 0.01), 1, "waiting exactly max_wait_s is enough"),
    )),
    Question("01.next_wakeup", "When must the scheduler look again?", 2, _calls("next_wakeup"), (
        (([], 0.005), None, "nothing queued: no timer (sleep until a request arrives)"),
        (([2.0, 2.003], 0.005), 2.005, "the timer starts at the oldest request, not the newest"),
        (([7.5], 0.02), 7.52, "one request: it is due max_wait_s after it arrived"),
    )),
    Question("02.strict_select", "Strict priority, work-conserving", 2, _calls("strict_select"), (
        (([["a0", "a1"], ["b0"], ["c0", "c1"]], 4), ["a0", "a1", "b0", "c0"], "level 0 first, then 1, then 2"),
        (([[], [], ["c0", "c1", "c2"]], 2), ["c0", "c1"], "work-conserving: empty levels leave no empty slots"),
        (([["a0"], []], 3), ["a0"], "fewer waiting than slots: take them all"),
        (([["a0", "a1", "a2"], ["b0"]], 2), ["a0", "a1"], "a full batch of level 0 leaves level 1 waiting"),
    )),
    Question("02.weighted_select", "Weighted shares, work-conserving", 3, _calls("weighted_select"), (
        (([["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "a1", "a2", "b0"],
         "shares by weight: 3 of 4 slots to level 0, 1 to level 1"),
        (([["a0"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "b0", "b1", "b2"],
         "level 0 cannot use its share: give the unused slots to level 1 (work-conserving)"),
        (([[], ["b0", "b1"]], [3, 1], 4), ["b0", "b1"], "an empty level's weight does not count"),
        (([["a0", "a1"], ["b0", "b1"], ["c0", "c1"]], [1, 1, 1], 4), ["a0", "b0", "c0", "a1"],
         "equal shares of 1 each; the slot left over goes to the highest priority with items left"),
    )),
    Question("03.split_sizes", "Balanced contiguous split", 2, _calls("split_sizes"), (
        ((10, 3), [4, 3, 3], "sizes differ by at most one, larger first"),
        ((9, 3), [3, 3, 3], "even when it divides"),
        ((2, 4), [1, 1, 0, 0], "more devices than items: some get nothing"),
        ((0, 2), [0, 0], "nothing to split"),
    )),
    Question("03.gather", "Gather in input order", 2, _gather, (
        ([(2, [[5.0]]), (0, [[1.0], [2.0]]), (1, [[3.0], [4.0]])], [[1.0], [2.0], [3.0], [4.0], [5.0]],
         "sort by chunk index before concatenating: completion order is not input order"),
        ([(0, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])], [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
         "a single chunk comes back unchanged"),
    )),
    Question("04.predict_max_batch", "Predict the largest batch from two probes", 2, _calls("predict_max_batch"), (
        ((1, 1100, 2, 1200, 2000), 10, "peak = 1000 + 100 n: the largest n with peak <= budget"),
        ((4, 500, 8, 900, 2000), 19, "slope (900-500)/(8-4) = 100 per item; round down"),
        ((1, 1100, 2, 1200, 1050), 0, "a budget below the fixed part fits nothing: 0, not a negative number"),
    )),
    Question("04.find_max", "Find the largest batch in few trials", 3, _find_max, (
        (37, 1000), (1, 64), (0, 64), (5000, 4096),
    )),
    Question("05.predict_all", "Several blocking models without blocking the event loop", 3, _predict_all, (
        ({"double": (2, 0.05), "triple": (3, 0.01)}, [("double", 1), ("triple", 1), ("double", 5)], [2, 3, 10],
         "return results in the order of the requests, not of completion"),
        ({f"m{i}": (1, 0.2) for i in range(4)}, [(f"m{i}", i) for i in range(4)], [0, 1, 2, 3],
         "four 0.2 s models at once", 0.6, 0.1),
        ({"m": (1, 0.01)}, [("m", 1), ("m", -1), ("m", 2)], [1, None, 2],
         "a failing request's exception takes its place; the others still succeed"),
    )),
    Question("05.issue_order", "The order of a double-buffered pipeline", 2, _calls("issue_order"), (
        ((3, 2), [("load", 0), ("load", 1), ("collect", 0), ("load", 2), ("collect", 1), ("collect", 2)],
         "before batch i reuses a buffer, collect batch i - buffers; at the end collect the rest in order"),
        ((2, 1), [("load", 0), ("collect", 0), ("load", 1), ("collect", 1)], "one buffer: no overlap at all"),
        ((2, 3), [("load", 0), ("load", 1), ("collect", 0), ("collect", 1)], "more buffers than batches"),
    )),
)}
