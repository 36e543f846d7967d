"""Exercise 00's judges: a right answer passes, each typical wrong one fails with a hint naming its
mistake (answers run in place through `grade_here`, as `check` runs them in a notebook)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from labkit.grading.check import grade_here, run_here
from labkit.grading.exercises import ex00_measuring as ex
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import Score, score

HIDDEN = Path(__file__).parent / "hidden" / "hidden_00.py"


def _feedback(score: Score) -> str:
    return "\n".join(score.feedback)


def _full(question: str, answer) -> None:
    score = grade_here(question, answer)
    assert score.points == score.out_of and not score.feedback, score.report()


def _fails(question: str, answer, *phrases: str) -> str:
    score = grade_here(question, answer)
    text = _feedback(score)
    assert score.points < score.out_of, score.report()
    for phrase in phrases:
        assert phrase in text, text
    return text


# -- 00.bench -----------------------------------------------------------------------------------


def _summary(samples: list[float]) -> dict:
    return {"p50_ms": statistics.median(samples), "p99_ms": float(np.percentile(samples, 99)),
            "mean_ms": statistics.fmean(samples)}


def _honest_samples(fn, sync, clock, warmup, repeat) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        sync()
        start = clock()
        fn()
        sync()
        samples.append((clock() - start) * 1e3)
    return samples


def bench(fn, sync, clock, *, warmup, repeat):
    return _summary(_honest_samples(fn, sync, clock, warmup, repeat))


def bench_nearest_rank(fn, sync, clock, *, warmup, repeat):
    """Sync once after the warm-up and after each call (enough), nearest-rank percentiles."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        sync()
        samples.append((clock() - start) * 1e3)
    s = sorted(samples)
    rank = lambda q: s[max(1, math.ceil(q / 100 * len(s))) - 1]  # noqa: E731
    return {"p50_ms": rank(50), "p99_ms": rank(99), "mean_ms": sum(s) / len(s)}


def bench_quantiles(fn, sync, clock, *, warmup, repeat):
    """statistics.quantiles' default (exclusive) method."""
    samples = _honest_samples(fn, sync, clock, warmup, repeat)
    cuts = statistics.quantiles(samples, n=100) if repeat > 1 else samples * 99  # it needs two samples
    return {"p50_ms": cuts[49], "p99_ms": cuts[98], "mean_ms": statistics.fmean(samples)}


def bench_no_sync(fn, sync, clock, *, warmup, repeat):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples.append((clock() - start) * 1e3)
    return _summary(samples)


def bench_clock_before_sync(fn, sync, clock, *, warmup, repeat):
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples.append((clock() - start) * 1e3)
        sync()
    return _summary(samples)


def bench_sync_at_end(fn, sync, clock, *, warmup, repeat):
    for _ in range(warmup):
        fn()
    sync()
    start = clock()
    for _ in range(repeat):
        fn()
    sync()
    per_call = (clock() - start) * 1e3 / repeat
    return {"p50_ms": per_call, "p99_ms": per_call, "mean_ms": per_call}


def bench_warmup_timed(fn, sync, clock, *, warmup, repeat):
    samples = []
    for _ in range(warmup + repeat):
        sync()
        start = clock()
        fn()
        sync()
        samples.append((clock() - start) * 1e3)
    return _summary(samples)


def bench_warmup_queued(fn, sync, clock, *, warmup, repeat):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        sync()
        samples.append((clock() - start) * 1e3)
    return _summary(samples)


def bench_max(fn, sync, clock, *, warmup, repeat):
    samples = _honest_samples(fn, sync, clock, warmup, repeat)
    return _summary(samples) | {"p99_ms": max(samples)}


def bench_one_extra(fn, sync, clock, *, warmup, repeat):
    for _ in range(warmup):
        fn()
    return bench(fn, sync, clock, warmup=0, repeat=repeat + 1)


def bench_no_warmup(fn, sync, clock, *, warmup, repeat):
    return bench(fn, sync, clock, warmup=0, repeat=repeat)


def bench_seconds(fn, sync, clock, *, warmup, repeat):
    return {k: v / 1e3 for k, v in bench(fn, sync, clock, warmup=warmup, repeat=repeat).items()}


def bench_tuple(fn, sync, clock, *, warmup, repeat):
    out = bench(fn, sync, clock, warmup=warmup, repeat=repeat)
    return out["p50_ms"], out["p99_ms"], out["mean_ms"]


