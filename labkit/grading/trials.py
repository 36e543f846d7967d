"""What a question asks and how an answer is judged, split so that the verdict never depends on
code a submission can reach.

A `Trial` is one test: a *probe* (labkit.grading.probes) that calls the answer on inputs the
grader chose and returns what came back as plain data, optional *oracles* the answer calls back
into (served, and counted, by the grader), and a *judge* that compares the `Observation` with the
expected value. Under `labkit grade` the probe runs in the submission's sandboxed process and
everything else in the grader's; in a learner's notebook (`check`) all of it runs in place.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from labkit.grading.plain import describe, same, to_plain, value_of

__all__ = ["Mismatch", "Partial", "Observation", "Oracle", "Trial", "Question", "Score", "calls", "equal", "run_rounds",
           "score", "speed_credit"]

MAX_FEEDBACK_LINES = 20
MAX_LINE = 500


class Mismatch(AssertionError):
    """A wrong answer, with everything the learner needs to see why."""

    def __init__(self, call: str, expected: str, got: str, hint: str = "") -> None:
        self.call, self.expected, self.got, self.hint = call, expected, got, hint
        super().__init__(f"{call}: expected {expected}, got {got}" + (f". Hint: {hint}" if hint else ""))


class Partial(Mismatch):
    """A right answer short of full marks (a correct but slower search, a modest speed-up): the
    trial earns ``credit`` (0 to 1) of its share, and the learner sees why not all of it."""

    def __init__(self, call: str, expected: str, got: str, hint: str = "", *, credit: float) -> None:
        super().__init__(call, expected, got, hint)
        self.credit = min(1.0, max(0.0, credit))


@dataclass(frozen=True)
class Observation:
    """What one probe saw. ``output`` and ``extra`` come from the answer's process as plain data;
    ``calls`` and ``seconds`` are the grader's own record."""

    output: Any = None
    error: str | None = None  # what the answer raised, as text
    calls: tuple[tuple[str, list], ...] = ()  # oracle calls in order: (name, args)
    seconds: float = 0.0  # wall time around the probe, measured by the grader
    extra: dict = field(default_factory=dict)  # what the probe measured beside the answer
    # a speed trial's rounds: (reference seconds, answer seconds) each, both timed by the grader,
    # and every round's output (``output`` is the first)
    rounds: tuple[tuple[float, float], ...] = ()
    outputs: tuple[Any, ...] = ()

    @property
    def speedup(self) -> float:
        """Median over rounds of reference time / answer time (nan without rounds)."""
        ratios = [ref / ans for ref, ans in self.rounds if ans > 0]
        return statistics.median(ratios) if ratios else float("nan")


Judge = Callable[[Observation], None]
Oracle = Callable[[str, list], Any]  # how a probe calls back into the grader: (name, args) -> value


@dataclass(frozen=True)
class Trial:
    call: str  # how the learner reads this test: "split_sizes(10, 3)"
    probe: str
    inputs: Any  # plain data, all the probe is given
    judge: Judge  # raises Mismatch
    hint: str = ""
    oracles: dict[str, Callable[..., Any]] = field(default_factory=dict)
    hidden: bool = False  # an instructor's test: its failures name no values
    # A speed trial: ``reference(inputs)`` is the naive baseline, run and timed in the grader's own
    # process (no submission code can reach it), interleaved with ``rounds`` runs of the probe.
    reference: Callable[[Any], Any] | None = None
    rounds: int = 1


def run_rounds(trial: Trial, run_once: Callable[[Any], Observation]) -> Observation:
    """One observation of ``trial``: the probe once, or for a speed trial ``rounds`` rounds of the
    reference and the probe, in alternating order (so that a drifting machine speed favours
    neither), each round with its own inputs (``round`` added: an answer cannot replay the last
    one). Stops at the first round that errs."""
    if trial.reference is None:
        return run_once(trial.inputs)
    timings, seen = [], []
    for number in range(trial.rounds):
        inputs = {**trial.inputs, "round": number}
        order = ("reference", "answer") if number % 2 == 0 else ("answer", "reference")
        for part in order:
            if part == "reference":
                start = time.perf_counter()
                trial.reference(inputs)
                reference_s = time.perf_counter() - start
            else:
                seen.append(run_once(inputs))
        if seen[-1].error is not None:
            return seen[-1]
        timings.append((reference_s, seen[-1].seconds))
    calls = tuple(c for s in seen for c in s.calls)
    return replace(seen[0], calls=calls, seconds=sum(s.seconds for s in seen), rounds=tuple(timings),
                   outputs=tuple(s.output for s in seen))


