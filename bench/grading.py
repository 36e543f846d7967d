"""Benchmark for `labkit grade`: a class of 100 students, each submitting the five exercise
notebooks (10 questions), graded with ``--jobs 2``. The target is under 5 minutes on a 2-core box.

The class is a mix: a third submit the solutions, a third the unanswered exercises, a third the
solutions with one answer broken, so every path (full marks, stubs, wrong answers) is timed.
Run: ``python bench/grading.py [--students 100] [--jobs 2] [--save]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from labkit.grading.grade import Settings, collect_submissions, grade_all
from labkit.reference import save_results

ROOT = Path(__file__).resolve().parent.parent


def make_class(folder: Path, students: int) -> None:
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    for number in range(students):
        student = folder / f"student{number:03d}"
        student.mkdir(parents=True)
        for solution in solutions:
            kind = number % 3
            source = ROOT / ("exercises" if kind == 1 else "solutions") / solution.name
            if kind == 2:  # one answer broken: it returns None
                nb = nbformat.read(source, as_version=4)
                cell = next(c for c in nb.cells if c.cell_type == "code" and "# BEGIN SOLUTION" in c.source)
                cell.source = cell.source.replace("# BEGIN SOLUTION", "return None  # BEGIN SOLUTION", 1)
                nbformat.write(nb, student / solution.name)
            else:
                shutil.copyfile(source, student / solution.name)


def run(students: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        classroom = Path(tmp) / "submissions"
        make_class(classroom, students)
        rows = collect_submissions([classroom])
        start = time.perf_counter()
        grade_all(rows, Path(tmp) / "out" / "grades.csv", settings=Settings(jobs=jobs), progress=False)
        seconds = time.perf_counter() - start
    questions = sum(len(r.outcomes) for r in rows)
    per_submission = [r.seconds for r in rows]
    return {"students": students, "submissions": len(rows), "questions": questions, "jobs": jobs,
            "cpus": os.cpu_count(), "wall_s": round(seconds, 1), "questions_per_s": round(questions / seconds, 1),
            "median_submission_s": round(statistics.median(per_submission), 3),
            "slowest_submission_s": round(max(per_submission), 3), "target_s": 300, "within_target": seconds < 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--save", action="store_true", help="write bench/results/<date>-cpu-grading.json")
    args = parser.parse_args()
    result = run(args.students, args.jobs)
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    if args.save:
        print(save_results({"grading": result}, "cpu", source="bench/grading.py", suffix="grading"))
    sys.exit(0 if result["within_target"] else 1)


if __name__ == "__main__":
    main()
