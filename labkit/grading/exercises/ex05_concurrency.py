"""Exercise 05: concurrent predictions without blocking the event loop, and double buffering."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading.plain import describe, same, to_plain
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial, calls


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



def _predict_all_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    """The answer's coroutine on blocking models, with a 10 ms ticker on the same event loop: its
    longest pause is how long the loop could not run anything else."""

    def model(factor: float, delay: float) -> Callable[[float], float]:
        def run(x: float) -> float:
            time.sleep(delay)
            if x < 0:
                raise ValueError(f"negative input {x}")
            return x * factor
        return run

    models = {name: model(factor, delay) for name, (factor, delay) in inputs["models"].items()}
    requests = [tuple(r) for r in inputs["requests"]]
    ticks: list[float] = []

    async def main() -> Any:
        async def tick() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await answer(models, requests)
        finally:
            ticks.append(time.perf_counter())
            ticker.cancel()

    output = asyncio.run(main())
    return output, {"longest_pause_s": max((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=0.0)}



QUESTIONS = [
    Question("05.predict_all", "Several blocking models without blocking the event loop", 3, _predict_all, (
        ({"double": (2, 0.05), "triple": (3, 0.01)}, [("double", 1), ("triple", 1), ("double", 5)], [2, 3, 10],
         "return results in the order of the requests, not of completion"),
        ({f"m{i}": (1, 0.2) for i in range(4)}, [(f"m{i}", i) for i in range(4)], [0, 1, 2, 3],
         "four 0.2 s models at once", 0.6, 0.1),
        ({"m": (1, 0.01)}, [("m", 1), ("m", -1), ("m", 2)], [1, None, 2],
         "a failing request's exception takes its place; the others still succeed"),
    )),
    Question("05.issue_order", "The order of a double-buffered pipeline", 2, calls("issue_order"), (
        ((3, 2), [("load", 0), ("load", 1), ("collect", 0), ("load", 2), ("collect", 1), ("collect", 2)],
         "before batch i reuses a buffer, collect batch i - buffers; at the end collect the rest in order"),
        ((2, 1), [("load", 0), ("collect", 0), ("load", 1), ("collect", 1)], "one buffer: no overlap at all"),
        ((2, 3), [("load", 0), ("load", 1), ("collect", 0), ("collect", 1)], "more buffers than batches"),
    )),
]
PROBES = {"predict_all": _predict_all_probe}
