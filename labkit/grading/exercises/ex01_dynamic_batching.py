"""Exercise 01: when a batch is due, and when the scheduler must look again."""

from __future__ import annotations

from labkit.grading.trials import Question, calls

QUESTIONS = [
    Question("01.batch_due", "How many requests leave now?", 3, calls("batch_due"), (
        (([], 5.0, 4, 0.01), 0, "an empty queue sends nothing"),
        (([1.0, 1.001], 1.002, 4, 0.01), 0, "two requests, the oldest has waited 2 ms of 10: keep waiting"),
        (([1.0, 1.001, 1.002, 1.003, 1.004], 1.004, 4, 0.01), 4, "a full batch leaves at once, at most max_batch_size"),
        (([1.0, 1.005], 1.0101, 4, 0.01), 2, "the oldest has waited past max_wait_s: send what is there"),
        (([1.0], 1.01, 4, 0.01), 1, "waiting exactly max_wait_s is enough"),
    )),
    Question("01.next_wakeup", "When must the scheduler look again?", 2, calls("next_wakeup"), (
        (([], 0.005), None, "nothing queued: no timer (sleep until a request arrives)"),
        (([2.0, 2.003], 0.005), 2.005, "the timer starts at the oldest request, not the newest"),
        (([7.5], 0.02), 7.52, "one request: it is due max_wait_s after it arrived"),
    )),
]
PROBES: dict = {}
