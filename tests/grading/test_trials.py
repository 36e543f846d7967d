"""labkit.grading.trials and questions: judging observations, scoring, hidden cases, oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.grading.check import check, grade_here, run_here
from labkit.grading.plain import to_plain
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import (
    MAX_FEEDBACK_LINES,
    MAX_LINE,
    Mismatch,
    Observation,
    Partial,
    Trial,
    equal,
    score,
)

from .hostile import AlwaysEqual


def _trial(call: str, expected, hint: str = "", hidden: bool = False) -> Trial:
    return Trial(call, "call", {"args": []}, equal(call, expected, hint), hint, hidden=hidden)


def _seen(output) -> Observation:
    return Observation(to_plain(output))


def split_sizes(n: int, k: int) -> list[int]:
    base, extra = divmod(n, k)
    return [base + (i < extra) for i in range(k)]


# -- equal --------------------------------------------------------------------------------------


def test_equal_passes_the_expected_value_and_rejects_others():
    judge = equal("f()", [4, 3, 3])
    judge(_seen([4, 3, 3]))
    judge(_seen((4, 3, 3)))  # a tuple is the same plain data
    with pytest.raises(Mismatch) as info:
        judge(_seen([3, 3, 4]))
    assert info.value.expected == "[4, 3, 3]" and info.value.got == "[3, 3, 4]" and info.value.call == "f()"


def test_equal_accepts_a_numpy_array_for_a_list():
    equal("f()", [4, 3, 3])(_seen(np.array([4, 3, 3])))
    equal("f()", [[1.0], [2.0]])(_seen(np.array([[1.0], [2.0]])))
    equal("f()", [1.0, 2.0])(_seen(torch.tensor([1.0, 2.0])))
    with pytest.raises(Mismatch):
        equal("f()", [4, 3, 3])(_seen(np.array([4, 3, 2])))


def test_equal_accepts_numpy_scalars():
    equal("f()", 7)(_seen(np.int64(7)))


def test_equal_rejects_a_foreign_object():
    judge = equal("f()", [4, 3, 3], "sizes differ by at most one")
    with pytest.raises(Mismatch) as info:
        judge(_seen(AlwaysEqual()))
    assert "AlwaysEqual" in info.value.got
    assert info.value.hint == "sizes differ by at most one"
    assert "Hint: sizes differ by at most one" in str(info.value)


def test_equal_rejects_an_observation_that_is_missing():
    with pytest.raises(Mismatch):
        equal("f()", [1])(Observation(None))


def test_mismatch_message_names_call_expected_and_got():
    m = Mismatch("g(1)", "2", "3")
    assert str(m) == "g(1): expected 2, got 3"
    assert isinstance(m, AssertionError)


# -- score --------------------------------------------------------------------------------------


def test_score_gives_points_in_proportion():
    trials = [_trial(f"f({i})", i) for i in range(4)]
    result = score("q", trials, [_seen(0), _seen(1), _seen(99), None], 3)
    assert (result.passed, result.total) == (2, 4)
    assert result.points == 1.5 and result.out_of == 3


def test_score_rounds_and_never_exceeds_out_of():
    trials = [_trial(f"f({i})", i) for i in range(3)]
    assert score("q", trials, [_seen(0), _seen(1), _seen(9)], 1).points == 0.67
    for out_of in (1, 2, 3, 0.1, 7.3):
        full = score("q", trials, [_seen(0), _seen(1), _seen(2)], out_of)
        assert full.points == out_of and not full.feedback and not full.details
    assert score("q", trials, [None, None, None], 3).points == 0


def test_score_with_no_trials_is_zero():
    result = score("q", [], [], 2)
    assert result.points == 0 and result.total == 0


def test_score_requires_one_observation_per_trial():
    with pytest.raises(ValueError):
        score("q", [_trial("f()", 1)], [], 1)


def test_missing_observations_say_why():
    result = score("q", [_trial("f()", 1)], [None], 1, missing="did not finish within 5 s")
    assert result.feedback == ["f(): did not finish within 5 s"]


def test_errors_are_reported_by_trial():
    result = score("q", [_trial("f()", 1)], [Observation(error="the answer raised KeyError: 'x'")], 1)
    assert result.feedback == ["f(): the answer raised KeyError: 'x'"]


def test_hidden_feedback_has_the_hint_but_no_values():
    q = QUESTIONS["03.split_sizes"]
    hidden = [((98765, 1), [98765], "one device takes everything")]
    trials = q.trials(hidden)
    assert [t.hidden for t in trials] == [False] * len(q.cases) + [True]

    def answer(n, k):
        return [31337] if n == 98765 else split_sizes(n, k)

    result = score(q.id, trials, [run_here(t, answer) for t in trials], q.points)
    assert result.passed == len(q.cases) and result.total == len(q.cases) + 1
    assert result.feedback == ["a hidden test did not pass (hint: one device takes everything)"]
    shown = "\n".join(result.feedback) + result.report()
    assert "98765" not in shown and "31337" not in shown
    assert len(result.details) == 1
    assert "98765" in result.details[0] and "31337" in result.details[0]
    assert result.details[0].startswith("split_sizes(98765, 1): expected [98765]")


def test_hidden_error_reveals_no_inputs():
    trial = _trial("secret(424242)", 1, hidden=True)
    result = score("q", [trial], [Observation(error="the answer raised ValueError: 424242")], 1)
    assert result.feedback == ["a hidden test did not pass"]
    assert "424242" in result.details[0]


def test_hidden_failures_with_the_same_hint_are_said_once():
    trials = [_trial(f"f({i})", i, "think again", hidden=True) for i in range(3)]
    result = score("q", trials, [_seen(-1)] * 3, 3)
    assert result.feedback == ["a hidden test did not pass (hint: think again) (3 tests)"]
    assert len(result.details) == 3


def test_identical_errors_are_said_once_with_a_count():
    q = QUESTIONS["03.split_sizes"]

    def stub(n, k):
        raise NotImplementedError

    result = grade_here(q.id, stub)
    assert result.points == 0
    assert len(result.feedback) == 1
    line = result.feedback[0]
    assert "not answered yet" in line and line.endswith(f"({len(q.cases)} tests)")
    assert len(result.details) == len(q.cases)


def test_different_mismatches_are_each_said():
    trials = [_trial(f"f({i})", i) for i in range(3)]
    result = score("q", trials, [_seen(-1)] * 3, 3)
    assert len(result.feedback) == 3
    assert not any("tests)" in line for line in result.feedback)


def test_feedback_is_capped():
    n = MAX_FEEDBACK_LINES + 7
    trials = [_trial(f"f({i})", i) for i in range(n)]
    result = score("q", trials, [_seen(-1)] * n, 1)
    assert len(result.feedback) == MAX_FEEDBACK_LINES + 1
    assert result.feedback[-1] == "... and 7 more"
    assert len(result.details) == n  # the instructor still sees every failure


def test_feedback_at_the_cap_has_no_more_line():
    n = MAX_FEEDBACK_LINES
    trials = [_trial(f"f({i})", i) for i in range(n)]
    result = score("q", trials, [_seen(-1)] * n, 1)
    assert len(result.feedback) == n and not result.feedback[-1].startswith("...")


def test_long_reasons_are_clipped():
    result = score("q", [_trial("f()", 1, "h" * 5000)], [_seen(2)], 1)
    assert result.feedback[0].startswith("f(): expected 1, got 2")
    assert len(result.feedback[0]) <= MAX_LINE + 10 and result.feedback[0].endswith(" [...]")
    assert len(result.details[0]) <= MAX_LINE + 10


def test_report_lists_points_and_feedback():
    trials = [_trial("f(0)", 0), _trial("f(1)", 1)]
    report = score("03.q", trials, [_seen(0), _seen(5)], 2).report()
    assert report.splitlines()[0] == "03.q: 1 / 2 points (1 of 2 tests passed)"
    assert report.splitlines()[1] == "  - f(1): expected 1, got 5"


def test_a_spoofed_tag_is_a_wrong_answer_not_a_crash():
    # an answer that returns its own dict shaped like one of the grader's tags
    trials = QUESTIONS["03.split_sizes"].trials()
    result = score("03.split_sizes", trials, [_seen({"$": "exception"}) for _ in trials], 2)
    assert result.points == 0


def test_check_never_raises_on_a_spoofed_tag(capsys):
    assert check("03.gather", lambda parts: {"$": "torch.Tensor"}) == 0


# -- questions ----------------------------------------------------------------------------------


def test_question_trials_appends_hidden_cases_as_hidden():
    q = QUESTIONS["03.split_sizes"]
    trials = q.trials([((7, 1), [7], "one device takes everything"), ((5, 5), [1] * 5)])
    assert len(trials) == len(q.cases) + 2
    assert trials[-2].call == "split_sizes(7, 1)" and trials[-2].inputs == {"args": [7, 1]}
    assert trials[-2].hint == "one device takes everything" and trials[-1].hidden
    assert not any(t.hidden for t in trials[:len(q.cases)])
    trials[-2].judge(_seen([7]))
    with pytest.raises(Mismatch):
        trials[-2].judge(_seen([6, 1]))


@pytest.mark.parametrize("question, case", [
    ("03.split_sizes", ((7, 1),)),  # no expected value
    ("03.split_sizes", ((7, 1), [7], "hint", "extra")),  # one item too many
    ("03.split_sizes", 5),  # not a sequence at all
    ("03.split_sizes", (7, [7])),  # args not a sequence
    ("04.find_max_batch", ("float64", None, 4096)),  # no such recorded curve
    ("04.find_max_batch", ("float32",)),  # no budget, no limit
])
def test_malformed_hidden_case_names_the_question(question, case):
    q = QUESTIONS[question]
    with pytest.raises(ValueError) as info:
        q.trials([((1, 1), [1]), case] if question == "03.split_sizes" else [("float32", 8, 4096), case])
    message = str(info.value)
    assert question in message and "hidden case 2" in message


def test_public_cases_build():
    for q in QUESTIONS.values():
        trials = q.trials()
        assert len(trials) == len(q.cases) and not any(t.hidden for t in trials)
        assert q.name == (q.answer or q.id.split(".", 1)[1])


# -- oracles and partial credit, through run_here -------------------------------------------------


def bisect(trial, budget_bytes, limit, base_bytes):
    lo, hi = 0, limit + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if trial(mid)["fits"] else (lo, mid)
    return lo


def linear(trial, budget_bytes, limit, base_bytes):
    n = 0
    while n < limit and trial(n + 1)["fits"]:
        n += 1
    return n


def test_run_here_records_the_oracle_calls_of_a_search_on_a_recorded_curve():
    trial = QUESTIONS["04.find_max_batch"].trials()[0]  # float32 on an H200, 16 GiB
    assert trial.inputs == {"budget": 16 * 2**30, "limit": 4096, "base": trial.inputs["base"]} and trial.inputs["base"] > 0
    seen = run_here(trial, bisect)
    assert seen.output == 1211 and seen.error is None
    assert all(name == "trial" and len(args) == 1 and isinstance(args[0], int) for name, args in seen.calls)
    assert seen.calls[0] == ("trial", [2048])
    fits = trial.oracles["trial"]
    assert fits(1211)["fits"] and fits(1211)["reserved"] <= 16 * 2**30 and not fits(1212)["fits"]
    assert fits(1212)["reserved"] is None  # out of memory leaves no peak


def test_a_correct_but_slower_search_earns_part_of_the_trial_and_says_why():
    trial = QUESTIONS["04.find_max_batch"].trials()[0]
    with pytest.raises(Partial) as bisected:
        trial.judge(run_here(trial, bisect))
    assert bisected.value.credit == 0.25 and "bisection 12" in bisected.value.expected  # the naive baseline's own count
    with pytest.raises(Partial) as scanned:
        trial.judge(run_here(trial, linear))
    assert scanned.value.credit == 0.25 and scanned.value.got == "1212"


def test_find_max_batch_scores_a_bisection_a_quarter_and_a_wrong_or_unproven_answer_nothing():
    q = QUESTIONS["04.find_max_batch"]
    assert grade_here(q.id, bisect).points == 0.25 * q.points
    assert grade_here(q.id, lambda trial, budget, limit, base: 1211).points == 0  # known, not proven
    trial = q.trials()[0]
    with pytest.raises(Mismatch) as wrong:
        trial.judge(run_here(trial, lambda t, budget, limit, base: bisect(t, budget, limit, base) - 1))
    assert wrong.value.expected == "1211"


def test_partial_credit_adds_up_in_the_score():
    trials = [_trial("a()", 1), _trial("b()", 1)]

    def half(seen):
        raise Partial("b()", "fast", "slow", credit=0.5)

    trials[1] = Trial("b()", "call", {"args": []}, half)
    result = score("q", trials, [_seen(1), _seen(1)], 4)
    assert result.points == 3.0 and result.passed == 1 and result.feedback == ["b(): expected fast, got slow"]


def test_run_here_turns_a_raise_into_an_error():
    trial = QUESTIONS["03.split_sizes"].trials()[0]
    seen = run_here(trial, lambda n, k: 1 // 0)
    assert seen.output is None and "ZeroDivisionError" in seen.error


def test_run_here_numpy_answer_passes():
    q = QUESTIONS["03.split_sizes"]
    assert grade_here(q.id, lambda n, k: np.array(split_sizes(n, k))).points == q.points
    assert grade_here(q.id, lambda n, k: AlwaysEqual()).points == 0
