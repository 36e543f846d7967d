"""Hidden tests for exercise 03, kept out of the students' copies (used with --tests)."""

from labkit.grading.questions import expect

TESTS = {
    "03.split_sizes": [
        lambda fn: expect(fn, (7, 1), [7], "one device takes everything"),
        lambda fn: expect(fn, (5, 5), [1, 1, 1, 1, 1], "one item each"),
    ],
}
