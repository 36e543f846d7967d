"""Hidden tests for exercise 03, kept out of the students' copies (used with --tests): cases of the
question's own form, plain data."""

TESTS = {
    "03.split_sizes": [
        ((7, 1), [7], "one device takes everything"),
        ((5, 5), [1, 1, 1, 1, 1], "one item each"),
        ((30000, 30000), [1] * 30000, "a result of over 64 KiB as data"),
    ],
}
