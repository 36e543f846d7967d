"""Hidden tests for exercise 01 (used with --tests): cases of each question's own form, plain data."""

TESTS = {
    "01.batch_due": [
        (([1.0, 1.0, 1.0], 1.0, 3, 0.5), 3, "exactly full"),
        (([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 0.6, 4, 0.5), 4, "overdue and more than a batch: at most max_batch_size"),
    ],
    "01.next_wakeup": [
        (([0.25, 0.5, 0.75], 0.1), 0.35, "three waiting: the oldest decides"),
    ],
    "01.MiniBatcher": [
        ("stream", [[-1.0, 0.0, False], [-2.0, 0.0, False], [5.0, 0.0, False]], "two culprits in one batch"),
        ("stream", [[float(i), 0.0, i % 2 == 0] for i in range(10)], "every other caller cancels"),
        ("stream", [[1.0, 0.02, False], [2.0, 0.02, False], [3.0, 0.0, False]], "requests further apart than max_wait_s"),
        ("deadline", 0.08, 0.05),
    ],
}
