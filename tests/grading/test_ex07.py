"""Exercise 07's judges: the solution's answers earn full marks with the hidden cases, and each
typical mistake of a faster loop (rows out of order, a row lost, a transposed result, a different
model state, a result that is not a tensor) fails with a message that names it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from labkit.grading.check import run_here
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import score

HIDDEN = Path(__file__).parent / "hidden" / "hidden_07.py"
_spec = importlib.util.spec_from_file_location("hidden_07", HIDDEN)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TESTS = json.loads(json.dumps(_module.TESTS))  # as the grader receives them: tuples become lists


def conv2d_flops(c_in, c_out, k, out_h, out_w, groups=1):
    return 2 * (c_in // groups) * k * k * c_out * out_h * out_w


def batched(model, images):
    with torch.inference_mode():
        if not images:
            return torch.empty(0, 10)
        return model(torch.stack(images)).cpu()


def _grade(question: str, answer) -> tuple[float, list[str]]:
    q = QUESTIONS[question]
    trials = q.trials(TESTS.get(question, []))
    result = score(q.id, trials, [run_here(t, answer) for t in trials], q.points)
    return result.points, result.feedback


def test_hand_counts_match_the_flop_counter_and_the_answer_scores_full_marks():
    from torch.utils.flop_counter import FlopCounterMode

    for c_in, c_out, k, h, w, groups in [(3, 64, 7, 112, 112, 1), (32, 32, 3, 28, 28, 32), (64, 128, 3, 28, 28, 4)]:
        conv = torch.nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups)
        with FlopCounterMode(display=False) as counter:
            conv(torch.randn(1, c_in, h, w))
        assert counter.get_total_flops() == conv2d_flops(c_in, c_out, k, h, w, groups)
    assert _grade("07.conv2d_flops", conv2d_flops)[0] == QUESTIONS["07.conv2d_flops"].points


def test_forgetting_groups_or_the_factor_two_fails_with_the_case_named():
    points, feedback = _grade("07.conv2d_flops", lambda c_in, c_out, k, h, w, groups=1: 2 * c_in * k * k * c_out * h * w)
    assert points < QUESTIONS["07.conv2d_flops"].points and any("groups" in f for f in feedback)
    points, feedback = _grade("07.conv2d_flops", lambda c_in, c_out, k, h, w, groups=1: (c_in // groups) * k * k * c_out * h * w)
    assert points == 0 and "multiply" in feedback[0]


def test_the_batched_loop_passes_every_case():  # the given loop's own grade: tests/grading/test_speed.py
    assert _grade("07.fast_predict", batched)[0] == QUESTIONS["07.fast_predict"].points


@pytest.mark.parametrize("wrong, says", [
    (lambda model, images: batched(model, images[::-1]), "within"),
    (lambda model, images: batched(model, images[:-1]), "one row per image"),
    (lambda model, images: batched(model, images).T.contiguous(), "one row per image"),
    (lambda model, images: batched(model, images).tolist(), "torch.Tensor"),
    (lambda model, images: batched(model.train(), images), "within"),
])
def test_a_faster_loop_that_changes_the_answer_earns_nothing_for_it(wrong, says):
    points, feedback = _grade("07.fast_predict", wrong)
    assert points < QUESTIONS["07.fast_predict"].points and any(says in f for f in feedback), feedback


def test_an_answer_that_changes_its_model_changes_neither_the_judge_nor_the_next_answer():
    def casts_and_trains(model, images):
        model.train().double()  # in place, on the model it was given
        return batched(model, [image.double() for image in images])

    assert _grade("07.fast_predict", casts_and_trains)[0] < QUESTIONS["07.fast_predict"].points
    assert _grade("07.fast_predict", batched)[0] == QUESTIONS["07.fast_predict"].points
