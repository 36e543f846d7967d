"""Committed notebooks are clean sources with a CPU-friendly `parameters` cell.

The lessons are executed once, under papermill with their parameters, by the course report in
tests/test_report.py; solutions run in a kernel in tests/grading; `make test` runs exercises/ through nbval.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for d in ("notebooks", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_lessons():
    assert [p.name for p in LESSONS][:1] == ["00_measuring.ipynb"]


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_notebook_is_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs committed"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    _parameters_cell(nb)  # papermill's injection point, in exercises too


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_parameters_default_to_a_cpu_friendly_run(path: Path):
    source = _parameters_cell(nbformat.read(path, as_version=4)).source
    values = {
        t.id: ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert values.get("device") == "auto"
    assert values.get("size") == "small"


def test_every_lesson_ends_by_naming_its_exercise_and_start_lists_them_all():
    import re

    root = Path(__file__).resolve().parent.parent
    start = (root / "START.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", start)
    assert all((root / link).exists() for link in links), [link for link in links if not (root / link).exists()]
    for lesson in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"notebooks/{lesson.name}" in links, lesson.name
        last = nbformat.read(lesson, as_version=4).cells[-1]
        assert last.cell_type == "markdown" and last.source.startswith("## Your turn"), lesson.name
        named = re.findall(r"\]\(\.\./(exercises/[^)]+)\)", last.source)
        exercise = sorted((root / "exercises").glob(f"{lesson.name[:2]}_*.ipynb"))
        assert named == [f"exercises/{e.name}" for e in exercise], (lesson.name, named)
        assert named or "no graded exercise yet" in last.source
        assert all(f"exercises/{e.name}" in links for e in exercise)


def test_make_lab_roots_jupyterlab_at_the_project_and_opens_start():
    root = Path(__file__).resolve().parent.parent
    makefile = (root / "Makefile").read_text()
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "--ServerApp.root_dir=$(CURDIR)" in recipe and recipe.rstrip().endswith("START.md")
    assert "lab/overrides.json" in makefile  # START.md opens rendered, not as text
