"""The ``labkit`` command: ``labkit doctor`` says what this machine is and what the course will do."""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import labkit
from labkit.device import describe, devices, pick_device
from labkit.measure import nvml_status
from labkit.reference import recorded_runs

__all__ = ["main", "doctor_facts"]


def doctor_facts() -> dict[str, Any]:
    """Everything ``labkit doctor`` prints, as data (the report builder reuses it)."""
    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append({
            "index": i,
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "compute_capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
        })
    nvml, nvml_detail = nvml_status(0)
    device = pick_device("auto")
    runs = recorded_runs()
    return {
        "labkit": labkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "nvml": nvml,
        "nvml_detail": nvml_detail,
        "device": str(device),
        "device_name": describe(device),
        "recorded_gpu_runs": [{"card": r.card, "date": r.date, "file": r.path.name} for r in runs],
        "plan": _plan(gpus, runs),
    }


def _plan(gpus: list[dict], runs: list) -> list[str]:
    recorded = f"{runs[-1].card}, {runs[-1].date}" if runs else None
    if not gpus:
        plan = [
            "No CUDA device: every lesson runs on the CPU. Use size='small' (the default).",
            "Figures measured here are CPU figures, labelled so.",
            f"Recorded GPU figures ({recorded}) are shown beside them." if recorded else
            "No recorded GPU figures found under bench/results/.",
            f"Multi-device lessons use CPU stand-ins: {devices(2).label}.",
        ]
    else:
        plan = [
            f"Lessons run on cuda:0 ({gpus[0]['name']}); pass size='full' for figures worth comparing.",
            "`make gpu-check` runs the GPU tests and benchmarks and records them under bench/results/.",
        ]
        if len(gpus) == 1:
            plan.append(f"Multi-GPU lessons: {devices(2).label}; scaling is modelled from this card.")
        else:
            plan.append(f"Multi-GPU lessons use {len(gpus)} GPUs and measure real scaling.")
    return plan


def _print_doctor(f: dict[str, Any]) -> None:
    cuda = f"CUDA {f['cuda_build']}" if f["cuda_build"] else "CPU-only build"
    print(f"labkit {f['labkit']}  ·  python {f['python']}  ·  {f['platform']}")
    print(f"torch       {f['torch']} ({cuda}{', cuDNN ' + str(f['cudnn']) if f['cudnn'] else ''})")
    if f["gpus"]:
        for g in f["gpus"]:
            print(f"GPU {g['index']}       {g['name']}, {g['memory_gib']} GiB, compute capability "
                  f"{g['compute_capability']}, {g['multiprocessors']} SMs")
    else:
        print("GPU         none visible to torch")
    print(f"CPU         {f['cpu_threads']} torch threads")
    print(f"NVML        {'yes' if f['nvml'] else 'no'}: {f['nvml_detail']}")
    print(f"device      {f['device']} -> {f['device_name']}")
    for r in f["recorded_gpu_runs"]:
        print(f"recorded    {r['card']} on {r['date']} ({r['file']})")
    print("\nWhat the course will do on this machine:")
    for line in f["plan"]:
        print(f"  - {line}")


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
    grade = sub.add_parser("grade", help="grade submitted notebooks into a CSV and a feedback file each")
    grade.add_argument("submissions", nargs="+", type=Path, help="notebooks, or folders of them")
    grade.add_argument("--out", type=Path, default=Path("grades.csv"))
    grade.add_argument("--tests", type=Path, help="folder of hidden tests (*.py files defining TESTS)")
    grade.add_argument("--jobs", type=int, default=1)
    grade.add_argument("--timeout", type=float, default=60.0, help="seconds per question")
    grade.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per grading process")
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

    if args.command == "report":
        return _report(args)
    if args.command == "assign":
        return _assign(args)
    if args.command == "grade":
        return _grade(args)
    if args.command == "doctor":
        facts = doctor_facts()
        if args.json:
            print(json.dumps(facts, indent=2))
        else:
            _print_doctor(facts)
        if args.require_gpu and not facts["gpus"]:
            print("labkit doctor: --require-gpu given, but no CUDA device is visible", file=sys.stderr)
            return 1
    return 0


def _assign(args: argparse.Namespace) -> int:
    from labkit.grading.assign import assign, stale_exercises

    if args.check:
        stale = stale_exercises(args.solutions, args.exercises)
        if stale:
            print(f"exercises out of date: {', '.join(stale)}; run `labkit assign`", file=sys.stderr)
            return 1
        print("exercises are in sync with solutions")
        return 0
    for path in assign(args.solutions, args.exercises):
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
    settings = Settings(timeout_s=args.timeout, memory_mb=args.memory_mb, jobs=args.jobs)
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


def _report(args: argparse.Namespace) -> int:
    from labkit.report import compare, failed_claims, run_report

    if args.compare:
        print(compare(*args.compare))
        return 0
    params: dict[str, dict[str, Any]] = {}
    for item in args.param:
        notebook, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (notebook and key and eq):
            print(f"--param {item!r}: expected NOTEBOOK:KEY=VALUE", file=sys.stderr)
            return 2
        try:
            parsed: Any = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        params.setdefault(notebook.removesuffix(".ipynb"), {})[key] = parsed
    notebooks = args.notebooks or sorted(Path("notebooks").glob("[0-9]*.ipynb"))
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