@pytest.mark.parametrize("answer", [bench, bench_nearest_rank, bench_quantiles])
def test_an_honest_bench_gets_full_marks(answer):
    _full("00.bench", answer)


def test_every_percentile_definition_agrees_on_every_case_public_and_hidden():
    """So that the feedback shows one expected number, and no fair definition is marked wrong."""
    namespace: dict = {}
    exec(HIDDEN.read_text(), namespace)
    cases = [*QUESTIONS["00.bench"].cases, *namespace["TESTS"]["00.bench"]]
    for _warmup_ms, kernel_ms, *rest in cases:
        host_us = rest[1] if len(rest) > 1 else 5.0
        samples = [host_us / 1e3 + k for k in kernel_ms]
        for q in (50, 99):
            values = ex.percentiles(samples, q)
            assert max(values) - min(values) < 1e-9, (q, values)
    typical = [0.005 + k for k in QUESTIONS["00.bench"].cases[0][1]]
    assert max(typical) > 3 * ex.percentiles(typical, 99)[0]  # so a max for p99 fails


def test_no_sync_fails_saying_it_timed_the_launch():
    _fails("00.bench", bench_no_sync, "calls of sync", "times just the launch", "expected at least one per timed call")


def test_reading_the_clock_before_sync_fails_saying_it_timed_the_launch():
    text = _fails("00.bench", bench_clock_before_sync, "p50_ms, p99_ms, mean_ms wrong", "times just the launch")
    assert "'p50_ms': 2.205" in text  # what was expected is shown


def test_syncing_once_at_the_end_fails_saying_it_averages():
    _fails("00.bench", bench_sync_at_end, "one average, no spread")


def test_timing_the_warmup_fails():
    _fails("00.bench", bench_warmup_timed, "warm-up calls were timed too")


def test_leaving_the_warmup_queued_fails():
    _fails("00.bench", bench_warmup_queued, "queued warm-up kernels")


def test_max_for_p99_fails():
    _fails("00.bench", bench_max, "p99_ms wrong", "not the slowest call")


@pytest.mark.parametrize("answer", [bench_one_extra, bench_no_warmup])
def test_a_wrong_number_of_calls_fails(answer):
    _fails("00.bench", answer, "calls of fn", "warm-up +")


def test_seconds_for_milliseconds_fails():
    _fails("00.bench", bench_seconds, "these are seconds")


def test_not_a_dict_fails():
    _fails("00.bench", bench_tuple, "return a dict with the keys p50_ms, p99_ms and mean_ms")


def test_the_stub_scores_zero():
    def stub(fn, sync, clock, *, warmup, repeat):
        raise NotImplementedError("your answer here")

    score = grade_here("00.bench", stub)
    assert score.points == 0 and "not answered yet" in _feedback(score)


# -- 00.compare ---------------------------------------------------------------------------------


def compare(a, b, clock, *, rounds):
    ratios = []
    for _ in range(rounds):
        start = clock()
        a()
        middle = clock()
        b()
        ratios.append((middle - start) / (clock() - middle))
    return statistics.median(ratios)


