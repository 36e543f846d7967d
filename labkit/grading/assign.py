"""`labkit assign`: the learners' exercises, generated from the solutions (the only source).

In code cells, each ``# BEGIN SOLUTION <hint>`` ... ``# END SOLUTION`` block becomes a stub that
raises `NotImplementedError` with the hint; cells tagged ``solution`` are emptied; outputs and
execution counts are cleared. `exercises/` is never edited by hand: a test compares it with what
this module generates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

__all__ = ["make_exercise", "assign", "stale_exercises"]

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\b[ \t]*(?P<hint>.*)$")
END = re.compile(r"^[ \t]*# END SOLUTION\b")
ANSWER_HERE = "*Your answer here.*"


def strip_solutions(source: str) -> str:
    """``source`` with every solution block replaced by a stub raising `NotImplementedError`."""
    out: list[str] = []
    block: re.Match | None = None
    for number, line in enumerate(source.splitlines(), 1):
        if block is None and (block := BEGIN.match(line)):
            hint = block["hint"].strip()
            message = f"your answer here{' (hint: ' + hint + ')' if hint else ''}"
            out.append(f"{block['indent']}raise NotImplementedError({message!r})")
        elif block is not None and END.match(line):
            block = None
        elif block is None:
            if END.match(line):
                raise ValueError(f"line {number}: '# END SOLUTION' without a '# BEGIN SOLUTION' before it")
            out.append(line)
    if block is not None:
        raise ValueError("a '# BEGIN SOLUTION' block is never closed with '# END SOLUTION'")
    return "\n".join(out)


def make_exercise(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    exercise = nbformat.from_dict(solution)  # a deep copy
    for cell in exercise.cells:
        if "solution" in cell.metadata.get("tags", []):
            cell.source = ANSWER_HERE if cell.cell_type == "markdown" else "# your answer here"
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"] + ["answer"]
        elif cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return exercise


def _pairs(solutions: Path, exercises: Path) -> list[tuple[Path, Path]]:
    return [(s, exercises / s.name) for s in sorted(solutions.glob("*.ipynb"))]


def assign(solutions: Path, exercises: Path) -> list[Path]:
    """Write one exercise per solution notebook; return the paths written."""
    exercises.mkdir(parents=True, exist_ok=True)
    written = []
    for source, target in _pairs(solutions, exercises):
        nbformat.write(make_exercise(nbformat.read(source, as_version=4)), target)
        written.append(target)
    return written


def stale_exercises(solutions: Path, exercises: Path) -> list[str]:
    """Names of exercises missing, out of date or left over (empty: `exercises/` is in sync)."""
    stale = []
    for source, target in _pairs(solutions, exercises):
        expected = json.loads(nbformat.writes(make_exercise(nbformat.read(source, as_version=4))))
        if not target.exists() or json.loads(target.read_text()) != expected:
            stale.append(target.name)
    known = {s.name for s in solutions.glob("*.ipynb")}
    stale += [p.name for p in sorted(exercises.glob("*.ipynb")) if p.name not in known]
    return stale
