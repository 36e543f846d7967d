"""Hidden tests for exercise 04 (used with --tests): cases of each question's own form, plain data."""

TESTS = {
    "04.predict_max_batch": [
        ((2, 300, 6, 700, 1000), 9, "a + b n with a = 100, b = 100"),
    ],
    "04.find_max_batch": [
        ("bfloat16", None, 4096, "bfloat16 under 16 GiB"),
        ("float16", 8, 4096, "float16 under 8 GiB"),
        ("float32_channels_last", 4, 4096, "channels_last under 4 GiB"),
        ("float32", None, 1000, "the limit is below the answer: return the limit"),
    ],
}
