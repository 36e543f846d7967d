"""What a question asks and how an answer is judged, split so that the verdict never depends on
code a submission can reach.

A `Trial` is one test: a *probe* (labkit.grading.probes) that calls the answer on inputs the
grader chose and returns what came back as plain data, optional *oracles* the answer calls back
into (served, and counted, by the grader), and a *judge* that compares the `Observation` with the
expected value. Under `labkit grade` the probe runs in the submission's sandboxed process and
everything else in the grader's; in a learner's notebook (`check`) all of it runs in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.grading.plain import describe, same, to_plain, value_of

__all__ = ["Mismatch", "Observation", "Trial", "Score", "equal", "score"]

MAX_FEEDBACK_LINES = 20
MAX_LINE = 500


class Mismatch(AssertionError):
    """A wrong answer, with everything the learner needs to see why."""

    def __init__(self, call: str, expected: str, got: str, hint: str = "") -> None:
        self.call, self.expected, self.got, self.hint = call, expected, got, hint
        super().__init__(f"{call}: expected {expected}, got {got}" + (f". Hint: {hint}" if hint else ""))


@dataclass(frozen=True)
class Observation:
    """What one probe saw. ``output`` and ``extra`` come from the answer's process as plain data;
    ``calls`` and ``seconds`` are the grader's own record."""

    output: Any = None
    error: str | None = None  # what the answer raised, as text
    calls: tuple[tuple[str, list], ...] = ()  # oracle calls in order: (name, args)
    seconds: float = 0.0  # wall time around the probe, measured by the grader
    extra: dict = field(default_factory=dict)  # what the probe measured beside the answer


Judge = Callable[[Observation], None]


@dataclass(frozen=True)
class Trial:
    call: str  # how the learner reads this test: "split_sizes(10, 3)"
    probe: str
    inputs: Any  # plain data, all the probe is given
    judge: Judge  # raises Mismatch
    hint: str = ""
    oracles: dict[str, Callable[..., Any]] = field(default_factory=dict)
    hidden: bool = False  # an instructor's test: its failures name no values


def equal(call: str, expected: Any, hint: str = "") -> Judge:
    """A judge that wants ``expected`` (compared as plain data; an array or a tensor counts as
    its values, so a correct numpy answer to a list question passes)."""
    want = to_plain(expected)

    def judge(seen: Observation) -> None:
        if not same(value_of(seen.output), value_of(want)):
            raise Mismatch(call, describe(want), describe(seen.output), hint)

    return judge


@dataclass
class Score:
    question: str
    points: float
    out_of: float
    passed: int
    total: int
    feedback: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # the instructor's: every failure in full

    def report(self) -> str:
        head = f"{self.question}: {self.points:g} / {self.out_of:g} points ({self.passed} of {self.total} tests passed)"
        return "\n".join([head, *(f"  - {line}" for line in self.feedback)])


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + " [...]"


def _verdict(trial: Trial, seen: Observation | None, missing: str) -> tuple[str, str] | None:
    """None when the trial passed, else (the reason in full, what makes two reasons the same)."""
    if seen is None:
        return f"{trial.call}: {missing}", missing
    if seen.error is not None:  # an unanswered stub fails every test the same way: said once
        return f"{trial.call}: {seen.error}", seen.error
    try:
        trial.judge(seen)
    except Mismatch as m:
        return str(m), str(m)
    except Exception as e:  # data shaped like nothing an answer returns: forged on the channel
        return f"{trial.call}: a result that cannot be judged ({type(e).__name__}: {e})", "unjudgeable"
    return None


def score(question: str, trials: Sequence[Trial], seen: Sequence[Observation | None], out_of: float, *,
          missing: str = "not run") -> Score:
    """Points in proportion to the trials passed (never above ``out_of``). A hidden trial's
    feedback names its hint only: the values it used stay with the instructor."""
    passed, details = 0, []
    lines: dict[str, list] = {}  # same reason -> [the first in full, how many]
    for trial, observation in zip(trials, seen, strict=True):
        verdict = _verdict(trial, observation, missing)
        if verdict is None:
            passed += 1
            continue
        reason, key = verdict
        details.append(_clip(reason))
        if trial.hidden:
            reason = key = "a hidden test did not pass" + (f" (hint: {trial.hint})" if trial.hint else "")
        lines.setdefault(key, [_clip(reason), 0])[1] += 1
    feedback = [line + (f" ({count} tests)" if count > 1 else "") for line, count in lines.values()]
    if len(feedback) > MAX_FEEDBACK_LINES:
        feedback = [*feedback[:MAX_FEEDBACK_LINES], f"... and {len(feedback) - MAX_FEEDBACK_LINES} more"]
    points = min(out_of, round(out_of * passed / len(trials), 2)) if trials else 0.0
    return Score(question, points, out_of, passed, len(trials), feedback, details)
