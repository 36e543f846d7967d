"""Exercise 04: predicting the largest batch from two probes, and finding it on memory curves an H200
recorded, graded on its trials against bisection's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.grading.plain import describe, same, value_of
from labkit.grading.trials import Mismatch, Observation, Oracle, Partial, Question, Trial, calls


def _curve(name: str) -> dict:
    """The newest curve bench/memory_curve.py recorded on a GPU (ResNet-50 under a 16 GiB cap) for a precision."""
    from labkit.memory.trials import recorded_curves

    found = [curve for _, precision, curve in recorded_curves() if precision == name]
    if not found:
        raise ValueError(f"no recorded memory curve {name!r} under bench/results")
    return found[-1]


def _find_max_batch(curve: str, budget_gib: float | None, limit: int, hint: str = "") -> Trial:
    """(recorded curve name, budget in GiB or None for the recorded one, limit, hint)"""
    from labkit.memory import search_max_batch
    from labkit.memory.trials import recorded_trial

    recorded = _curve(curve)
    budget = recorded["budget_bytes"] if budget_gib is None else int(budget_gib * 2**30)
    replay = recorded_trial(recorded, None if budget_gib is None else budget)
    lo, hi, naive = 0, limit + 1, 0  # the truth, and what the naive baseline (plain bisection) spends on it
    while hi - lo > 1:
        naive += 1
        lo, hi = ((lo + hi) // 2, hi) if replay((lo + hi) // 2).fits else (lo, (lo + hi) // 2)
    truth = lo
    labkit = len(search_max_batch(replay, budget, limit=limit, base_bytes=recorded["weight_bytes"]).trials)
    full_at = max(6, labkit)
    call = f"find_max_batch(ResNet-50 {curve} on an H200, budget {budget / 2**30:g} GiB, limit={limit})"

    def oracle(n: Any) -> dict:
        t = replay(int(value_of(n)))
        return {"fits": t.fits, "reserved": t.peak_bytes, "allocated": t.allocated_bytes}

    def judge(seen: Observation) -> None:
        if not same(seen.output, truth):
            raise Mismatch(call, repr(truth), describe(seen.output), hint or "the largest batch whose trial fits")
        tried = {value_of(args[0]) for _, args in seen.calls}
        if (truth > 0 and truth not in tried) or (truth < limit and truth + 1 not in tried):
            raise Mismatch(f"{call}: proof", f"trials at {truth} (fits) and {truth + 1} (does not)",
                           f"trials at {sorted(tried)[:12]}", "an answer is proven by the batch that fits and the next that does not")
        trials = len(seen.calls)
        if trials > full_at:
            credit = 0.25 + 0.75 * max(0.0, min(1.0, (naive - trials) / max(1, naive - full_at)))
            raise Partial(f"{call}: trials", f"at most {full_at} (labkit's search takes {labkit}; bisection {naive})",
                          str(trials), "fit a line to the allocated bytes of two small trials and predict; "
                          "then check the prediction and its neighbour", credit=credit)

    inputs = {"budget": budget, "limit": limit, "base": recorded["weight_bytes"]}
    return Trial(call, "find_max_batch", inputs, judge, hint, oracles={"trial": oracle})


def _find_max_batch_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    return answer(lambda n: oracle("trial", [n]), inputs["budget"], inputs["limit"], inputs["base"]), {}


QUESTIONS = [
    Question("04.predict_max_batch", "Predict the largest batch from two probes", 2, calls("predict_max_batch"), (
        ((1, 1100, 2, 1200, 2000), 10, "peak = 1000 + 100 n: the largest n with peak <= budget"),
        ((4, 500, 8, 900, 2000), 19, "slope (900-500)/(8-4) = 100 per item; round down"),
        ((1, 1100, 2, 1200, 1050), 0, "a budget below the fixed part fits nothing: 0, not a negative number"),
    )),
    Question("04.find_max_batch", "The largest batch on a real allocator's curve, in few trials", 5, _find_max_batch, (
        ("float32", None, 4096, "ResNet-50 fp32 under 16 GiB, as the H200 answered"),
        ("float32", 8, 4096, "the same curve under 8 GiB"),
        ("float32_channels_last", None, 4096, "channels_last"),
        ("float16", None, 4096, "half precision: the allocator caches more than it needs until the cap presses"),
    ), kind="speed", minutes=40, budget_s=2.0),
]
PROBES = {"find_max_batch": _find_max_batch_probe}
