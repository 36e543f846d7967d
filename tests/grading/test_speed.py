"""Questions graded on speed: the solution earns full marks, and a correct but naive answer its
behaviour points and only the lowest speed band, every time (ten runs in a row: the bands must
hold on a noisy 2-core box). The answers are the solutions' own code, made naive in one place."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from labkit.grading.check import grade_here
from labkit.grading.questions import QUESTIONS

ROOT = Path(__file__).resolve().parents[2]
RUNS = 10


def _solution(name: str) -> dict:
    """The definitions of a solution notebook (its check cells left out)."""
    namespace: dict = {}
    for cell in nbformat.read(ROOT / "solutions" / name, as_version=4).cells:
        if cell.cell_type == "code" and "check(" not in cell.source:
            exec(cell.source, namespace)
    return namespace


def _one_batch_at_a_time():
    mini = _solution("01_dynamic_batching.ipynb")["MiniBatcher"]

    class OneAtATime(mini):  # the guide's design: the next batch waits for this one
        def __init__(self, model, max_batch_size: int = 32, max_wait_s: float = 0.005) -> None:
            super().__init__(model, max_batch_size, max_wait_s, max_inflight=1)

    return _solution("01_dynamic_batching.ipynb")["MiniBatcher"], OneAtATime


def _stages_one_after_another():
    def sequential(stages: list, items: list) -> list:
        out = []
        for x in items:
            for stage in stages:
                x = stage(x)
            out.append(x)
        return out

    return _solution("03_multi_gpu.ipynb")["run_pipeline"], sequential


def _bisection():
    def bisection(trial, budget_bytes: int, limit: int, base_bytes: int) -> int:
        lo, hi = 0, limit + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if trial(mid)["fits"] else (lo, mid)
        return lo

    return _solution("04_memory.ipynb")["find_max_batch"], bisection


def _the_given_loop():
    from labkit.grading.exercises.ex07_profiling_and_the_ladder import naive_predict

    return _solution("07_profiling_and_the_ladder.ipynb")["fast_predict"], naive_predict


def _static_batching():
    def static(running, waiting, free_blocks, block_size, max_batch_size):
        """StaticBatcher's policy: feed the batch until all of it has finished, then admit as many
        as the cache holds at max_len = 160 tokens reserved each (the grader's own baseline)."""
        def blocks(n):
            return -(-n // block_size)

        if running:
            return {"work": [[s, 1, blocks(h + 1) - blocks(h)] for s, h, _ in running], "joined": [], "preempted": []}
        joined = waiting[: min(max_batch_size, free_blocks * block_size // 160)]
        return {"work": [[s, p + g, blocks(p + g)] for s, p, g in joined], "joined": [s for s, _, _ in joined],
                "preempted": []}

    return _solution("08_generation.ipynb")["schedule"], static


# speed question -> (behaviour question it shares its answer with, or None; answers; the lowest band's points)
SPEED = {
    "01.batcher_speed": ("01.MiniBatcher", _one_batch_at_a_time, 0.0),
    "03.pipeline_speed": ("03.run_pipeline", _stages_one_after_another, 0.0),
    "04.find_max_batch": (None, _bisection, 0.25 * QUESTIONS["04.find_max_batch"].points),
    "07.predict_speed": ("07.fast_predict", _the_given_loop, 0.0),
    "08.schedule_speed": (None, _static_batching, 0.0),  # static batching is legal, but not 08.schedule's plans
}


def test_every_speed_question_is_covered_here_and_declares_its_grading_time():
    assert sorted(q.id for q in QUESTIONS.values() if q.kind == "speed") == sorted(SPEED)
    assert len(SPEED) >= 3
    from labkit.grading.grade import Settings

    for question in SPEED:
        assert 0 < 2 * QUESTIONS[question].budget_s <= Settings().timeout_s, question


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("question", sorted(SPEED))
def test_the_solution_earns_full_marks_and_a_naive_answer_the_lowest_band_ten_times(question):
    behaviour, answers, lowest = SPEED[question]
    solution, naive = answers()
    start = time.perf_counter()
    assert grade_here(question, solution).points == QUESTIONS[question].points
    assert time.perf_counter() - start <= QUESTIONS[question].budget_s, "within the time it declares"
    if behaviour is not None:
        assert grade_here(behaviour, naive).points == QUESTIONS[behaviour].points, "naive but correct"
    scores = [grade_here(question, naive) for _ in range(RUNS)]
    assert [s.points for s in scores] == [lowest] * RUNS, [s.feedback for s in scores]


def test_a_speed_up_beyond_what_the_stages_allow_is_refused_as_tampering(monkeypatch):
    import labkit.grading.exercises.ex03_multi_gpu as ex03

    solution, _ = _stages_one_after_another()
    monkeypatch.setattr(ex03, "_sleep", lambda s: None)  # as a submission patching the stages would
    result = grade_here("03.pipeline_speed", solution)
    assert result.points == 0 and "the stages must run for real" in result.feedback[0]
