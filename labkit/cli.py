"""The ``labkit`` command: ``doctor``, ``report``, ``assign`` and ``grade``.

Each subcommand imports what it needs when it runs, so ``labkit assign`` starts without torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


# the `course` extra of pyproject.toml: the report, the grader and assign import these
COURSE_MODULES = {"papermill", "nbclient", "nbformat", "nbconvert", "jinja2", "ipykernel", "ipywidgets"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="GPU Inference Lab tools")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="what this machine has and what the course will do on it")
    doctor.add_argument("--json", action="store_true", help="print the facts as JSON")
    doctor.add_argument("--require-gpu", action="store_true", help="exit 1 when no CUDA device is visible")
    assign = sub.add_parser("assign", help="generate exercises/ from solutions/ (or --check that they are in sync)")
    assign.add_argument("--solutions", type=Path, default=Path("solutions"))
    assign.add_argument("--exercises", type=Path, default=Path("exercises"))
    assign.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is out of date")
    assign.add_argument("--list", action="store_true",
                        help="print every question: id, title, points, what it grades, expected learner time")
    grade = sub.add_parser("grade", help="grade submitted notebooks into a CSV and a feedback file each")
    grade.add_argument("submissions", nargs="+", type=Path, help="notebooks, or folders of them")
    grade.add_argument("--out", type=Path, default=Path("grades.csv"))
    grade.add_argument("--tests", type=Path, help="folder of hidden tests (*.py files defining TESTS)")
    grade.add_argument("--jobs", type=int, default=1)
    grade.add_argument("--timeout", type=float, default=60.0, help="seconds per question")
    grade.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per grading process")
    grade.add_argument("--only", nargs="+", default=(), metavar="QUESTION",
                       help="grade only these questions, e.g. 03.split_sizes (after fixing one question's tests)")
    grade.add_argument("--feedback", type=Path, help="folder for feedback files (default: beside the CSV)")
    grade.add_argument("--solutions", type=Path,
                       help="reference solutions, graded first under the same tests and limits (default: solutions/)")
    grade.add_argument("--deadline", help="ISO date-time, e.g. 2026-12-01T23:59: submissions modified later are late")
    grade.add_argument("--format", action="append", default=[], choices=["gradescope"], dest="formats",
                       help="also write Gradescope's results.json per submission")
    report = sub.add_parser("report", help="run every lesson here and write reports/<run>/index.html")
    report.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    report.add_argument("--device", default="auto")
    report.add_argument("--size", default="small", choices=["small", "full"])
    report.add_argument("--param", action="append", default=[], metavar="NOTEBOOK:KEY=VALUE",
                        help="a parameter for one notebook, e.g. 01_dynamic_batching:requests=500")
    report.add_argument("--timeout", type=float, default=600.0, help="seconds per cell")
    report.add_argument("--out", type=Path, default=Path("reports"))
    report.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="compare the figures of two runs (folders or figures.json) instead of running")
    args = parser.parse_args(argv)
    command = {"report": _report, "assign": _assign, "grade": _grade}.get(args.command, _doctor)
    try:
        return command(args)
    except ModuleNotFoundError as e:
        if e.name not in COURSE_MODULES:
            raise
        print(f"labkit {args.command} needs {e.name}, from the course tools: pip install 'labkit[course]'",
              file=sys.stderr)
        return 2


def _doctor(args: argparse.Namespace) -> int:
    from labkit.doctor import doctor_facts, print_doctor

    facts = doctor_facts()
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print_doctor(facts)
    if args.require_gpu and not facts["gpus"]:
        print("labkit doctor: --require-gpu given, but no CUDA device is visible", file=sys.stderr)
        return 1
    return 0


def _assign(args: argparse.Namespace) -> int:
    from labkit.grading.assign import assign, question_table, stale_exercises

    if args.list:
        print(question_table())
        return 0
    try:
        if args.check:
            stale = stale_exercises(args.solutions, args.exercises)
            if stale:
                print(f"exercises out of date: {', '.join(stale)}; run `labkit assign`", file=sys.stderr)
                return 1
            print("exercises are in sync with solutions")
            return 0
        written = assign(args.solutions, args.exercises)
    except ValueError as e:  # nothing was written
        print(f"labkit assign: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from datetime import datetime

    from labkit.grading.grade import Settings, SetupError, collect_submissions, grade_all

    try:
        deadline = datetime.fromisoformat(args.deadline) if args.deadline else None
    except ValueError:
        print(f"labkit grade: --deadline {args.deadline!r}: expected an ISO date-time like 2026-12-01T23:59",
              file=sys.stderr)
        return 2
    missing = [str(p) for p in args.submissions if not p.exists()]
    if missing:
        print(f"labkit grade: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = collect_submissions(args.submissions)
    if not rows:
        print("labkit grade: no notebooks found in " + ", ".join(map(str, args.submissions)), file=sys.stderr)
        return 2
    settings = Settings(timeout_s=args.timeout, memory_mb=args.memory_mb, jobs=args.jobs, only=tuple(args.only))
    try:
        rows = grade_all(rows, args.out, tests=args.tests, settings=settings, feedback_dir=args.feedback,
                         solutions=args.solutions, deadline=deadline, formats=tuple(args.formats))
    except SetupError as e:
        print(f"labkit grade: {e}", file=sys.stderr)
        return 2
    width = max(len(r.name) for r in rows)
    print("grading time per submission:")
    for row in rows:
        print(f"  {row.name:<{width}}  {row.seconds:6.2f} s  {row.total:g} / {row.out_of:g}"
              + (f"  not graded: {row.reason}" if row.reason else ""))
    graded = sum(1 for r in rows if not r.reason)
    print(f"graded {graded} of {len(rows)} submissions: {args.out}; feedback, logs and summary.txt beside it")
    return 0


def _report_setup(args: argparse.Namespace) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    """The notebooks and their parameters, every mistake refused before a kernel starts
    (`ValueError` with the reason)."""
    from labkit.device import pick_device

    try:
        pick_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"--device {args.device}: {e}") from None
    notebooks = args.notebooks or sorted(Path("notebooks").glob("[0-9]*.ipynb"))
    if not notebooks:
        raise ValueError(f"no lessons here ({Path.cwd()}): expected notebooks/NN_*.ipynb; run from the "
                         "project folder or name the notebooks")
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        raise ValueError(f"no such notebook: {', '.join(missing)}")
    params: dict[str, dict[str, Any]] = {}
    names = {p.stem for p in notebooks}
    for item in args.param:
        notebook, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (notebook and key and eq):
            raise ValueError(f"--param {item!r}: expected NOTEBOOK:KEY=VALUE")
        if notebook.removesuffix(".ipynb") not in names:
            raise ValueError(f"--param {item!r}: no notebook {notebook!r} in this run; notebooks are: "
                             f"{', '.join(sorted(names))}")
        try:
            parsed: Any = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        params.setdefault(notebook.removesuffix(".ipynb"), {})[key] = parsed
    return notebooks, params


def _report(args: argparse.Namespace) -> int:
    from labkit.report import compare, failed_claims, run_report

    if args.compare:
        try:
            print(compare(*args.compare))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"labkit report --compare: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        notebooks, params = _report_setup(args)
    except ValueError as e:
        print(f"labkit report: {e}", file=sys.stderr)
        return 2
    folder, runs = run_report(notebooks, args.out, device=args.device, size=args.size, params=params,
                              timeout_s=args.timeout)
    failed = [r for r in runs if r.status != "ok"]
    claims = sum(len(r.claims) for r in runs)
    unheld = failed_claims(runs)
    print(f"report: {folder / 'index.html'} ({len(runs) - len(failed)} of {len(runs)} notebooks ran; "
          f"{claims - len(unheld)} of {claims} claims held)")
    for name, c in unheld:  # information for the instructor, not a failure of the run
        print(f"  did not hold: {name}: {c['statement']}" + (f" (recorded on {c['source']})" if c["source"] else ""))
    for r in failed:
        print(f"  failed: {r.name}" + (f", cell In [{r.failed_cell}]" if r.failed_cell is not None else "") + f": {r.error}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
