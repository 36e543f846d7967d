"""What `labkit grade` writes: a CSV an LMS imports (a row per student, a column per question),
feedback per submission for its student, a log per submission and a summary for the instructor
(grading times, similar answers), and Gradescope's ``results.json`` on request."""

from __future__ import annotations

import csv
import json
import statistics
from datetime import datetime
from pathlib import Path

import nbformat

from labkit.grading.child import code_cells
from labkit.grading.questions import QUESTIONS
from labkit.grading.similarity import answer_source, similar_pairs, similarity_report
from labkit.grading.submissions import Row, exercise_of

__all__ = ["write_outputs"]

MAX_FEEDBACK_BYTES = 64 * 1024
SIMILARITY_THRESHOLD = 0.9


def _counted(rows: list[Row]) -> dict[str, list[Row]]:
    """Per student, the rows whose marks count: for each exercise, the newest submission."""
    by_student: dict[str, dict[str, Row]] = {}
    for row in rows:
        kept = by_student.setdefault(row.student, {})
        key = row.exercise or str(row.submission)
        if key not in kept or (row.submitted and kept[key].submitted and row.submitted > kept[key].submitted):
            kept[key] = row
    return {student: list(kept.values()) for student, kept in sorted(by_student.items())}


def _write_csv(rows: list[Row], path: Path, deadline: datetime | None) -> None:
    questions = [q for q in QUESTIONS if any(o.question == q for r in rows for o in r.outcomes)]
    header = ["student", *questions, "total", "out_of", *(["late"] if deadline else []), "submissions", "reason"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for student, counted in _counted(rows).items():
            by_q = {o.question: o for r in counted for o in r.outcomes}
            reasons = [f"{r.submission.name}: {r.reason}" for r in counted if r.reason]
            reasons += [f"{o.question}: {n}" for o in by_q.values() for n in o.notes if _is_run_failure(n)]
            late = [r for r in counted if deadline and r.submitted and r.submitted > deadline]
            writer.writerow([student, *(by_q[q].points if q in by_q else "" for q in questions),
                             round(sum(o.points for o in by_q.values()), 2), sum(o.out_of for o in by_q.values()),
                             *(["yes" if late else "no"] if deadline else []),
                             " ".join(str(r.submission) for r in counted), "; ".join(reasons)])


def _is_run_failure(note: str) -> bool:
    return note.startswith(("did not finish", "the grading process", "the grader", "the answer's result is too large"))


def _relative(row: Row) -> Path:
    return Path(row.name).with_suffix("")


def _feedback(row: Row) -> str:
    lines = [f"Submission: {row.name}"]
    if row.reason:
        return "\n".join([*lines, f"Not graded: {row.reason}", ""])
    lines.append(f"Exercise {row.exercise}: {row.total:g} / {row.out_of:g} points")
    notes = list(dict.fromkeys(n for o in row.outcomes for n in o.notes))  # each question repeats the cells' errors
    if notes:
        lines += ["", "While your notebook ran:", *(f"  ! {n}" for n in notes)]
    for o in row.outcomes:
        lines += ["", f"{o.question} ({QUESTIONS[o.question].title}): {o.points:g} / {o.out_of:g}"]
        lines += [f"  - {line}" for line in o.feedback]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_FEEDBACK_BYTES:
        text = text.encode()[:MAX_FEEDBACK_BYTES].decode(errors="ignore")
        text += f"\n[feedback truncated at {MAX_FEEDBACK_BYTES // 1024} KiB]\n"
    return text


def _log(row: Row) -> str:
    lines = [f"Submission: {row.submission}", f"Student: {row.student}", f"Exercise: {row.exercise or '-'}",
             f"Graded in {row.seconds:.2f} s"]
    if row.reason:
        lines.append(f"Not graded: {row.reason}")
    for o in row.outcomes:
        lines += ["", f"{o.question}: {o.points:g} / {o.out_of:g} in {o.seconds:.2f} s"]
        lines += [f"  {entry}" for entry in o.log]
        lines += [f"  ! {n}" for n in o.notes]
        lines += [f"  lost: {d}" for d in o.details]
    return "\n".join(lines) + "\n"


def _gradescope(row: Row) -> dict:
    """Gradescope's autograder results format (one ``results.json`` per submission)."""
    tests = [{"name": f"{o.question}: {QUESTIONS[o.question].title}", "score": o.points, "max_score": o.out_of,
              "output": "\n".join([*o.notes, *o.feedback]), "visibility": "visible"} for o in row.outcomes]
    return {"score": row.total, "execution_time": round(row.seconds, 2), "tests": tests,
            "output": f"Not graded: {row.reason}" if row.reason else f"Exercise {row.exercise}"}


def _similarity(rows: list[Row], solutions: Path) -> str:
    from labkit.grading.assign import make_exercise

    answers: dict[str, dict[str, str]] = {}
    for student, counted in _counted(rows).items():
        for row in counted:
            if row.reason:
                continue
            cells = code_cells(row.submission)
            for o in row.outcomes:
                source = answer_source(cells, QUESTIONS[o.question].name)
                if source:
                    answers.setdefault(student, {})[o.question] = source
    stubs: dict[str, list[str]] = {}
    for solution in sorted(solutions.glob("*.ipynb")):  # their stubs: what an unanswered question shares
        exercise = make_exercise(nbformat.read(solution, as_version=4))
        cells = [c.source for c in exercise.cells if c.cell_type == "code"]
        for q in (q for q in QUESTIONS if q.startswith(f"{exercise_of(solution)}.")):
            stubs.setdefault(q, []).extend(s for s in [answer_source(cells, QUESTIONS[q].name)] if s)
    pairs = similar_pairs(answers, threshold=SIMILARITY_THRESHOLD, ignore=stubs)
    graded = [q for q in QUESTIONS if any(o.question == q for r in rows for o in r.outcomes)]
    return similarity_report(pairs, SIMILARITY_THRESHOLD, questions=graded)


def score_distribution(rows: list[Row]) -> list[str]:
    """Per question, how the class scored (the counted submission of each student): median,
    range, how many got full marks and none, and a histogram over fifths of the points."""
    by_question: dict[str, list[tuple[float, float]]] = {}
    for counted in _counted(rows).values():
        for o in (o for r in counted for o in r.outcomes):
            by_question.setdefault(o.question, []).append((o.points, o.out_of))
    lines = []
    for q in (q for q in QUESTIONS if q in by_question):
        marks = by_question[q]
        out_of = marks[0][1]
        points = sorted(p for p, _ in marks)
        bins = [0] * 5  # fifths of the points: [0, 20%), ..., [80%, 100%]
        for p in points:
            bins[min(4, int(5 * p / out_of))] += 1
        lines.append(f"  {q} ({QUESTIONS[q].kind}, {out_of:g} points): median {statistics.median(points):g}, "
                     f"range {points[0]:g}-{points[-1]:g}, {sum(p >= out_of for p in points)} full, "
                     f"{sum(p == 0 for p in points)} zero of {len(points)}; by fifths {' '.join(map(str, bins))}")
    return lines


def summary(rows: list[Row], solutions: Path) -> str:
    lines = ["Grading summary (for the instructor; never shown to students)", "",
             "Scores per question (each student's counted submission):", *score_distribution(rows), "",
             "Grading time per submission:"]
    lines += [f"  {row.name}: {row.seconds:.2f} s, {row.total:g} / {row.out_of:g}"
              + (f" (not graded: {row.reason})" if row.reason else "") for row in rows]
    failed = [(row, o) for row in rows for o in row.outcomes if any(_is_run_failure(n) for n in o.notes)]
    if failed:
        lines += ["", "Questions whose run did not finish normally:"]
        lines += [f"  {row.name} {o.question}: {'; '.join(n for n in o.notes if _is_run_failure(n))}" for row, o in failed]
    return "\n".join([*lines, "", _similarity(rows, solutions)]) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_outputs(rows: list[Row], out_csv: Path, feedback_dir: Path, solutions: Path, *,
                  deadline: datetime | None = None,
                  formats: tuple[str, ...] = ()) -> None:
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out_csv, deadline)
    for row in rows:
        _write(feedback_dir / _relative(row).with_suffix(".txt"), _feedback(row))
        _write(out_csv.parent / "logs" / _relative(row).with_suffix(".log"), _log(row))
        if "gradescope" in formats:
            _write(out_csv.parent / "gradescope" / _relative(row) / "results.json", json.dumps(_gradescope(row), indent=2))
    _write(out_csv.parent / "summary.txt", summary(rows, solutions))
