"""Grading end to end: solutions score full marks, exercises zero, and a zoo of bad submissions
is graded correctly, each with a clear reason, without affecting anyone else."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.grading import QUESTIONS, check
from labkit.grading.assign import make_exercise, stale_exercises, strip_solutions
from labkit.grading.grade import grade_all

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = Path(__file__).parent / "hidden"
SOLUTION_03 = ROOT / "solutions" / "03_data_parallel.ipynb"

pytestmark = pytest.mark.timeout(600)


def _questions(exercise: str) -> list[str]:
    return [q for q in QUESTIONS if q.startswith(f"{exercise}.")]


# -- solutions and exercises --------------------------------------------------------------------


@pytest.fixture(scope="module")
def graded_course(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("course")
    rows = grade_all([*sorted((ROOT / "solutions").glob("*.ipynb")), *sorted((ROOT / "exercises").glob("*.ipynb"))],
                     out / "grades.csv", tests=HIDDEN, jobs=2, progress=False)
    return {f"{r.submission.parent.name}/{r.submission.name}": r for r in rows}


def test_every_solution_scores_full_marks_with_the_hidden_tests(graded_course):
    solutions = {k: r for k, r in graded_course.items() if k.startswith("solutions/")}
    assert len(solutions) == 5
    for name, row in solutions.items():
        assert not row.reason, name
        assert sorted(o.question for o in row.outcomes) == sorted(_questions(row.exercise)), name
        assert all(o.points == o.out_of and not o.feedback and not o.notes for o in row.outcomes), (name, row.outcomes)


def test_every_exercise_scores_zero_and_runs_without_error(graded_course):
    exercises = {k: r for k, r in graded_course.items() if k.startswith("exercises/")}
    assert len(exercises) == 5
    for name, row in exercises.items():
        assert row.total == 0 and len(row.outcomes) == len(_questions(row.exercise)), name
        assert all(not o.notes for o in row.outcomes), name  # no cell raised
        assert all(any("not answered yet" in f for f in o.feedback) for o in row.outcomes), name


def test_exercises_are_in_sync_with_solutions():
    assert stale_exercises(ROOT / "solutions", ROOT / "exercises") == []
    cli = subprocess.run([sys.executable, "-m", "labkit.cli", "assign", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr


def test_a_changed_solution_makes_the_exercises_stale(tmp_path):
    (tmp_path / "sol").mkdir()
    (tmp_path / "ex").mkdir()
    nb = nbformat.read(SOLUTION_03, as_version=4)
    nbformat.write(nb, tmp_path / "sol" / SOLUTION_03.name)
    nbformat.write(make_exercise(nb), tmp_path / "ex" / SOLUTION_03.name)
    assert stale_exercises(tmp_path / "sol", tmp_path / "ex") == []
    nb.cells[1].source += "\nimport math"
    nbformat.write(nb, tmp_path / "sol" / SOLUTION_03.name)
    (tmp_path / "ex" / "99_leftover.ipynb").write_text("{}")
    assert stale_exercises(tmp_path / "sol", tmp_path / "ex") == [SOLUTION_03.name, "99_leftover.ipynb"]


# -- assign ---------------------------------------------------------------------------------------


def test_solution_blocks_become_stubs_that_keep_indentation_and_the_hint():
    source = "def f(x):\n    # BEGIN SOLUTION use x twice\n    return x + x\n    # END SOLUTION\n\nprint(1)"
    assert strip_solutions(source) == (
        "def f(x):\n    raise NotImplementedError('your answer here (hint: use x twice)')\n\nprint(1)")
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("# BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without a"):
        strip_solutions("x = 1\n# END SOLUTION")


def test_solution_tagged_cells_are_emptied_and_outputs_cleared():
    nb = nbformat.read(ROOT / "solutions" / "04_memory.ipynb", as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[2].execution_count = 3
    ex = make_exercise(nb)
    tagged = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    answers = [c for c in ex.cells if "answer" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and len(answers) == 1
    assert "recomputes" in tagged[0].source and "recomputes" not in answers[0].source
    assert all(c.outputs == [] and c.execution_count is None for c in ex.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in json.dumps(ex)


# -- check() in the notebook ------------------------------------------------------------------


def test_check_reports_what_went_in_what_was_expected_and_never_raises(capsys):
    def wrong(n, k):
        return [n + 1] * k

    def exits(n, k):
        sys.exit(3)

    def crashes(n, k):
        return 1 / 0

    assert check("03.split_sizes", wrong) == 0.0
    out = capsys.readouterr().out
    assert "wrong(10, 3): expected [4, 3, 3], got [11, 11, 11]" in out and "Hint:" in out
    assert check("03.split_sizes", exits) == 0.0
    assert "sys.exit(3)" in capsys.readouterr().out
    assert check("03.split_sizes", crashes) == 0.0
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert check("99.nothing", wrong) == 0.0
    assert "no question '99.nothing'" in capsys.readouterr().out


def test_check_gives_partial_points_per_test():
    def half_right(n, k):
        return [n // k] * k  # right only when k divides n

    assert check("03.split_sizes", half_right) == 1.0  # 2 of 4 tests, of 2 points


# -- the zoo ---------------------------------------------------------------------------------


def _variant(cells: dict[int, str] | None = None, extra: list[str] | None = None) -> nbformat.NotebookNode:
    """Solution 03 with some code cells replaced (by index among code cells) or extra cells appended."""
    nb = nbformat.read(SOLUTION_03, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, source in (cells or {}).items():
        code[i].source = source
    nb.cells += [nbformat.v4.new_code_cell(s) for s in extra or []]
    return nb


def _code_cell_defining(name: str) -> int:
    code = [c for c in nbformat.read(SOLUTION_03, as_version=4).cells if c.cell_type == "code"]
    return next(i for i, c in enumerate(code) if f"def {name}(" in c.source)


SPLIT = _code_cell_defining("split_sizes")  # in solution 03
GOOD_SPLIT = "def split_sizes(n, k):\n    base, extra = divmod(n, k)\n    return [base + 1 if i < extra else base for i in range(k)]"

ZOO: dict[str, nbformat.NotebookNode | str] = {
    "good": _variant(),
    "syntax_error": _variant({SPLIT: "def split_sizes(n, k)\n    return []"}),
    "endless_loop_in_answer": _variant({SPLIT: "def split_sizes(n, k):\n    while True:\n        pass"}),
    "endless_loop_at_top": _variant(extra=["while True:\n    pass"]),
    "sys_exit_at_top": _variant(extra=["import sys\nsys.exit('bye')"]),
    "os_exit": _variant(extra=["import os\nos._exit(0)"]),
    "raises_at_import": _variant({SPLIT: "raise RuntimeError('boom')\n" + GOOD_SPLIT}),
    "patches_check": _variant({SPLIT: "def split_sizes(n, k):\n    return [-1]"}, extra=[
        "import labkit.grading as g, labkit.grading.check as c, labkit.grading.questions as q\n"
        "g.check = c.check = lambda *a, **k: 99\n"
        "c.score = lambda question, answer, tests, out_of: c.Score(question, out_of, out_of, len(tests), len(tests))\n"
        "q.expect = lambda *a, **k: None\n"
        "print('3/3 points')"]),
    "deletes_its_files": _variant(extra=["import os\nfor f in os.listdir('.'):\n    os.remove(f)"]),
    "huge_allocation": _variant(extra=["hog = bytearray(64 * 2**30)"]),
    "passes_public_fails_hidden": _variant({SPLIT: (
        "def split_sizes(n, k):\n"
        "    return {(10, 3): [4, 3, 3], (9, 3): [3, 3, 3], (2, 4): [1, 1, 0, 0], (0, 2): [0, 0]}[(n, k)]")}),
    "not_a_notebook": "this is not JSON",
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    for name, nb in ZOO.items():
        path = folder / f"{name}_03.ipynb"
        path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    out = folder / "out" / "grades.csv"
    rows = grade_all(sorted(folder.glob("*.ipynb")), out, tests=HIDDEN, jobs=2, timeout_s=15,
                     memory_mb=3072, progress=False)
    by_name = {r.submission.name.removesuffix("_03.ipynb"): r for r in rows}
    with out.open() as f:
        table = {Path(r["submission"]).name.removesuffix("_03.ipynb"): r for r in csv.DictReader(f)}
    return by_name, table, folder


def _points(row) -> dict[str, float]:
    return {o.question: o.points for o in row.outcomes}


def _notes(row) -> str:
    return " ".join(n for o in row.outcomes for n in o.notes) + " " + " ".join(f for o in row.outcomes for f in o.feedback)


def test_every_submission_has_a_row_even_unreadable_ones(zoo):
    rows, table, folder = zoo
    assert set(table) == set(ZOO)
    assert "not a readable notebook" in table["not_a_notebook"]["reason"]
    assert (folder / "out" / "feedback" / "good_03.txt").read_text().startswith("Submission: good_03.ipynb")


def test_good_submission_is_unaffected_by_its_neighbours(zoo):
    rows, _, folder = zoo
    assert _points(rows["good"]) == {"03.split_sizes": 2.0, "03.gather": 2.0}
    assert all((folder / f"{name}_03.ipynb").exists() for name in ZOO)  # nobody deleted anything here


@pytest.mark.parametrize("name, expected, reason", [
    ("syntax_error", {"03.split_sizes": 0.0, "03.gather": 2.0}, "SyntaxError"),
    ("endless_loop_in_answer", {"03.split_sizes": 0.0, "03.gather": 2.0}, "did not finish within 15 s"),
    ("endless_loop_at_top", {"03.split_sizes": 0.0, "03.gather": 0.0}, "did not finish within 15 s"),
    ("sys_exit_at_top", {"03.split_sizes": 2.0, "03.gather": 2.0}, "SystemExit: bye"),
    ("os_exit", {"03.split_sizes": 0.0, "03.gather": 0.0}, "ended (exit code 0) before a result"),
    ("raises_at_import", {"03.split_sizes": 0.0, "03.gather": 2.0}, "RuntimeError: boom"),
    ("patches_check", {"03.split_sizes": 0.0, "03.gather": 2.0}, "expected [4, 3, 3], got [-1]"),
    ("deletes_its_files", {"03.split_sizes": 2.0, "03.gather": 2.0}, ""),
    ("huge_allocation", {"03.split_sizes": 2.0, "03.gather": 2.0}, "MemoryError"),
    ("passes_public_fails_hidden", {"03.split_sizes": round(2 * 4 / 6, 2), "03.gather": 2.0}, "KeyError"),
])
def test_bad_submissions_are_graded_correctly_with_a_clear_reason(zoo, name, expected, reason):
    rows, table, _ = zoo
    assert _points(rows[name]) == expected
    assert reason in _notes(rows[name])
    assert float(table[name]["total"]) == sum(expected.values())


def test_public_tests_alone_cannot_tell_the_hidden_failure(tmp_path):
    path = tmp_path / "sneaky_03.ipynb"
    nbformat.write(ZOO["passes_public_fails_hidden"], path)
    (row,) = grade_all([path], tmp_path / "grades.csv", progress=False)
    assert _points(row)["03.split_sizes"] == 2.0
