"""Exercise 02: the adaptive batcher's plan from a fitted cost, and the selection `PriorityBatcher`
makes across priority levels (weighted shares, aging), graded against labkit's own under a
simulated overload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.grading.plain import describe, same, to_plain, value_of
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial, calls


def _plan_batch(args: list, hint: str = "") -> Trial:
    """(args [a_ms, b_ms, target_ms, headroom, max_batch, max_wait_ms], hint): the expected plan is
    what labkit's `FittedCostController` makes of a cost a + b n"""
    from labkit.batching.adaptive import FittedCostController

    a, b, target, headroom, max_batch, max_wait_ms = args

    class Fitted:  # the fitted cost, as BatchCostModel gives it once it has seen enough batches
        ready = True

        @staticmethod
        def predict(n: int) -> float:
            return a + b * n

    cap, wait_s = FittedCostController(Fitted(), target, headroom, step=1).plan(max_batch, max_wait_ms)
    return calls("plan_batch")(args, [cap, wait_s * 1e3], hint)


def _simulate(selector: Any, case: dict) -> list[list[str]]:
    """Batches taken by ``selector.take(levels, now, n)`` as requests arrive, one batch every ``dt``
    seconds: each level a list of (arrival, id), oldest first; what it takes leaves the queue."""
    levels: list[list[tuple[float, str]]] = [[] for _ in case["weights"]]
    taken = []
    for step, arrivals in enumerate(case["steps"]):
        now = round(step * case["dt"], 9)
        for level, count in enumerate(arrivals):
            levels[level] += [(now, f"L{level}-{step}-{i}") for i in range(count)]
        chosen = selector.take([list(lv) for lv in levels], now, case["n"])
        chosen = [value_of(c) for c in chosen]
        picked = set(chosen)
        levels = [[r for r in lv if r[1] not in picked] for lv in levels]
        taken.append(chosen)
    return taken


def _labkit_batches(case: dict) -> list[list[str]]:
    """The same simulation through labkit's `PriorityQueues` (what `PriorityBatcher` runs)."""
    from labkit.batching.queues import PriorityQueues, Request

    queues = PriorityQueues(len(case["weights"]), policy="weighted", weights=case["weights"],
                            max_sizes=[10**6] * len(case["weights"]), max_age_s=case["max_age_s"],
                            aged_share=case["aged_share"])

    class Feeding:  # requests enter labkit's queue as they arrive in the simulation
        def __init__(self) -> None:
            self.seen: set[str] = set()

        def take(self, levels: list, now: float, n: int) -> list[str]:
            for level, waiting in enumerate(levels):
                for arrival, rid in waiting:
                    if rid not in self.seen:
                        self.seen.add(rid)
                        queues.push(Request(rid, None, arrival, priority=level))
            return [r.x for r in queues.take(n, now)]

    return _simulate(Feeding(), case)


def _selector_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    case = inputs["case"]
    return _simulate(answer(case["weights"], case["max_age_s"], case["aged_share"]), case), {}


def _priority_selector(case: dict, hint: str = "") -> Trial:
    """(case {weights, max_age_s, aged_share, dt, n, steps: [[arrivals per level], ...]}, hint)"""
    want = _labkit_batches(case)
    call = (f"PrioritySelector(weights={case['weights']}, max_age_s={case['max_age_s']:g}) over {len(case['steps'])} "
            f"batches of {case['n']}")

    def judge(seen: Observation) -> None:
        got = seen.output
        if not isinstance(got, list) or len(got) != len(want):
            raise Mismatch(call, f"{len(want)} batches", describe(got), hint)
        for number, (batch, expected) in enumerate(zip(got, want, strict=True)):
            if not (isinstance(batch, list) and same(sorted(map(str, batch)), sorted(expected))):
                raise Mismatch(f"{call}: batch {number}", repr(sorted(expected))[:300], describe(batch)[:300],
                               hint or "first the aged (waited max_age_s, oldest first, at most aged_share of the "
                               "batch), then smooth weighted round robin over the levels that have requests, its "
                               "credits kept from batch to batch")

    return Trial(call, "priority_selector", {"case": to_plain(case)}, judge, hint)


def _overload(weights: list, n: int, steps: int, arrivals: list, max_age_s: float, dt: float = 0.01) -> dict:
    return {"weights": weights, "max_age_s": max_age_s, "aged_share": 0.25, "dt": dt, "n": n,
            "steps": [list(arrivals) for _ in range(steps)]}


QUESTIONS = [
    Question("02.strict_select", "Strict priority, work-conserving", 2, calls("strict_select"), (
        (([["a0", "a1"], ["b0"], ["c0", "c1"]], 4), ["a0", "a1", "b0", "c0"], "level 0 first, then 1, then 2"),
        (([[], [], ["c0", "c1", "c2"]], 2), ["c0", "c1"], "work-conserving: empty levels leave no empty slots"),
        (([["a0"], []], 3), ["a0"], "fewer waiting than slots: take them all"),
        (([["a0", "a1", "a2"], ["b0"]], 2), ["a0", "a1"], "a full batch of level 0 leaves level 1 waiting"),
    ), minutes=5),
    Question("02.plan_batch", "The batch cap and wait for a p99 target, from a fitted cost", 2, _plan_batch, (
        ([2.0, 0.5, 40.0, 0.8, 64, 5.0], "2 (a + b n) <= 0.8 x 40 ms: the largest such n, and what is left of the budget"),
        ([6.0, 0.1, 20.0, 0.8, 32, 5.0], "a large fixed cost: few items fit the budget; the wait is capped by max_wait_ms"),
        ([30.0, 1.0, 20.0, 0.8, 32, 5.0], "not even one fits: cap 1, no wait"),
    ), minutes=10),
    Question("02.PrioritySelector", "Weighted shares with aging, as PriorityBatcher selects", 5, _priority_selector, (
        (_overload([3.0, 1.0], 4, 6, [4, 4], max_age_s=1.0), "no request ages: 3 of every 4 slots to level 0"),
        (_overload([4.0, 2.0, 1.0], 8, 12, [8, 2, 2], max_age_s=0.05),
         "overload at level 0: levels 1 and 2 would starve without aging; aged requests go first"),
        (_overload([1.0, 1.0], 3, 5, [1, 4], max_age_s=1.0),
         "work-conserving: a level without requests leaves its share to the others; credits carry over"),
    ), minutes=45),
]
PROBES = {"priority_selector": _selector_probe}
