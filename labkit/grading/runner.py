"""One grading run, in its own process: a submission's code, then one question's tests.

``python -m labkit.grading.runner NOTEBOOK QUESTION RESULT_FD [--tests DIR] [--memory-mb M]``, with a nonce on
stdin. Everything the grade depends on (the tests, hidden ones included, the scoring function,
the nonce) is loaded *before* the submission's code runs, and the result goes out on a pipe the
parent reads, prefixed with the nonce: a submission that patches `check`, prints a fake score or
writes to the pipe without the nonce changes nothing. (A submission that goes looking for the
nonce inside this process's memory is beyond what a course grader defends against; grade such
classes in a container: it runs as the grader's user.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

import labkit.grading
from labkit.grading.check import score
from labkit.grading.questions import QUESTIONS


def hidden_tests(directory: Path | None, question: str) -> list:
    """Tests for ``question`` from the ``TESTS`` dict of every ``*.py`` file in ``directory``."""
    found: list = []
    for path in sorted(directory.glob("*.py")) if directory else []:
        spec = importlib.util.spec_from_file_location(f"_hidden_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found += list(getattr(module, "TESTS", {}).get(question, []))
    return found


def code_cells(notebook: Path) -> list[str]:
    """The code cells' sources, read as plain JSON (nbformat's import alone costs a second per run).
    IPython-only lines (magics, shell escapes) are not Python: they are left out."""
    cells = json.loads(notebook.read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"]
    return ["\n".join(line for line in s.splitlines() if not line.lstrip().startswith(("%", "!"))) for s in sources]


def run_submission(cells: list[str]) -> tuple[dict, list[str]]:
    """Execute the cells in one namespace, as a notebook would; a failing cell is noted, not fatal."""
    namespace: dict = {"__name__": "__main__"}
    notes = []
    for number, source in enumerate(cells, 1):
        try:
            exec(compile(source, f"<code cell {number}>", "exec"), namespace)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the next cells still run
            where = traceback.extract_tb(e.__traceback__)[-1].lineno
            notes.append(f"code cell {number} raised {type(e).__name__}: {e} (line {where})")
    return namespace, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook", type=Path)
    parser.add_argument("question")
    parser.add_argument("result_fd", type=int)
    parser.add_argument("--tests", type=Path)
    parser.add_argument("--memory-mb", type=int)
    args = parser.parse_args()
    if args.memory_mb:  # soft and hard: the submission cannot raise them again
        import resource

        limit = args.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # no file (its printed output too) beyond it
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    q = QUESTIONS[args.question]
    tests = [*q.tests, *hidden_tests(args.tests, q.id)]
    write, dumps, fd, grade = os.write, json.dumps, args.result_fd, score  # bound before any submission code runs
    try:
        cells = code_cells(args.notebook)
    except Exception as e:
        write(fd, (nonce + dumps({"error": f"not a readable notebook: {type(e).__name__}: {e}"}) + "\n").encode())
        return
    # The notebook's own `check(...)` cells are the learner's practice runs: silenced here, so an
    # answer that hangs or crashes costs its own question only, in its own process.
    labkit.grading.check = lambda question, answer: 0.0
    namespace, notes = run_submission(cells)
    name = q.id.split(".", 1)[1]
    if name not in namespace:
        result = {"points": 0.0, "out_of": q.points, "passed": 0, "total": len(tests),
                  "feedback": [f"no definition named {name!r} in the notebook"]}
    else:
        s = grade(q.id, namespace[name], tests, q.points)
        result = {"points": s.points, "out_of": s.out_of, "passed": s.passed, "total": s.total, "feedback": s.feedback}
    result["notes"] = notes
    write(fd, (nonce + dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
