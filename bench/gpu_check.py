"""`make gpu-check`: the GPU tests and every benchmark in one run, recorded with the card's name.

Runs ``pytest -m gpu``, then each module in BENCHES (its ``run(device) -> dict``), writes
``bench/results/<date>-<card>.json`` after each part (merged into that day's file for the card, so
a run cut short keeps what it measured, and ``--only`` adds to it) and prints a short table. Needs only python3 with torch,
numpy, psutil and pytest (what the lent GPU image has): no venv, no installs.

Then the main job, `labkit report --device cuda --size full` (the part ``report``). The GPU
image has no Jupyter and no network: the report's packages come from ``.whl/`` (`make
gpu-wheels`, carried with the checkout), installed into a temporary folder. The report goes to
``bench/results/<date>-<card>-report/`` and each lesson's figures to
``<date>-<card>-report.json``, where `labkit.reference.lesson_spread` finds them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import torch
except ImportError:
    sys.exit("gpu-check runs with this machine's own python3 and its CUDA build of torch, and that python3 has no torch")

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import print_table  # noqa: E402
from gpu_wheels import WHEELHOUSE, install, site_env  # noqa: E402

from labkit.device import describe, pick_device  # noqa: E402
from labkit.reference import results_path, save_results  # noqa: E402

BENCHES = ["measuring", "batching", "parallel", "memory", "streams", "ladder", "generation"]


def run_gpu_tests() -> dict:
    """pytest -m gpu, summarised from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
        if not xml.exists():
            return {"exit_code": proc.returncode, "error": "pytest wrote no report"}
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        failed = [f"{case.get('classname', '')}::{case.get('name', '')}: {(problem.get('message') or '')[:400]}"
                  for case in suite.iter("testcase") if (problem := _problem(case)) is not None]
        return {
            "exit_code": proc.returncode,
            "tests": int(suite.get("tests", 0)),
            "failures": int(suite.get("failures", 0)) + int(suite.get("errors", 0)),
            "skipped": int(suite.get("skipped", 0)),
            "failed": failed,
            "seconds": round(time.perf_counter() - t0, 1),
        }


def _problem(case: ET.Element) -> ET.Element | None:
    """A test case's failure or error element (its message says what went wrong), if any."""
    failure = case.find("failure")
    return failure if failure is not None else case.find("error")


def run_full_report(device: torch.device, timeout_s: float) -> dict:
    """Every lesson at size='full' on ``device`` through `labkit report`; what ran and what held."""
    env = dict(os.environ)
    try:
        import papermill  # noqa: F401
    except ImportError:
        site = Path(tempfile.mkdtemp(prefix="labkit-site-"))
        install(WHEELHOUSE, site)
        env |= site_env(site)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "labkit", "report", "--device", "cuda", "--size", "full",
                               "--out", tmp], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", flush=True)
        folders = sorted(Path(tmp).glob("*/figures.json"))
        if not folders:
            return {"exit_code": proc.returncode, "error": "the report wrote no figures.json"}
        run = folders[-1].parent
        kept = results_path(device, "report").with_suffix("")
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(run, kept, ignore=shutil.ignore_patterns("*.ipynb"))  # the HTML pages hold them
        notebooks = json.loads(folders[-1].read_text())["notebooks"]
    lessons = {nb: {f["name"]: f["value"] for f in r["figures"] if isinstance(f["value"], (int, float))}
               for nb, r in notebooks.items()}
    claims = [c for r in notebooks.values() for c in r["claims"]]
    save_results({"lessons": lessons}, device, source="make gpu-check (labkit report --size full)", suffix="report")
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "notebooks_ok": sum(r["status"] == "ok" for r in notebooks.values()),
        "notebooks": len(notebooks),
        "failed": {nb: r["error"][:300] for nb, r in notebooks.items() if r["status"] != "ok"},
        "claims_held": sum(bool(c["holds"]) for c in claims),
        "claims": len(claims),
        "unheld": [c["statement"] for c in claims if not c["holds"]],
        "folder": str(kept.relative_to(ROOT)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parts = [*BENCHES, "report"]
    parser.add_argument("--only", nargs="+", choices=parts, default=parts,
                        help="parts to run: benchmarks, and report (labkit report --size full)")
    parser.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--report-timeout", type=float, default=420, help="seconds for the whole report")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device, and torch sees none here. On a CPU machine run `make test`.")
        return 2
    device = pick_device("cuda")
    print(f"gpu-check on {describe(device)}, torch {torch.__version__}", flush=True)
    results: dict = {}
    if not args.no_tests:
        results["gpu_tests"] = run_gpu_tests()
        path = save_results(results, device, source="make gpu-check", merge=True)
    for name in args.only:
        t0 = time.perf_counter()
        try:
            if name == "report":
                results[name] = run_full_report(device, args.report_timeout)
            else:
                results[name] = importlib.import_module(name).run(device)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"])
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        path = save_results({name: results[name]}, device, source="make gpu-check", merge=True)
        print(f"{name}: done in {results[name]['seconds']} s", flush=True)
    print(f"\nwrote {path.relative_to(ROOT)}\n")
    print_table(results)
    tests_ok = args.no_tests or results["gpu_tests"].get("exit_code") == 0
    return 0 if tests_ok and not any("error" in v for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