def compare_alternating(a, b, clock, *, rounds):
    ratios = []
    for i in range(rounds):
        times = {}
        for name, f in ((("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))):
            start = clock()
            f()
            times[name] = clock() - start
        ratios.append(times["a"] / times["b"])
    return statistics.median(ratios)


def compare_warmed_up(a, b, clock, *, rounds):
    a(), b()
    return compare(a, b, clock, rounds=rounds)


def compare_sequential(a, b, clock, *, rounds):
    start = clock()
    for _ in range(rounds):
        a()
    middle = clock()
    for _ in range(rounds):
        b()
    return (middle - start) / (clock() - middle)


def compare_sequential_median(a, b, clock, *, rounds):
    def times(f):
        out = []
        for _ in range(rounds):
            start = clock()
            f()
            out.append(clock() - start)
        return out

    return statistics.median(x / y for x, y in zip(times(a), times(b), strict=True))


def compare_mean(a, b, clock, *, rounds):
    ratios = []
    for _ in range(rounds):
        start = clock()
        a()
        middle = clock()
        b()
        ratios.append((middle - start) / (clock() - middle))
    return statistics.fmean(ratios)


def compare_totals(a, b, clock, *, rounds):
    time_a = time_b = 0.0
    for _ in range(rounds):
        start = clock()
        a()
        middle = clock()
        b()
        time_a, time_b = time_a + middle - start, time_b + clock() - middle
    return time_a / time_b


def compare_inverted(a, b, clock, *, rounds):
    return 1 / compare(a, b, clock, rounds=rounds)


def compare_one_round(a, b, clock, *, rounds):
    return compare(a, b, clock, rounds=1)


@pytest.mark.parametrize("answer", [compare, compare_alternating, compare_warmed_up])
def test_interleaved_rounds_with_a_median_get_full_marks(answer):
    _full("00.compare", answer)


@pytest.mark.parametrize("answer", [compare_sequential, compare_sequential_median])
def test_all_of_a_then_all_of_b_fails_on_a_drifting_machine(answer):
    text = _fails("00.compare", answer, "not interleaved", "(1 + 0.5·t)x its base time")
    assert "stalls for 400 ms: expected 0.5 (within 5%), got 3.833. Hint: one round hit a stall" in text or \
        answer is compare_sequential_median


@pytest.mark.parametrize("answer", [compare_mean, compare_totals])
def test_a_mean_fails_on_a_stall(answer):
    text = _fails("00.compare", answer, "stalls for 400 ms", "median of the per-round ratios")
    assert grade_here("00.compare", answer).passed == 2, text  # only the stall case fails


def test_an_inverted_ratio_fails():
    _fails("00.compare", compare_inverted, "return time_a / time_b")


def test_too_few_rounds_fails():
    _fails("00.compare", compare_one_round, "calls of a and b", "at least 21 each")


def test_the_biases_are_far_outside_the_tolerance():
    """The judge's margin: interleaving lands well inside it, the mistakes well outside."""
    inputs = QUESTIONS["00.compare"].cases[0]
    machine = ex.DriftingMachine(inputs[0], inputs[1], inputs[3], None)
    fixed_order = statistics.median(ex._round_ratios(machine, inputs[2]))
    sequential = ex._one_after_the_other(ex.DriftingMachine(inputs[0], inputs[1], inputs[3], None), inputs[2])
    truth = inputs[0] / inputs[1]
    assert abs(fixed_order / truth - 1) < 0.02
    assert abs(sequential / truth - 1) > 3 * ex.COMPARE_TOLERANCE


# -- 00.share_of_peak ---------------------------------------------------------------------------


def share_of_peak(items_per_s, flops_per_item, peak_tflops):
    return items_per_s * flops_per_item / (peak_tflops * 1e12)


def test_share_of_peak():
    _full("00.share_of_peak", share_of_peak)
    _fails("00.share_of_peak", lambda i, f, p: 100 * share_of_peak(i, f, p), "not a percentage")
    _fails("00.share_of_peak", lambda i, f, p: i * f / p, "multiply it by 1e12")


# -- the hidden cases ---------------------------------------------------------------------------


def _hidden(question: str, answer) -> Score:
    namespace: dict = {}
    exec(HIDDEN.read_text(), namespace)
    q = QUESTIONS[question]
    cases = json.loads(json.dumps(namespace["TESTS"][question]))  # as the grader receives them
    trials = [t for t in q.trials(cases) if t.hidden]
    return score(q.id, trials, [run_here(t, answer) for t in trials], q.points)


@pytest.mark.parametrize(("question", "answer"), [
    ("00.bench", bench), ("00.bench", bench_nearest_rank), ("00.bench", bench_quantiles),
    ("00.compare", compare), ("00.compare", compare_alternating), ("00.share_of_peak", share_of_peak)])
def test_right_answers_pass_the_hidden_cases(question, answer):
    result = _hidden(question, answer)
    assert result.points == result.out_of, result.details


@pytest.mark.parametrize(("question", "answer", "failed"), [
    ("00.bench", bench_no_sync, 4), ("00.bench", bench_sync_at_end, 3), ("00.bench", bench_warmup_timed, 4),
    ("00.bench", bench_max, 1), ("00.compare", compare_sequential, 3), ("00.compare", compare_mean, 2),
    ("00.compare", compare_totals, 2)])
def test_wrong_answers_fail_the_hidden_cases_showing_only_the_hint(question, answer, failed):
    result = _hidden(question, answer)
    assert result.total - result.passed == failed, result.details
    assert all(line.startswith("a hidden test did not pass (hint: ") for line in result.feedback), result.feedback
