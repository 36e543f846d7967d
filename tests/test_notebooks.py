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
