"""Exercise 04: predicting and finding the largest batch that fits."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from labkit.grading.plain import describe, same, value_of
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial, calls


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



def _find_max_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    return answer(lambda n: oracle("fits", [n]), inputs["limit"]), {}



QUESTIONS = [
    Question("04.predict_max_batch", "Predict the largest batch from two probes", 2, calls("predict_max_batch"), (
        ((1, 1100, 2, 1200, 2000), 10, "peak = 1000 + 100 n: the largest n with peak <= budget"),
        ((4, 500, 8, 900, 2000), 19, "slope (900-500)/(8-4) = 100 per item; round down"),
        ((1, 1100, 2, 1200, 1050), 0, "a budget below the fixed part fits nothing: 0, not a negative number"),
    )),
    Question("04.find_max", "Find the largest batch in few trials", 3, _find_max, (
        (37, 1000), (1, 64), (0, 64), (5000, 4096),
    )),
]
PROBES = {"find_max": _find_max_probe}
