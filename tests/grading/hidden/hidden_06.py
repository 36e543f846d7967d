"""Hidden tests for exercise 06, kept out of the students' copies (used with --tests): cases of the
questions' own form, plain data."""

TESTS = {
    "06.padded_runner": [
        ([16, 1, 4], [1, 5], "a batch of one row runs on the graph for 1"),
        ([1, 2, 4, 8, 16, 32], [20, 3], "20 rows run on the graph for 32, as in the lesson"),
        ([3, 5], [12, 2], "sizes that are not powers of two: 5, 5, then 2 rows on the graph for 3", "float64"),
        ([1], [3, 2], "a single captured size of 1: one call per row"),
        ([2, 4, 8], [17, 2, 2], "past the largest: 8, 8, then one row on the graph for 2", "float16"),
        ([64], [130, 1], "one large size: chunks of 64, the last 2 rows padded to 64"),
    ],
    "06.overlap_bound": [
        ([["compute", 0, 0.0015, 0.0035], ["copy", 0, 0.0005, 0.0015]],
         "a single batch: nothing to overlap, and the timeline does not start at 0"),
        ([["copy", 0, 0.0, 0.003], ["compute", 0, 0.003, 0.004], ["copy", 1, 0.003, 0.006],
          ["compute", 1, 0.006, 0.007], ["copy", 2, 0.006, 0.009], ["compute", 2, 0.009, 0.01],
          ["copy", 3, 0.009, 0.012], ["compute", 3, 0.012, 0.013]],
         "copies longer than computes: the copy stream sets the pace"),
        ([["copy", 0, 0.0, 0.0005], ["compute", 0, 0.0005, 0.0025], ["copy", 1, 0.0005, 0.001],
          ["compute", 1, 0.003, 0.005], ["copy", 2, 0.001, 0.0015], ["compute", 2, 0.0055, 0.0075],
          ["copy", 3, 0.0015, 0.002], ["compute", 3, 0.008, 0.01], ["copy", 4, 0.002, 0.0025],
          ["compute", 4, 0.0105, 0.0125]],
         "the host stalled between computes: both streams idle at times, so measured is not sequential - overlap"),
        ([["compute", 5, 0.0105, 0.0125], ["copy", 5, 0.0025, 0.003], ["compute", 4, 0.0085, 0.0105],
          ["copy", 4, 0.002, 0.0025], ["compute", 3, 0.0065, 0.0085], ["copy", 3, 0.0015, 0.002],
          ["compute", 2, 0.0045, 0.0065], ["copy", 2, 0.001, 0.0015], ["compute", 1, 0.0025, 0.0045],
          ["copy", 1, 0.0005, 0.001], ["compute", 0, 0.0005, 0.0025], ["copy", 0, 0.0, 0.0005]],
         "copies far ahead of the computes: a copy overlaps the compute of another batch than the one before it"),
        ([["copy", 0, 0.000112, 0.000871], ["compute", 0, 0.000903, 0.004377], ["copy", 1, 0.000871, 0.001702],
          ["compute", 1, 0.004391, 0.007954], ["copy", 2, 0.004402, 0.005188], ["compute", 2, 0.00796, 0.011402],
          ["copy", 3, 0.007971, 0.00879], ["compute", 3, 0.011415, 0.01489]],
         "a recorded run's uneven times"),
    ],
}
