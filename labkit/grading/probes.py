"""Probes: the code that calls an answer, beside it in the submission's process.

A probe gets the answer, the inputs the grader chose (plain data) and ``oracle(name, args)``, a
line back to the grader for callbacks it must count itself; it returns what the answer gave and
what it measured there. `observe` turns any outcome, a raise or ``sys.exit`` included, into plain
data; judging happens elsewhere (labkit.grading.trials).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from typing import Any

from labkit.grading.plain import text, to_plain

__all__ = ["PROBES", "observe"]

Oracle = Callable[[str, list], Any]


def _call(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    return answer(*inputs["args"]), {}


def _gather(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    import torch  # only this probe needs it

    return answer([(index, torch.tensor(values)) for index, values in inputs["parts"]]), {}


def _find_max(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    return answer(lambda n: oracle("fits", [n]), inputs["limit"]), {}


def _predict_all(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
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


PROBES: dict[str, Callable[[Callable, Any, Oracle], tuple[Any, dict]]] = {
    "call": _call, "gather": _gather, "find_max": _find_max, "predict_all": _predict_all}


def _where(e: BaseException) -> str:
    """The submission's own line when the traceback passes through it (cells are compiled as
    ``<code cell N>``), else the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if f.filename.startswith("<code cell")]
    frame = (own or frames or [None])[-1]
    return f" (line {frame.lineno} of {frame.filename if own else frame.name})" if frame else ""


def observe(probe: str, inputs: Any, answer: Any, oracle: Oracle) -> tuple[Any, str | None, dict]:
    """(output, error, extra), all plain data; never raises."""
    try:
        output, extra = PROBES[probe](answer, inputs, oracle)
        return to_plain(output), None, to_plain(extra)
    except NotImplementedError as e:
        return None, f"not answered yet{': ' + text(e) if text(e) else ''}", {}
    except SystemExit as e:
        return None, f"the answer called sys.exit({text(e.code)}); return a value instead", {}
    except BaseException as e:  # the learner's code failing is feedback, never a crash
        return None, f"the answer raised {type(e).__name__}: {text(e)}{_where(e)}", {}
