"""`check("01.batch_due", batch_due)`: a question's public tests, run in the learner's notebook.

The same trials `labkit grade` runs, judged the same way; here the probe, the oracles and the
judge all run in place.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labkit.grading.plain import to_plain
from labkit.grading.probes import observe
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import Observation, Score, Trial, run_rounds, score

__all__ = ["check", "grade_here", "run_here"]


def _as_sent(plain: Any) -> Any:
    """What crossing the grader's pipe makes of plain data: JSON's lists for tuples."""
    return json.loads(json.dumps(plain))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_here(trial: Trial, answer: Any) -> Observation:
    """One trial in this process, as the grader would see it (a speed trial's rounds included)."""

    def run_once(inputs: Any) -> Observation:
        calls: list[tuple[str, list]] = []

        def oracle(name: str, args: list) -> Any:
            calls.append((name, _as_sent(to_plain(args))))
            return trial.oracles[name](*calls[-1][1])

        start = time.perf_counter()
        output, error, extra = observe(trial.probe, _as_sent(inputs), answer, oracle)
        seconds = time.perf_counter() - start
        return Observation(_as_sent(output), error, tuple(calls), seconds, _as_sent(extra))

    if _loop_running():  # Jupyter runs cells inside an event loop; a probe or a reference may start its own
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(run_rounds, trial, run_once).result()
    return run_rounds(trial, run_once)


def grade_here(question: str, answer: Any) -> Score:
    q = QUESTIONS[question]
    trials = q.trials()
    return score(q.id, trials, [run_here(t, answer) for t in trials], q.points)


def check(question: str, answer: Any) -> float:
    """Run ``question``'s public tests on ``answer``, print what passed and why not, return the
    points earned. Never raises: a broken answer is reported, the notebook goes on."""
    if question not in QUESTIONS:
        print(f"no question {question!r}; questions are: {', '.join(QUESTIONS)}")
        return 0.0
    result = grade_here(question, answer)
    print(result.report() + ("" if result.feedback else "\n  all public tests pass"))
    return result.points
