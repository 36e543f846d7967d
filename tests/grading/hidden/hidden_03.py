"""Hidden tests for exercise 03, kept out of the students' copies (used with --tests): cases of the
question's own form, plain data."""

TESTS = {
    "03.split_sizes": [
        ((7, 1), [7], "one device takes everything"),
        ((5, 5), [1, 1, 1, 1, 1], "one item each"),
        ((30000, 30000), [1] * 30000, "a result of over 64 KiB as data"),
    ],
    "03.run_pipeline": [
        ([[0.002, 1.0, 0.5]], [1.0, 2.0], "one stage"),
        ([[0.001, 2.0, 0.0]] * 4, [1.0, 3.0, 5.0], "four stages"),
        ([[0.002, 1.0, 0.0], [0.002, 1.0, 0.0], [0.002, 1.0, 0.0]], [1.0, 2.0, 3.0], "the last stage raises", [2, 3.0]),
    ],
}
