"""Hidden tests for exercise 08, kept out of the students' copies (used with --tests): cases of the
questions' own form, plain data. A replay case is {kv_blocks, block_size, max_batch_size,
requests: [[arrival step, prompt tokens, output tokens], ...]}."""

TESTS = {
    "08.blocks_needed": [
        ((7, 0, 4), 0, "feeding nothing needs nothing"),
        ((15, 17, 16), 1, "from 15 to 32 tokens: one more block of 16"),
        ((100, 1, 1), 1, "block_size 1"),
        ((0, 16, 16), 1, "exactly one block"),
    ],
    "08.schedule": [
        ({"kv_blocks": 7, "block_size": 2, "max_batch_size": 3,
          "requests": [[0, 3, 6], [0, 4, 6], [0, 2, 5], [1, 5, 3], [4, 1, 4], [6, 3, 2]]},
         "several preemptions under a small cache, then recompute"),
        ({"kv_blocks": 5, "block_size": 4, "max_batch_size": 8,
          "requests": [[0, 4, 4], [0, 8, 3], [0, 3, 2], [2, 4, 1]]},
         "prompts that fill their blocks exactly: lookahead with several full blocks"),
        ({"kv_blocks": 9, "block_size": 4, "max_batch_size": 4,
          "requests": [[0, 2, 12], [0, 30, 3], [0, 1, 1], [0, 1, 1], [3, 2, 2]]},
         "a long prompt at the head: FIFO"),
        ({"kv_blocks": 6, "block_size": 1, "max_batch_size": 2,
          "requests": [[0, 2, 4], [0, 1, 5], [0, 3, 3], [2, 2, 2]]},
         "block_size 1 with preemption"),
        ({"kv_blocks": 4, "block_size": 8, "max_batch_size": 1,
          "requests": [[0, 5, 3], [0, 9, 2], [20, 4, 2]]},
         "one sequence at a time, and an idle gap"),
    ],
    "08.schedule_speed": [
        ({"kv_blocks": 96, "block_size": 16, "max_batch_size": 24, "max_len": 256,
          "trace": {"n": 50, "seed": 7, "gap_ms": 2.0, "prompt": [16, 64], "output": [4, 192]}},
         "another trace, a larger block"),
    ],
}
