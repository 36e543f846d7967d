"""Hidden tests for exercise 02 (used with --tests): cases of each question's own form, plain data."""

TESTS = {
    "02.strict_select": [
        (([[], ["b0"], []], 5), ["b0"], "only the middle level waits"),
    ],
    "02.plan_batch": [
        ([1.0, 1.0, 100.0, 0.5, 16, 20.0], "the cap is bounded by max_batch"),
        ([0.5, 0.25, 10.0, 1.0, 64, 1.0], "no headroom"),
    ],
    "02.PrioritySelector": [
        ({"weights": [2.0, 1.0], "max_age_s": 0.03, "aged_share": 0.5, "dt": 0.01, "n": 4,
          "steps": [[6, 3]] * 10}, "a larger aged share"),
        ({"weights": [1.0, 1.0, 1.0], "max_age_s": 1.0, "aged_share": 0.25, "dt": 0.01, "n": 2,
          "steps": [[1, 1, 1], [0, 0, 0], [0, 3, 0], [0, 0, 0]]}, "credits carry over while levels come and go"),
    ],
}
