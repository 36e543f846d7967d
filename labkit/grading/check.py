"""`check("01.batch_due", batch_due)`: a question's public tests, run in the learner's notebook."""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.grading.questions import QUESTIONS, Mismatch

__all__ = ["Score", "check", "score"]


@dataclass
class Score:
    question: str
    points: float
    out_of: float
    passed: int
    total: int
    feedback: list[str] = field(default_factory=list)

    def report(self) -> str:
        head = f"{self.question}: {self.points:g} / {self.out_of:g} points ({self.passed} of {self.total} tests passed)"
        return "\n".join([head, *(f"  - {line}" for line in self.feedback)])


def score(question: str, answer: Any, tests: Sequence[Callable[[Any], None]], out_of: float) -> Score:
    """Run ``tests`` on ``answer``; every failure becomes a line of feedback, never an exception."""
    passed, feedback = 0, []
    for test in tests:
        try:
            test(answer)
            passed += 1
        except Mismatch as m:
            feedback.append(str(m))
        except NotImplementedError as e:
            feedback.append(f"not answered yet{': ' + str(e) if str(e) else ''}")
        except SystemExit as e:
            feedback.append(f"the answer called sys.exit({e.code!r}); return a value instead")
        except Exception as e:  # the learner's code failing is feedback, not a crash
            where = traceback.extract_tb(e.__traceback__)[-1]
            feedback.append(f"the answer raised {type(e).__name__}: {e} (line {where.lineno} of {where.name})")
    points = round(out_of * passed / len(tests), 2) if tests else 0.0
    counts = Counter(feedback)  # an unanswered stub fails every test the same way: say it once
    lines = [line + (f" ({counts[line]} tests)" if counts[line] > 1 else "") for line in counts]
    return Score(question, points, out_of, passed, len(tests), lines)


def check(question: str, answer: Any) -> float:
    """Run ``question``'s public tests on ``answer``, print what passed and why not, return the
    points earned. Never raises: a broken answer is reported, the notebook goes on."""
    q = QUESTIONS.get(question)
    if q is None:
        print(f"no question {question!r}; questions are: {', '.join(QUESTIONS)}")
        return 0.0
    result = score(q.id, answer, q.tests, q.points)
    print(result.report() + ("" if result.feedback else "\n  all public tests pass"))
    return result.points
