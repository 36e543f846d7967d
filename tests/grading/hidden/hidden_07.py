"""Hidden tests for exercise 07, kept out of the students' copies (used with --tests): cases of the
questions' own form, plain data."""

TESTS = {
    "07.conv2d_flops": [
        ((256, 512, 3, 14, 14, 1), 2 * 256 * 512 * 9 * 14 * 14, "a 3x3 convolution deep in the network"),
        ((64, 128, 3, 28, 28, 4), 2 * 16 * 9 * 128 * 28 * 28, "groups=4: a quarter of the input channels each"),
        ((1, 1, 1, 1, 1, 1), 2, "one weight, one output: one multiply-add"),
    ],
    "07.fast_predict": [
        (0, 1, "no images: an empty (0, classes) tensor"),
        (130, 2, "more images than a typical batch"),
    ],
}
