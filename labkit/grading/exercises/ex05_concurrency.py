"""Exercise 05: concurrent predictions without blocking the event loop, a server for several models
that never calls one model from two threads at once, and double buffering."""

from __future__ import annotations

import asyncio
import math
import threading
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
    """The answer's coroutine on blocking models, beside a ticker (`_ticking`)."""

    def model(factor: float, delay: float) -> Callable[[float], float]:
        def run(x: float) -> float:
            time.sleep(delay)
            if x < 0:
                raise ValueError(f"negative input {x}")
            return x * factor
        return run

    models = {name: model(factor, delay) for name, (factor, delay) in inputs["models"].items()}
    requests = [tuple(r) for r in inputs["requests"]]
    output, pause = _ticking(lambda: answer(models, requests))
    return output, {"longest_pause_s": pause}



def _ticking(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()``'s result and the longest pause of a 10 ms ticker on the same event loop: how long
    the loop could not run anything else."""
    ticks: list[float] = []

    async def main() -> Any:
        async def tick() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            return await run()
        finally:
            ticks.append(time.perf_counter())
            ticker.cancel()

    output = asyncio.run(main())
    return output, max((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=0.0)


def _server_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    """The learner's server on blocking models that are not thread-safe (a second caller while one
    runs is recorded), all requests sent at once; outcomes in request order, as plain data."""
    overlaps: list[str] = []

    def model(name: str, factor: float, delay: float) -> Callable[[float], float]:
        busy = threading.Lock()

        def run(x: float) -> float:
            if not busy.acquire(blocking=False):
                overlaps.append(name)
                busy.acquire()
            try:
                time.sleep(delay)
                if x < 0:
                    raise ValueError(f"{name} cannot take {x}")
                return x * factor
            finally:
                busy.release()
        return run

    models = {name: model(name, *spec) for name, spec in inputs["models"].items()}

    async def run() -> list:
        server = answer(models)
        tasks = [asyncio.ensure_future(server.predict(name, x)) for name, x in inputs["requests"]]
        await asyncio.wait(tasks, timeout=10)
        return [("never answered" if not t.done() else {"raised": type(t.exception()).__name__}
                 if t.exception() is not None else t.result()) for t in tasks]

    start = time.perf_counter()
    output, pause = _ticking(run)
    return output, {"longest_pause_s": pause, "overlaps": overlaps, "seconds": time.perf_counter() - start}


def _model_server(models: dict, requests: list, hint: str = "", max_seconds: float | None = None) -> Trial:
    """(models {name: [factor, delay_s]}, requests [[name, x], ...], hint, max_seconds)"""
    call = f"ModelServer({', '.join(models)}): {len(requests)} predictions at once"
    want = []
    for name, x in requests:
        if name not in models:
            want.append({"raised": "KeyError"})
        elif x < 0:
            want.append({"raised": "ValueError"})
        else:
            want.append(x * models[name][0])

    def judge(seen: Observation) -> None:
        if not same(seen.output, want):
            raise Mismatch(call, repr(want)[:300], describe(seen.output)[:300], hint or
                           "each request its own outcome, in request order: the model's result or its exception; "
                           "an unknown model is a KeyError")
        if seen.extra.get("overlaps"):
            raise Mismatch(f"{call}: calls of one model from two threads at once", "none",
                           ", ".join(sorted(set(seen.extra["overlaps"]))),
                           "a model is not thread-safe: one asyncio.Lock per model")
        pause = seen.extra.get("longest_pause_s", math.inf)
        if not pause <= 0.05:
            raise Mismatch(f"{call}: longest pause of the event loop", "under 0.05 s", f"{pause:.2f} s",
                           "run the blocking model in a thread (asyncio.to_thread)")
        took = seen.extra.get("seconds", math.inf)
        if max_seconds is not None and not took <= max_seconds:
            raise Mismatch(f"{call}: seconds taken", f"under {max_seconds:g} (different models run at once)",
                           f"{took:.2f}", "a lock per model, not one for all of them")

    inputs = {"models": to_plain(models), "requests": to_plain(requests)}
    return Trial(call, "model_server", inputs, judge, hint)


QUESTIONS = [
    Question("05.ModelServer", "A server for several models: concurrent, never one model twice at once", 4,
             _model_server, (
        ({"a": [2.0, 0.1], "b": [3.0, 0.1], "c": [1.0, 0.1], "d": [-1.0, 0.1]},
         [[name, float(i)] for i in range(3) for name in "abcd"], "four models, three requests each", 0.6),
        ({"a": [2.0, 0.02]}, [["a", 1.0], ["nope", 1.0], ["a", -1.0], ["a", 2.0]],
         "an unknown model is a KeyError at once; a failing request does not stop the others"),
    ), minutes=25),
    Question("05.predict_all", "Several blocking models without blocking the event loop", 2, _predict_all, (
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
PROBES = {"predict_all": _predict_all_probe, "model_server": _server_probe}
