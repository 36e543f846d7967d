"""Hidden tests for exercise 00, kept out of the students' copies (used with --tests): cases of the
questions' own form, plain data. Every bench case keeps p50 and p99 where all percentile
definitions agree (tests/grading/test_ex00.py checks it)."""

_BIMODAL = [0.8] * 140 + [1.6] * 155 + [6.0] * 4 + [25.0]  # 300 calls: p50 at 1.6, p99 at 6.0, max 25
_STEADY = [3.0, 3.1, 3.2, 3.1, 3.0] * 20  # 100 calls, no outliers: p99 is the max

TESTS = {
    "00.bench": [
        ([80.0, 20.0], _BIMODAL[::2] + _BIMODAL[1::2], "two kinds of call; warm-up slower than any timed one"),
        ([5.0] * 4, _STEADY, "steady kernels"),
        ([30.0], [7.0], "repeat=1: one sample is every statistic"),
        ([2.0] * 10, [0.01] * 60 + [0.012] * 38 + [0.5] * 2, "launch-bound: the launch is most of each call", 20.0),
    ],
    "00.compare": [
        (20.0, 5.0, 31, 1.0, None, "a machine heating up fast"),
        (6.0, 6.0, 11, 0.3, ["b", 4, 300.0], "equal speed, a stall in b"),
        (9.0, 27.0, 21, -0.6, ["a", 12, 900.0], "b is slower; the machine speeds up; a stall in a"),
    ],
    "00.share_of_peak": [
        ((500, 1.2e11, 312.0), 500 * 1.2e11 / 312e12, "a large model"),
        ((1e6, 2e6, 67.0), 1e6 * 2e6 / 67e12, "tiny items, many of them"),
    ],
}
