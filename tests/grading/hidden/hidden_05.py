"""Hidden tests for exercise 05 (used with --tests): cases of each question's own form, plain data."""

TESTS = {
    "05.ModelServer": [
        ({"x": [1.0, 0.05], "y": [2.0, 0.05]}, [["x", 1.0], ["y", 1.0], ["x", 2.0], ["y", -2.0], ["x", 3.0]],
         "two models, one request failing", 0.4),
        ({"solo": [5.0, 0.03]}, [["solo", float(i)] for i in range(6)], "one model, six requests: one at a time"),
    ],
    "05.issue_order": [
        ((4, 2), [("load", 0), ("load", 1), ("collect", 0), ("load", 2), ("collect", 1), ("load", 3),
                  ("collect", 2), ("collect", 3)], "two buffers, four batches"),
    ],
}
