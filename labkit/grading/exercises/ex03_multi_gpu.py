"""Exercise 03: a balanced split across devices, a gather in input order, and a pipeline of stages
whose speed-up over running them one after another is measured by the grader."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading import trials
from labkit.grading.plain import describe, same, to_plain
from labkit.grading.trials import Question, Trial, calls, speed_credit


def _gather(parts: Sequence[tuple[int, list]], expected: list, hint: str = "") -> Trial:
    """(parts as [(index, nested list)], expected nested list, hint)"""
    call = f"gather(chunks finished in the order {', '.join(str(i) for i, _ in parts)})"
    want = to_plain(expected)

    def judge(seen: trials.Observation) -> None:
        out = seen.output
        if not (isinstance(out, dict) and out.get("$") == "torch.Tensor" and same(out.get("value"), want)):
            raise trials.Mismatch(call, f"torch.Tensor {want!r}", describe(out), hint)

    return Trial(call, "gather", {"parts": to_plain([[i, v] for i, v in parts])}, judge, hint)



def _gather_probe(answer: Callable, inputs: dict, oracle: trials.Oracle) -> tuple[Any, dict]:
    import torch  # only this probe needs it

    return answer([(index, torch.tensor(values)) for index, values in inputs["parts"]]), {}



# -- the pipeline --------------------------------------------------------------------------------
# A stage is a blocking call (a device's part of the model): it sleeps ``delay_s`` and returns
# ``x * factor + offset``. Sleeping, like a device computing, lets other threads run, so on any
# machine a pipeline of S equal stages over M items takes about (M + S - 1) stage times instead
# of M * S: 16/9 = 1.8x for two stages and eight items.

PIPELINE_NAIVE, PIPELINE_FULL = 1.15, 1.6  # speed-up bands: one after another, and a real pipeline
_sleep = time.sleep  # bound before any submission runs, so that patching time.sleep cannot shorten a stage


def _stage_fns(stages: list, fail_at: list | None = None) -> list[Callable[[float], float]]:
    """The stages as blocking calls; each holds a lock while it works, as a device computes one
    thing at a time (one thread per item gains nothing on a stage over one thread per stage)."""
    def stage(number: int, delay: float, factor: float, offset: float) -> Callable[[float], float]:
        device = threading.Lock()

        def run(x: float) -> float:
            with device:
                _sleep(delay)
            if fail_at is not None and number == fail_at[0] and x == fail_at[1]:
                raise ValueError(f"stage {number} cannot take {x}")
            return x * factor + offset
        return run
    return [stage(i, *spec) for i, spec in enumerate(stages)]


def _sequential(stages: list, items: list) -> list[float]:
    out = []
    for x in items:
        for spec in stages:
            x = x * spec[1] + spec[2]
        out.append(x)
    return out


def _pipeline_probe(answer: Callable, inputs: dict, oracle: trials.Oracle) -> tuple[Any, dict]:
    """The answer on sleeping stages, each wrapped to record when it ran what (the timeline the
    behaviour is judged on), and whether any thread the answer started is still alive after."""
    fail_at = inputs.get("fail_at")
    items = [x + inputs.get("round", 0) for x in inputs["items"]]  # each speed round its own inputs
    events: list[list] = []
    lock = threading.Lock()
    origin = time.perf_counter()

    def recorded(number: int, fn: Callable[[float], float]) -> Callable[[float], float]:
        def run(x: float) -> float:
            start = time.perf_counter() - origin
            try:
                return fn(x)
            finally:
                with lock:
                    events.append([number, x, start, time.perf_counter() - origin])
        return run

    stages = [recorded(i, fn) for i, fn in enumerate(_stage_fns(inputs["stages"], fail_at))]
    before = threading.active_count()
    try:
        output: Any = answer(stages, items)
    except ValueError as e:
        output = {"raised": f"ValueError: {e}"}
    deadline = time.perf_counter() + 1.0  # threads that were told to end have a moment to do so
    while threading.active_count() > before and time.perf_counter() < deadline:
        time.sleep(0.01)
    return output, {"events": events, "threads_left": threading.active_count() - before}


def _run_pipeline(stages: list, items: list, hint: str = "", fail_at: list | None = None) -> Trial:
    """(stages as [[delay_s, factor, offset], ...], items, hint, fail_at [stage, item] or None)"""
    call = f"run_pipeline({len(stages)} stages, {len(items)} items" + (f", stage {fail_at[0]} fails on {fail_at[1]!r})" if fail_at else ")")
    want = _sequential(stages, items)

    def judge(seen: trials.Observation) -> None:
        left = seen.extra.get("threads_left", 0)
        if left:
            raise trials.Mismatch(f"{call}: threads still running after it returned", "none", str(left),
                           "end every stage's thread (a sentinel down the queues) and join them")
        if fail_at is not None:
            if not (isinstance(seen.output, dict) and str(seen.output.get("raised", "")).startswith("ValueError")):
                raise trials.Mismatch(call, "the stage's ValueError raised to the caller", describe(seen.output),
                               "catch a stage's exception in its thread, stop the pipeline, re-raise it in the caller")
            return
        if not same(seen.output, want):
            raise trials.Mismatch(call, repr(want), describe(seen.output), hint or "outputs in the order of the items")
        _judge_timeline(call, seen.extra.get("events", []), stages, items)

    inputs = {"stages": to_plain(stages), "items": to_plain(items), "fail_at": to_plain(fail_at)}
    return Trial(call, "pipeline", inputs, judge, hint)


def _judge_timeline(call: str, events: list, stages: list, items: list) -> None:
    """Each stage ran each of its inputs once, in item order, and an item entered a stage only
    after leaving the one before."""
    by_stage: dict[int, list] = {}
    for stage, x, start, end in sorted(events, key=lambda e: e[2]):
        by_stage.setdefault(stage, []).append((x, start, end))
    inputs = [float(x) for x in items]
    for stage, (_, factor, offset) in enumerate(stages):
        ran = by_stage.get(stage, [])
        if not same([x for x, _, _ in ran], inputs):
            raise trials.Mismatch(f"{call}: what stage {stage} ran, in order", f"{inputs}"[:200],
                           str([x for x, _, _ in ran])[:200], "one thread per stage, fed in order by a queue")
        if stage:
            for (x, start, _), (_, _, prev_end) in zip(ran, by_stage.get(stage - 1, []), strict=True):
                if start < prev_end - 1e-4:
                    raise trials.Mismatch(f"{call}: {x!r} at stage {stage}", "to start after it left the stage before",
                                   "it started earlier", "pass each stage's output to the next through a queue")
        inputs = [x * factor + offset for x in inputs]


def _pipeline_speed(stages: list, items: list, hint: str = "", rounds: int = 3) -> Trial:
    """(stages as [[delay_s, factor, offset], ...], items, hint, rounds)"""
    call = f"run_pipeline({len(stages)} stages, {len(items)} items) against running the stages one after another"
    ideal = len(stages) * len(items) / (len(items) + len(stages) - 1)
    floor_s = len(items) * max(spec[0] for spec in stages)

    def reference(inputs: dict) -> None:  # in the grader: the same stages, one after another
        fns = _stage_fns(inputs["stages"])
        for x in inputs["items"]:
            for fn in fns:
                x = fn(x)

    def judge(seen: trials.Observation) -> None:
        want = [_sequential(stages, [x + r for x in items]) for r in range(len(seen.outputs))]
        if list(seen.outputs) != want and not all(same(o, w) for o, w in zip(seen.outputs, want, strict=True)):
            raise trials.Mismatch(call, "the same outputs as the stages one after another", describe(seen.outputs[0]), hint)
        fastest = min(answer for _, answer in seen.rounds)
        if fastest < 0.9 * floor_s:  # no honest run is faster: the clock or the stages were tampered with
            raise trials.Mismatch(f"{call}: time", f"at least {floor_s:.3f} s (the slowest stage, once per item)",
                           f"{fastest:.3f} s", "the stages must run for real")
        credit = speed_credit(seen.speedup, naive=PIPELINE_NAIVE, full=PIPELINE_FULL)
        if credit < 1:
            raise trials.Partial(f"{call}: speed-up (median of {len(seen.rounds)} rounds)",
                          f"{PIPELINE_FULL:g}x or more (the ideal here is {ideal:.2f}x)", f"{seen.speedup:.2f}x",
                          hint or "while stage 1 works on item i, stage 0 should already work on item i + 1",
                          credit=credit)

    inputs = {"stages": to_plain(stages), "items": to_plain(items), "fail_at": None}
    return Trial(call, "pipeline", inputs, judge, hint, reference=reference, rounds=rounds)


QUESTIONS = [
    Question("03.split_sizes", "Balanced contiguous split", 2, calls("split_sizes"), (
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
    Question("03.run_pipeline", "A pipeline of stages: outputs in order, stages overlapping", 4, _run_pipeline, (
        ([[0.005, 2.0, 1.0], [0.005, 3.0, 0.0]], [1.0, 2.0, 3.0, 4.0], "outputs in the order of the items"),
        ([[0.002, 1.0, 1.0], [0.002, 2.0, 0.0], [0.002, 1.0, -1.0]], [0.0, 5.0, 7.0], "three stages"),
        ([[0.001, 1.0, 0.0], [0.001, 1.0, 0.0]], [], "no items: an empty list, and no thread left behind"),
        ([[0.003, 1.0, 0.0], [0.003, 1.0, 0.0]], [1.0, 2.0, 3.0, 4.0], "a stage that raises", [1, 2.0]),
    ), minutes=30),
    Question("03.pipeline_speed", "The pipeline's speed-up over stages one after another", 3, _pipeline_speed, (
        ([[0.012, 2.0, 1.0], [0.012, 1.0, -1.0]], [float(i) for i in range(8)], "", 3),
    ), kind="speed", minutes=5, budget_s=4.0, answer="run_pipeline"),
]
PROBES = {"gather": _gather_probe, "pipeline": _pipeline_probe}
