"""`labkit grade`: grade a class's submitted notebooks, one isolated process per question.

Each (submission, question) runs in a fresh process (`labkit.grading.runner`) in an empty
temporary directory, with a wall-clock limit and a memory limit. An endless loop, a crash,
``sys.exit``, ``os._exit``, a huge allocation or a deleted file costs that student that question,
never the run or anyone else. Every submission gets a row in the CSV, with the reason when it
could not be graded, and a feedback file.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from labkit.grading.questions import QUESTIONS

__all__ = ["Outcome", "exercise_of", "grade_one", "grade_all", "collect_submissions"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """One question of one submission."""

    question: str
    points: float
    out_of: float
    feedback: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the run: cells that failed, time-outs


def collect_submissions(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched for ``*.ipynb`` (checkpoints left out)."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            found.append(p)
    return found


def exercise_of(path: Path) -> str:
    """The exercise a submission answers: its notebook metadata, else an ``NN_`` in its name."""
    try:
        number = nbformat.read(path, as_version=4).metadata.get("labkit", {}).get("exercise")
    except Exception as e:
        raise ValueError(f"not a readable notebook: {type(e).__name__}: {e}") from None
    match = re.search(r"(?:^|[^0-9])(\d\d)_", path.name)
    number = number or (match and match.group(1))
    if not number or not any(q.startswith(f"{number}.") for q in QUESTIONS):
        raise ValueError("cannot tell which exercise this is (no labkit.exercise metadata, no known NN_ in its name)")
    return number


def grade_one(notebook: Path, question: str, *, tests: Path | None = None, timeout_s: float = 60.0,
              memory_mb: int = 4096) -> Outcome:
    """``question`` of ``notebook``, graded in a fresh process in an empty directory."""
    q = QUESTIONS[question]
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as work:
        copy = Path(work) / "submission.ipynb"
        shutil.copyfile(notebook, copy)
        read_end, write_end = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]),
                   MPLBACKEND="Agg")
        command = [sys.executable, "-m", "labkit.grading.runner", str(copy), question, str(write_end),
                   "--memory-mb", str(memory_mb)]
        if tests is not None:
            command += ["--tests", str(tests.resolve())]
        with open(Path(work) / "output.txt", "wb") as output:
            proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.PIPE, stdout=output,
                                    stderr=subprocess.STDOUT, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        try:
            proc.stdin.write((nonce + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: threads and children it started
            proc.wait()
            timed_out = True
        with os.fdopen(read_end, "rb") as pipe:
            lines = pipe.read().decode(errors="replace").splitlines()
    result = next((line[len(nonce):] for line in reversed(lines) if line.startswith(nonce)), None)
    if timed_out:
        return Outcome(question, 0.0, q.points, notes=[f"did not finish within {timeout_s:g} s (an endless loop?)"])
    if result is None:
        return Outcome(question, 0.0, q.points, notes=[
            f"the grading process ended (exit code {proc.returncode}) before a result: os._exit, a crash, or the memory limit"])
    data = json.loads(result)
    if "error" in data:
        return Outcome(question, 0.0, q.points, notes=[data["error"]])
    return Outcome(question, data["points"], q.points, data["feedback"], data["notes"])


@dataclass
class Row:
    submission: Path
    exercise: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    reason: str = ""

    @property
    def total(self) -> float:
        return round(sum(o.points for o in self.outcomes), 2)


def grade_all(submissions: list[Path], out_csv: Path, *, tests: Path | None = None, jobs: int = 1,
              timeout_s: float = 60.0, memory_mb: int = 4096, feedback_dir: Path | None = None,
              progress: bool = True) -> list[Row]:
    """Grade every submission, write the CSV and one feedback file per submission."""
    rows = [Row(p) for p in submissions]
    work: list[tuple[Row, str]] = []
    for row in rows:
        try:
            row.exercise = exercise_of(row.submission)
            work += [(row, q) for q in QUESTIONS if q.startswith(f"{row.exercise}.")]
        except (OSError, ValueError) as e:
            row.reason = str(e)

    def run(item: tuple[Row, str]) -> tuple[Row, Outcome]:
        row, question = item
        return row, grade_one(row.submission, question, tests=tests, timeout_s=timeout_s, memory_mb=memory_mb)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(run, item) for item in work]
        for done in tqdm(as_completed(futures), total=len(work), desc="grading", unit="question",
                         disable=not progress):
            row, outcome = done.result()
            row.outcomes.append(outcome)
    for row in rows:
        row.outcomes.sort(key=lambda o: list(QUESTIONS).index(o.question))
    _write_csv(rows, out_csv)
    feedback_dir = feedback_dir or out_csv.parent / "feedback"
    feedback_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (feedback_dir / f"{row.submission.stem}.txt").write_text(_feedback(row))
    return rows


def _write_csv(rows: list[Row], path: Path) -> None:
    questions = [q for q in QUESTIONS if any(o.question == q for r in rows for o in r.outcomes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "exercise", "total", "out_of", *questions, "reason"])
        for row in rows:
            by_q = {o.question: o for o in row.outcomes}
            out_of = sum(o.out_of for o in row.outcomes)
            notes = "; ".join(n for o in row.outcomes for n in o.notes if "did not finish" in n or "ended" in n)
            writer.writerow([str(row.submission), row.exercise, row.total, out_of,
                             *(by_q[q].points if q in by_q else "" for q in questions), row.reason or notes])


def _feedback(row: Row) -> str:
    lines = [f"Submission: {row.submission.name}"]
    if row.reason:
        return "\n".join([*lines, f"Not graded: {row.reason}", ""])
    lines.append(f"Exercise {row.exercise}: {row.total:g} / {sum(o.out_of for o in row.outcomes):g} points")
    notes = list(dict.fromkeys(n for o in row.outcomes for n in o.notes))  # each run repeats the cells' errors
    if notes:
        lines += ["", "While your notebook ran:", *(f"  ! {n}" for n in notes)]
    for o in sorted(row.outcomes, key=lambda o: o.question):
        lines += ["", f"{o.question} ({QUESTIONS[o.question].title}): {o.points:g} / {o.out_of:g}"]
        lines += [f"  - {line}" for line in o.feedback]
    return "\n".join(lines) + "\n"
