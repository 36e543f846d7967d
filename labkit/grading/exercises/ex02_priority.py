"""Exercise 02: choosing the requests of a batch across priority levels."""

from __future__ import annotations

from labkit.grading.trials import Question, calls

QUESTIONS = [
    Question("02.strict_select", "Strict priority, work-conserving", 2, calls("strict_select"), (
        (([["a0", "a1"], ["b0"], ["c0", "c1"]], 4), ["a0", "a1", "b0", "c0"], "level 0 first, then 1, then 2"),
        (([[], [], ["c0", "c1", "c2"]], 2), ["c0", "c1"], "work-conserving: empty levels leave no empty slots"),
        (([["a0"], []], 3), ["a0"], "fewer waiting than slots: take them all"),
        (([["a0", "a1", "a2"], ["b0"]], 2), ["a0", "a1"], "a full batch of level 0 leaves level 1 waiting"),
    )),
    Question("02.weighted_select", "Weighted shares, work-conserving", 3, calls("weighted_select"), (
        (([["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "a1", "a2", "b0"],
         "shares by weight: 3 of 4 slots to level 0, 1 to level 1"),
        (([["a0"], ["b0", "b1", "b2", "b3"]], [3, 1], 4), ["a0", "b0", "b1", "b2"],
         "level 0 cannot use its share: give the unused slots to level 1 (work-conserving)"),
        (([[], ["b0", "b1"]], [3, 1], 4), ["b0", "b1"], "an empty level's weight does not count"),
        (([["a0", "a1"], ["b0", "b1"], ["c0", "c1"]], [1, 1, 1], 4), ["a0", "b0", "c0", "a1"],
         "equal shares of 1 each; the slot left over goes to the highest priority with items left"),
    )),
]
PROBES: dict = {}