def speed_credit(speedup: float, *, naive: float, full: float) -> float:
    """Credit for a measured speed-up: 0 at or below ``naive`` (no better than the naive design),
    1 at or above ``full`` (as good as labkit), linear between."""
    if not speedup == speedup:  # nan: nothing measured
        return 0.0
    return min(1.0, max(0.0, (speedup - naive) / (full - naive)))


@dataclass(frozen=True)
class Question:
    """A graded question: its cases are data, and ``build`` makes each one a `Trial`, so that
    public and hidden cases share one form and one judge.

    ``kind`` says what it grades: ``"behaviour"`` (right answers, right outcomes) or ``"speed"``
    (a ratio against a naive baseline measured in the same run); ``minutes`` is the expected
    learner time; ``budget_s`` the grading time a speed question declares (well within the
    grader's default timeout; `labkit grade` refuses a ``--timeout`` under twice it).
    """

    id: str
    title: str
    points: float
    build: Callable[..., Trial]  # one case (plain data) -> one trial
    cases: tuple[tuple, ...]  # the public ones
    kind: str = "behaviour"
    minutes: int = 10
    budget_s: float = 0.0  # the grading time a speed question declares (0: none)
    answer: str = ""  # the definition graded, when not the id's name (two questions on one answer)

    @property
    def name(self) -> str:
        """The definition the notebook must make: ``03.split_sizes`` -> ``split_sizes``."""
        return self.answer or self.id.split(".", 1)[1]

    def trials(self, hidden: Iterable[Sequence[Any]] = ()) -> list[Trial]:
        """The public trials, then one per hidden case (`ValueError` for a malformed case)."""
        made = [self.build(*case) for case in self.cases]
        for number, case in enumerate(hidden, 1):
            try:
                made.append(replace(self.build(*case), hidden=True))
            except Exception as e:
                raise ValueError(f"hidden case {number} of {self.id} ({case!r}) is not of the form "
                                 f"{self.build.__doc__}: {type(e).__name__}: {e}") from None
        return made


def calls(name: str) -> Callable[..., Trial]:
    """The case builder of a question that calls its answer with arguments and wants one value."""
    def build(args: Sequence[Any], expected: Any, hint: str = "") -> Trial:
        """(args, expected, hint)"""
        call = f"{name}({', '.join(repr(a) for a in args)})"
        return Trial(call, "call", {"args": to_plain(list(args))}, equal(call, expected, hint), hint)
    return build


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


def _verdict(trial: Trial, seen: Observation | None, missing: str) -> tuple[float, str, str] | None:
    """None when the trial passed, else (credit, the reason in full, what makes two reasons the same)."""
    if seen is None:
        return 0.0, f"{trial.call}: {missing}", missing
    if seen.error is not None:  # an unanswered stub fails every test the same way: said once
        return 0.0, f"{trial.call}: {seen.error}", seen.error
    try:
        trial.judge(seen)
    except Partial as p:
        return p.credit, str(p), str(p)
    except Mismatch as m:
        return 0.0, str(m), str(m)
    except Exception as e:  # data shaped like nothing an answer returns: forged on the channel
        return 0.0, f"{trial.call}: a result that cannot be judged ({type(e).__name__}: {e})", "unjudgeable"
    return None


def score(question: str, trials: Sequence[Trial], seen: Sequence[Observation | None], out_of: float, *,
          missing: str = "not run") -> Score:
    """Points in proportion to the trials passed, a `Partial` trial counting its credit (never
    above ``out_of``). A hidden trial's feedback names its hint only: the values it used stay
    with the instructor."""
    passed, credit, details = 0, 0.0, []
    lines: dict[str, list] = {}  # same reason -> [the first in full, how many]
    for trial, observation in zip(trials, seen, strict=True):
        verdict = _verdict(trial, observation, missing)
        if verdict is None:
            passed += 1
            credit += 1.0
            continue
        part, reason, key = verdict
        credit += part
        details.append(_clip(reason))
        if trial.hidden:
            reason = key = "a hidden test did not pass" + (f" (hint: {trial.hint})" if trial.hint else "")
        lines.setdefault(key, [_clip(reason), 0])[1] += 1
    feedback = [line + (f" ({count} tests)" if count > 1 else "") for line, count in lines.values()]
    if len(feedback) > MAX_FEEDBACK_LINES:
        feedback = [*feedback[:MAX_FEEDBACK_LINES], f"... and {len(feedback) - MAX_FEEDBACK_LINES} more"]
    points = min(out_of, round(out_of * credit / len(trials), 2)) if trials else 0.0
    return Score(question, points, out_of, passed, len(trials), feedback, details)
