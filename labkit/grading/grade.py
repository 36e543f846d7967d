"""`labkit grade`: grade a class's submitted notebooks, each question in its own sandbox.

Every (submission, question) runs in a fresh forked process (labkit.grading.supervisor), confined
and limited in time and memory, judged by a process it cannot reach. Whatever one submission does
costs that student that question, never the run or anyone else: every submission gets its row,
its feedback file and its log. Instructors' mistakes (a missing tests folder, tests that do not
import, limits the reference solutions cannot meet) are refused before anything is graded.
"""

from __future__ import annotations

import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from labkit.grading.hidden import SetupError, load_hidden
from labkit.grading.outputs import write_outputs
from labkit.grading.questions import QUESTIONS
from labkit.grading.sandbox import Sandbox
from labkit.grading.submissions import (
    Outcome,
    Row,
    collect_submissions,
    default_solutions,
    exercise_of,
)

__all__ = ["Outcome", "Pool", "Row", "Settings", "SetupError", "collect_submissions", "exercise_of", "grade_all",
           "preflight"]


@dataclass(frozen=True)
class Settings:
    timeout_s: float = 60.0
    memory_mb: int = 4096
    jobs: int = 1
    only: tuple[str, ...] = ()  # grade just these questions (regrading one after fixing its tests)

    def check_budgets(self, exercises: set[str]) -> None:
        """A question declares how long its grading takes (a speed question's rounds need their
        time); a ``--timeout`` under twice that would fail every answer to it: refused up front."""
        slow = [QUESTIONS[q] for e in sorted(exercises) for q in _questions(e, self.only)
                if 2 * QUESTIONS[q].budget_s > self.timeout_s]
        if slow:
            raise SetupError(f"--timeout {self.timeout_s:g}: {slow[0].id} declares it takes up to {slow[0].budget_s:g} s; "
                             f"give each question at least {2 * max(q.budget_s for q in slow):g} s")

    def check(self) -> None:
        unknown = [q for q in self.only if q not in QUESTIONS]
        if unknown:
            raise SetupError(f"--only {' '.join(unknown)}: no such question; questions are: {', '.join(QUESTIONS)}")
        if not self.timeout_s > 0:
            raise SetupError(f"--timeout {self.timeout_s:g}: expected a number of seconds above 0")
        if self.memory_mb < 64:
            raise SetupError(f"--memory-mb {self.memory_mb}: expected at least 64 (MB per grading process)")
        if self.jobs < 1:
            raise SetupError(f"--jobs {self.jobs}: expected 1 or more")


def _questions(exercise: str, only: tuple[str, ...] = ()) -> list[str]:
    return [q for q in QUESTIONS if q.startswith(f"{exercise}.") and (not only or q in only)]


class Pool:
    """``jobs`` sandboxes, shared by the preflight and the class; every one closed on exit."""

    def __init__(self, jobs: int) -> None:
        self.made = [Sandbox() for _ in range(jobs)]
        self.free: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        for sandbox in self.made:
            self.free.put(sandbox)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        for sandbox in self.made:
            sandbox.close()

    def run(self, rows: list[Row], hidden: dict[str, list], settings: Settings, progress: bool) -> None:
        """Grade every (row, question); fills each row's outcomes, in the questions' order."""
        work = [(row, q) for row in rows if not row.reason for q in _questions(row.exercise, settings.only)]
        with ThreadPoolExecutor(len(self.made)) as pool:
            futures = [pool.submit(self._grade, row, q, hidden.get(q, []), settings) for row, q in work]
            for done in tqdm(as_completed(futures), total=len(work), desc="grading", unit="question",
                             disable=not progress):
                row, outcome = done.result()
                row.outcomes.append(outcome)
                row.seconds += outcome.seconds
        order = list(QUESTIONS)
        for row in rows:
            row.outcomes.sort(key=lambda o: order.index(o.question))

    def _grade(self, row: Row, question: str, hidden: list, settings: Settings) -> tuple[Row, Outcome]:
        sandbox = self.free.get()
        try:
            start = time.perf_counter()
            data = sandbox.grade(row.submission, question, hidden, timeout_s=settings.timeout_s,
                                 memory_mb=settings.memory_mb)
            seconds = time.perf_counter() - start
        finally:
            self.free.put(sandbox)
        return row, Outcome(question, float(data.get("points", 0.0)), QUESTIONS[question].points,
                            list(data.get("feedback", [])), list(data.get("notes", [])),
                            list(data.get("details", [])), list(data.get("log", [])), seconds)


def preflight(pool: Pool, exercises: set[str], hidden: dict[str, list], settings: Settings, solutions: Path) -> None:
    """Grade the reference solutions of ``exercises`` under the class's tests and limits; refuse
    (SetupError) when one does not score full marks: the tests or the limits are wrong."""
    rows = []
    for exercise in sorted(exercises):
        matches = [p for p in sorted(solutions.glob("*.ipynb")) if exercise_of(p) == exercise]
        if not matches:
            raise SetupError(f"no reference solution for exercise {exercise} in {solutions}: cannot check "
                             "the tests and limits before grading (--solutions names the folder)")
        rows.append(Row(matches[0], matches[0].stem, exercise))
    pool.run(rows, hidden, settings, progress=False)
    for row in rows:
        for o in row.outcomes:
            if o.points < o.out_of:
                why = "; ".join([*o.notes, *o.details][:3]) or "no reason given"
                raise SetupError(
                    f"the reference solution {row.submission.name} scores {o.points:g} / {o.out_of:g} on {o.question} "
                    f"with these tests and limits (--timeout {settings.timeout_s:g}, --memory-mb {settings.memory_mb}): "
                    f"{why}. Fix the hidden tests or raise the limits; nothing was graded")


def _check_writable(*folders: Path) -> None:
    """Refuse before grading, not after: a folder the results cannot be written to."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise SetupError(f"cannot write results to {folder}: {e.strerror or e}") from None


def grade_all(submissions: list[Row] | list[Path], out_csv: Path, *, tests: Path | None = None,
              settings: Settings = Settings(), feedback_dir: Path | None = None, solutions: Path | None = None,
              deadline: datetime | None = None, formats: tuple[str, ...] = (), progress: bool = True) -> list[Row]:
    """Check the setup, grade every submission, then write the CSV, feedback, logs and summary.
    Raises SetupError (nothing graded, nothing written) for an instructor's mistake."""
    rows = submissions if submissions and isinstance(submissions[0], Row) else collect_submissions(list(submissions))
    settings.check()
    if out_csv.is_dir():
        raise SetupError(f"--out {out_csv}: a folder; expected the CSV file to write")
    hidden = load_hidden(tests)
    for row in rows:
        try:
            row.exercise = exercise_of(row.submission)
            row.submitted = datetime.fromtimestamp(row.submission.stat().st_mtime)
        except (OSError, ValueError) as e:
            row.reason = str(e)
    solutions = solutions or default_solutions()
    feedback_dir = feedback_dir or out_csv.parent / "feedback"
    exercises = {r.exercise for r in rows if not r.reason}
    settings.check_budgets(exercises)
    with Pool(settings.jobs) as pool:
        preflight(pool, exercises, hidden, settings, solutions)
        _check_writable(out_csv.parent, feedback_dir)
        pool.run(rows, hidden, settings, progress)
    write_outputs(rows, out_csv, feedback_dir, solutions, deadline=deadline, formats=formats)
    return rows
