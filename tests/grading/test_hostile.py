"""A hostile class and a hurried instructor: every attack and mistake in one zoo, graded in one run.

Each case shows: the run finished, the CSV has every row, the hostile row got no unearned points
and a clear reason, the good rows are unchanged, nothing is left running.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from labkit.grading import landlock
from labkit.grading.grade import Settings, SetupError, collect_submissions, grade_all

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = Path(__file__).parent / "hidden"
HIDDEN_FILE = HIDDEN / "hidden_03.py"
SOLUTION_03 = ROOT / "solutions" / "03_multi_gpu.ipynb"
# The zoo and the classroom are graded on exercise 03's two quick questions: what is tested here is
# the grader, and a hanging submission costs its timeout once per question graded.
ZOO_QUESTIONS = ("03.split_sizes", "03.gather")
CONFINED = landlock.abi() >= 6  # files, signals and ptrace confined (Linux 6.12+)
MARK = "labkit-zoo-7319"  # in the command line of every process a zoo notebook starts

pytestmark = pytest.mark.timeout(600)


def _variant(split: str | None = None, extra: list[str] | None = None, before: list[str] | None = None):
    """Solution 03 with its split_sizes cell replaced and cells added before or after the rest."""
    nb = nbformat.read(SOLUTION_03, as_version=4)
    if split is not None:
        cell = next(c for c in nb.cells if c.cell_type == "code" and "def split_sizes(" in c.source)
        cell.source = split
    nb.cells[1:1] = [nbformat.v4.new_code_cell(s) for s in before or []]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in extra or []]
    return nb


GOOD_SPLIT = "def split_sizes(n, k):\n    base, extra = divmod(n, k)\n    return [base + 1 if i < extra else base for i in range(k)]"
SLEEPER = f"[sys.executable, '-c', 'import time; time.sleep(600)', '{MARK}']"
PUBLIC_SPLIT = [[4, 3, 3], [3, 3, 3], [1, 1, 0, 0], [0, 0]]

ZOO: dict[str, nbformat.NotebookNode | str] = {
    "good": _variant(),
    "numpy_answer": _variant("import numpy as np\n" + GOOD_SPLIT.replace("return [", "return np.array([") + ")"),
    "syntax_error": _variant("def split_sizes(n, k)\n    return []"),
    "endless_loop_in_answer": _variant("def split_sizes(n, k):\n    while True:\n        pass"),
    "endless_loop_at_top": _variant(extra=["while True:\n    pass"]),
    "sys_exit_at_top": _variant(extra=["import sys\nsys.exit('bye')"]),
    "os_exit": _variant(extra=["import os\nos._exit(0)"]),
    "raises_at_import": _variant("raise RuntimeError('boom')\n" + GOOD_SPLIT),
    "deletes_its_files": _variant(extra=["import os\nfor f in os.listdir('.'):\n    os.remove(f)"]),
    "huge_allocation": _variant(extra=["hog = bytearray(64 * 2**30)"]),
    "passes_public_fails_hidden": _variant(
        "def split_sizes(n, k):\n"
        "    return {(10, 3): [4, 3, 3], (9, 3): [3, 3, 3], (2, 4): [1, 1, 0, 0], (0, 2): [0, 0]}[(n, k)]"),
    "not_a_notebook": "this is not JSON",
    # -- processes and threads it leaves behind
    "forks_holding_the_pipe": _variant(extra=["import os, time\nif os.fork() == 0:\n    time.sleep(600)\n    os._exit(0)"]),
    "background_process": _variant(extra=[f"import subprocess, sys\nsubprocess.Popen({SLEEPER})"]),
    "daemonises": _variant(extra=[
        "import os, subprocess, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    subprocess.Popen({SLEEPER}, start_new_session=True)\n"
        "    os._exit(0)"]),
    "lingering_thread": _variant(extra=["import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()"]),
    # -- large results, many cells
    "many_erroring_cells": _variant(extra=[f"raise ValueError('cell {i} ' + 'x' * 60)" for i in range(3000)]),
    "huge_result": _variant("def split_sizes(n, k):\n    return list(range(10**6))"),
    "prints_a_lot": _variant(extra=["for _ in range(2000):\n    print('y' * 5000)"]),
    # -- raising its own score
    "always_equal": _variant(
        "class Anything(list):\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n\nclass Sly:\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n\n"
        "def split_sizes(n, k):\n    return Sly() if n % 2 else Anything([-1])"),
    "patches_the_grader": _variant("def split_sizes(n, k):\n    return [-1]", extra=[
        "import labkit.grading as g, labkit.grading.check as c, labkit.grading.trials as t, labkit.grading.plain as p\n"
        "g.check = c.check = lambda *a, **k: 99\n"
        "t.score.__code__ = (lambda *a, **k: t.Score('03.split_sizes', 2, 2, 4, 4)).__code__\n"
        "t.Mismatch.__init__ = lambda self, *a, **k: None\n"
        "t.equal.__code__ = (lambda *a, **k: (lambda seen: None)).__code__\n"
        "p.value_of.__code__ = (lambda plain: 0).__code__\n"
        "print('3/3 points')"]),
    "writes_junk_to_the_channel": _variant(extra=[
        "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'this is not json\\n')\n    except OSError:\n        pass"]),
    "forges_results": _variant("def split_sizes(n, k):\n    return [-1]", extra=[
        "import json, os\n"
        "forged = [{'cells': 1, 'failed': 0, 'notes': [], 'defined': True}]\n"
        f"forged += [{{'result': i, 'output': out, 'error': None, 'extra': {{}}}} for i, out in enumerate({PUBLIC_SPLIT})]\n"
        "for fd in range(3, 256):\n    try:\n        os.write(fd, ''.join(json.dumps(m) + '\\n' for m in forged).encode())\n"
        "    except OSError:\n        pass\n"
        "os._exit(0)"]),
    "hunts_for_secrets": _variant(extra=[
        "import gc, os, sys\n"
        "hidden_case = [[5, 5], [1, 1, 1, 1, 1], 'one item ' + 'each']\n"
        "leaks = [type(o).__name__ for o in gc.get_objects()\n"
        "         if (type(o) is list and o is not hidden_case and o == hidden_case)\n"
        "         or (type(o) is dict and type(o.get('hidden')) is list and o['hidden'])\n"
        "         or type(o).__name__ in ('Trial', 'Observation')]\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    leaks += [frame.f_code.co_name for v in frame.f_locals.values() if type(v) is dict and v.get('hidden')]\n"
        "    frame = frame.f_back\n"
        "if 'hidden' in ' '.join(sys.argv) + open('/proc/self/cmdline').read() + str(os.environ):\n"
        "    leaks.append('argv or environment')\n"
        f"for path in [{str(HIDDEN_FILE)!r}, f'/proc/{{os.getppid()}}/mem', f'/proc/{{os.getppid()}}/fd/0']:\n"
        "    try:\n"
        "        open(path, 'rb').read(1)\n"
        "        leaks.append('read ' + path)\n"
        "    except OSError:\n"
        "        pass\n"
        "if leaks:\n"
        "    raise RuntimeError(f'LEAKED {leaks}')"]),
    "kills_its_grader": _variant(extra=[
        "import os, signal\nfor pid in (os.getppid(), os.getpgid(os.getppid())):\n    os.kill(pid, signal.SIGKILL)"]),
}


def _processes_with(marker: str) -> list[str]:
    return [f"{p.pid}: {' '.join(p.info['cmdline'])}" for p in psutil.process_iter(["cmdline"])
            if p.pid != os.getpid() and p.info["cmdline"] and marker in " ".join(p.info["cmdline"])]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    for name, nb in ZOO.items():
        path = folder / f"{name}_03.ipynb"
        path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    out = folder / "out" / "grades.csv"
    started = time.monotonic()
    rows = grade_all(sorted(folder.glob("*.ipynb")), out, tests=HIDDEN, progress=False,
                     settings=Settings(timeout_s=10, memory_mb=3072, jobs=2, only=ZOO_QUESTIONS))
    seconds = time.monotonic() - started
    time.sleep(0.5)  # anything killed has gone from /proc
    by_name = {r.submission.name.removesuffix("_03.ipynb"): r for r in rows}
    with out.open() as f:
        table = {r["student"].removesuffix("_03"): r for r in csv.DictReader(f)}
    return by_name, table, folder, seconds


def _points(row) -> dict[str, float]:
    return {o.question: o.points for o in row.outcomes}


def _said(row) -> str:
    return " ".join(n for o in row.outcomes for n in [*o.notes, *o.feedback])


def test_the_run_finishes_with_every_row_and_leaves_nothing_running(zoo):
    rows, table, folder, seconds = zoo
    assert set(table) == set(ZOO)
    assert "not a readable notebook" in table["not_a_notebook"]["reason"]
    assert (folder / "out" / "feedback" / "good_03.txt").read_text().startswith("Submission: good_03.ipynb")
    assert all((folder / "out" / "feedback" / f"{name}_03.txt").exists() for name in ZOO)
    assert _processes_with(MARK) == []
    assert _processes_with("labkit.grading.supervisor") == []
    assert seconds < 400  # a pipe held open by a fork once hung the whole run


def test_good_rows_are_unaffected_by_their_neighbours(zoo):
    rows, _, folder, _ = zoo
    assert _points(rows["good"]) == {"03.split_sizes": 2.0, "03.gather": 2.0}
    assert _said(rows["good"]).strip() == ""
    assert all((folder / f"{name}_03.ipynb").exists() for name in ZOO)  # nobody deleted anything here


FULL = {"03.split_sizes": 2.0, "03.gather": 2.0}
PUBLIC_ONLY = round(2 * 4 / 7, 2)  # 4 public trials of 7 (3 hidden)


@pytest.mark.parametrize("name, expected, reason", [
    ("numpy_answer", FULL, ""),
    ("syntax_error", {"03.split_sizes": 0.0, "03.gather": 2.0}, "SyntaxError"),
    ("endless_loop_in_answer", {"03.split_sizes": 0.0, "03.gather": 2.0}, "did not finish within 10 s"),
    ("endless_loop_at_top", {"03.split_sizes": 0.0, "03.gather": 0.0}, "did not finish within 10 s"),
    ("sys_exit_at_top", FULL, "SystemExit: bye"),
    ("os_exit", {"03.split_sizes": 0.0, "03.gather": 0.0}, "ended (exit code 0) before a result"),
    ("raises_at_import", {"03.split_sizes": 0.0, "03.gather": 2.0}, "RuntimeError: boom"),
    ("deletes_its_files", FULL, ""),
    ("huge_allocation", FULL, "MemoryError"),
    ("passes_public_fails_hidden", {"03.split_sizes": PUBLIC_ONLY, "03.gather": 2.0}, "a hidden test did not pass"),
    ("forks_holding_the_pipe", FULL, ""),
    ("background_process", FULL, ""),
    ("daemonises", FULL, ""),
    ("lingering_thread", FULL, ""),
    ("many_erroring_cells", FULL, "more cells raised"),
    ("huge_result", {"03.split_sizes": 0.0, "03.gather": 2.0}, "too large to grade"),
    ("prints_a_lot", FULL, ""),
    ("always_equal", {"03.split_sizes": 0.0, "03.gather": 2.0}, "got a __main__.Sly"),
    ("patches_the_grader", {"03.split_sizes": 0.0, "03.gather": 2.0}, "expected [4, 3, 3], got [-1]"),
    ("writes_junk_to_the_channel", {"03.split_sizes": 0.0, "03.gather": 0.0}, "not a result"),
])
def test_each_submission_gets_what_it_earned_and_a_clear_reason(zoo, name, expected, reason):
    rows, table, _, _ = zoo
    assert _points(rows[name]) == expected
    assert reason in _said(rows[name])
    assert float(table[name]["total"]) == pytest.approx(sum(expected.values()))


def test_a_forged_result_claims_no_more_than_an_answer_that_knows_the_public_cases(zoo):
    rows, _, _, _ = zoo
    points = _points(rows["forges_results"])
    assert points["03.split_sizes"] <= PUBLIC_ONLY and points["03.gather"] == 0.0
    assert "before a result" in _said(rows["forges_results"])


@pytest.mark.skipif(not CONFINED, reason="needs Landlock ABI 6 (Linux 6.12+) to confine files and signals")
def test_secrets_stay_with_the_grader_and_the_grader_survives_its_submission(zoo):
    rows, _, folder, _ = zoo
    assert _points(rows["hunts_for_secrets"]) == FULL, _said(rows["hunts_for_secrets"])
    assert "LEAKED" not in _said(rows["hunts_for_secrets"])
    assert _points(rows["kills_its_grader"]) == FULL
    assert "PermissionError" in _said(rows["kills_its_grader"])


def test_hidden_cases_never_reach_feedback(zoo):
    rows, _, folder, _ = zoo
    text = (folder / "out" / "feedback" / "passes_public_fails_hidden_03.txt").read_text()
    assert "a hidden test did not pass (hint: one device takes everything)" in text
    assert "[1, 1, 1, 1, 1]" not in text and "(5, 5)" not in text and "[7]" not in text
    log = (folder / "out" / "logs" / "passes_public_fails_hidden_03.log").read_text()
    assert "split_sizes(5, 5)" in log  # the instructor's log has the whole story


def test_feedback_is_bounded_and_cell_errors_are_summarised(zoo):
    rows, _, folder, _ = zoo
    feedback = folder / "out" / "feedback" / "many_erroring_cells_03.txt"
    assert feedback.stat().st_size <= 64 * 1024
    assert "... and 2950 more cells raised" in feedback.read_text()


# -- students in folders, LMS and Gradescope outputs, similarity --------------------------------


def test_one_feedback_file_per_student_and_an_lms_csv(tmp_path):
    classroom = tmp_path / "submissions"
    original = next(c.source for c in _variant().cells if "def split_sizes(" in c.source)
    copied = original.replace("base", "whole").replace("extra", "rest").replace("    # END", "\n\n    # END")
    notebooks = {"alice": _variant(), "bob": _variant("def split_sizes(n, k):\n    return [n]"),
                 "carol": _variant("# my own work\n" + copied)}
    for student, nb in notebooks.items():
        (classroom / student).mkdir(parents=True)
        nbformat.write(nb, classroom / student / SOLUTION_03.name)
    late = classroom / "bob" / SOLUTION_03.name
    os.utime(late, (time.time(), time.time()))
    for student in ("alice", "carol"):
        path = classroom / student / SOLUTION_03.name
        os.utime(path, (time.time() - 86400, time.time() - 86400))
    from datetime import datetime, timedelta

    out = tmp_path / "out" / "grades.csv"
    grade_all([classroom], out, progress=False, formats=("gradescope",), deadline=datetime.now() - timedelta(hours=1),
              settings=Settings(only=ZOO_QUESTIONS))
    with out.open() as f:
        table = {r["student"]: r for r in csv.DictReader(f)}
    assert set(table) == {"alice", "bob", "carol"}
    assert table["alice"]["03.split_sizes"] == "2.0" and table["bob"]["03.split_sizes"] == "0.0"
    assert (table["alice"]["late"], table["bob"]["late"]) == ("no", "yes")
    for student in notebooks:
        assert (tmp_path / "out" / "feedback" / student / "03_multi_gpu.txt").read_text().startswith(
            f"Submission: {student}/03_multi_gpu.ipynb")
    results = json.loads((tmp_path / "out" / "gradescope" / "alice" / "03_multi_gpu" / "results.json").read_text())
    assert results["score"] == 4.0 and {t["max_score"] for t in results["tests"]} == {2.0}
    summary = (tmp_path / "out" / "summary.txt").read_text()
    split_section = summary.split("03.split_sizes")[-1].split("03.gather")[0]
    assert "alice ~ carol: identical after normalising" in split_section and "bob" not in split_section
    assert "carol" not in (tmp_path / "out" / "feedback" / "alice" / "03_multi_gpu.txt").read_text()
    log = (tmp_path / "out" / "logs" / "bob" / "03_multi_gpu.log").read_text()
    assert "03.split_sizes: 0 / 2 in" in log and "lost: split_sizes(10, 3): expected [4, 3, 3], got [10]" in log


def test_students_are_named_by_their_folder():
    rows = collect_submissions([SOLUTION_03.parent])
    assert {r.student for r in rows} == {p.stem for p in SOLUTION_03.parent.glob("*.ipynb")}


# -- instructors' mistakes: refused at once, exit 2, nothing written -----------------------------


def _hidden_folder(tmp_path: Path, source: str) -> Path:
    folder = tmp_path / "hidden"
    folder.mkdir(exist_ok=True)
    (folder / "tests_03.py").write_text(source)
    return folder


@pytest.mark.parametrize("mistake, kwargs, says", [
    ("tests that do not import", {"tests": "syntax"}, "do not import: SyntaxError"),
    ("a TESTS key naming no question", {"tests": "unknown"}, "'03.split_size', which is no question"),
    ("a malformed case", {"tests": "malformed"}, "hidden case 1 of 03.split_sizes"),
    ("tests that do not exist", {"tests": "missing"}, "no such folder"),
    ("tests that are a file", {"tests": "file"}, "a file; expected a folder"),
    ("tests where submissions can read them", {"tests": "exposed"}, "which graded notebooks may read"),
    ("a timeout of zero", {"settings": Settings(timeout_s=0)}, "--timeout 0"),
    ("a memory limit the solution cannot meet", {"settings": Settings(memory_mb=300, only=ZOO_QUESTIONS)},
     "the reference solution 03_multi_gpu.ipynb scores 0 / 2"),
    ("tests the solution fails", {"tests": "wrong"}, "scores 1.6 / 2 on 03.split_sizes"),
    ("a process limit of zero jobs", {"settings": Settings(jobs=0)}, "--jobs 0"),
    ("a question that does not exist", {"settings": Settings(only=("03.split_size",))}, "--only 03.split_size: no such question"),
    ("a timeout shorter than a speed question needs", {"settings": Settings(timeout_s=5)},
     "--timeout 5: 03.pipeline_speed declares it takes up to 4 s"),
])
def test_instructor_mistakes_are_refused_before_grading(tmp_path, mistake, kwargs, says):
    tests = {"syntax": "TESTS = {", "unknown": "TESTS = {'03.split_size': []}",
             "malformed": "TESTS = {'03.split_sizes': [((7, 1),)]}",
             "wrong": "TESTS = {'03.split_sizes': [((7, 1), [6], 'wrong on purpose')]}"}
    choice = kwargs.pop("tests", None)
    if choice in tests:
        kwargs["tests"] = _hidden_folder(tmp_path, tests[choice])
    elif choice == "missing":
        kwargs["tests"] = tmp_path / "nowhere"
    elif choice == "file":
        kwargs["tests"] = HIDDEN_FILE
    elif choice == "exposed":
        kwargs["tests"] = ROOT / "labkit" / "grading"
    kwargs.setdefault("settings", Settings(only=ZOO_QUESTIONS))
    out = tmp_path / "out" / "grades.csv"
    with pytest.raises(SetupError, match=None) as refused:
        grade_all([SOLUTION_03], out, progress=False, **kwargs)
    assert says in str(refused.value), mistake
    assert not (tmp_path / "out").exists(), "nothing may be written"


def test_an_output_folder_that_cannot_be_written_is_refused_before_grading(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SetupError, match="cannot write results to"):
        grade_all([SOLUTION_03], blocker / "out" / "grades.csv", progress=False)


def test_the_cli_refuses_mistakes_with_exit_code_2(tmp_path):
    def grade(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "labkit.cli", "grade", str(SOLUTION_03), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    (tmp_path / "a_folder").mkdir()
    for args, says in [(["--out", str(tmp_path / "a_folder")], "a folder; expected the CSV"),
                       (["--timeout", "-1", "--out", str(tmp_path / "g.csv")], "--timeout -1"),
                       (["--tests", str(tmp_path / "nope"), "--out", str(tmp_path / "g.csv")], "no such folder")]:
        done = grade(*args)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
    assert not (tmp_path / "g.csv").exists()
