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


def _in_class_body(lines: list[str], indent: str) -> bool:
    """Is a line at ``indent`` directly in a class body? (The nearest line above it with less
    indentation opens a class.)"""
    for line in reversed(lines):
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#") and len(line) - len(stripped) < len(indent):
            return stripped.startswith("class ")
    return False


def strip_solutions(source: str) -> str:
    """``source`` with every solution block replaced by a stub raising `NotImplementedError`.

    A block directly in a class body holds the solution's helper methods: it is left out (a
    ``raise`` there would fail the class definition); the learner writes helpers of their own,
    and the public methods carry their own blocks, so each raises until answered.
    """
    out: list[str] = []
    block: re.Match | None = None
    for number, line in enumerate(source.splitlines(), 1):
        if block is None and (block := BEGIN.match(line)):
            hint = block["hint"].strip()
            message = f"your answer here{' (hint: ' + hint + ')' if hint else ''}"
            if _in_class_body(out, block["indent"]):
                out.append(f"{block['indent']}# your helper methods here{' (hint: ' + hint + ')' if hint else ''}")
            else:
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
    """The learner's copy of ``solution`` (`ValueError` naming the cell of a malformed block)."""
    exercise = nbformat.from_dict(solution)  # a deep copy
    for number, cell in enumerate(exercise.cells, 1):
        if "solution" in cell.metadata.get("tags", []):
            cell.source = ANSWER_HERE if cell.cell_type == "markdown" else "# your answer here"
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"] + ["answer"]
        elif cell.cell_type == "code":
            try:
                cell.source = strip_solutions(cell.source)
            except ValueError as e:
                raise ValueError(f"cell {number}: {e}") from None
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return exercise


def _pairs(solutions: Path, exercises: Path) -> list[tuple[Path, Path]]:
    pairs = [(s, exercises / s.name) for s in sorted(solutions.glob("*.ipynb"))]
    if not pairs:
        raise ValueError(f"no solutions in {solutions.resolve()}: expected solutions/NN_*.ipynb "
                         "(run from the project folder, or pass --solutions)")
    return pairs


def _exercise(source: Path) -> nbformat.NotebookNode:
    try:
        return make_exercise(nbformat.read(source, as_version=4))
    except Exception as e:  # unreadable JSON, a malformed solution block
        raise ValueError(f"{source}: {e}") from None


def assign(solutions: Path, exercises: Path) -> list[Path]:
    """Write one exercise per solution notebook, all or none: every solution is turned into its
    exercise before the first file is written. Returns the paths written."""
    made = [(target, _exercise(source)) for source, target in _pairs(solutions, exercises)]
    exercises.mkdir(parents=True, exist_ok=True)
    for target, exercise in made:
        nbformat.write(exercise, target)
    return [target for target, _ in made]


def stale_exercises(solutions: Path, exercises: Path) -> list[str]:
    """Names of exercises missing, out of date, unreadable (with why) or left over (empty:
    `exercises/` is in sync)."""
    stale = []
    for source, target in _pairs(solutions, exercises):
        expected = json.loads(nbformat.writes(_exercise(source)))
        try:
            current = json.loads(target.read_text()) if target.exists() else None
        except (OSError, ValueError) as e:
            stale.append(f"{target.name} (not a readable notebook: {e})")
            continue
        if current != expected:
            stale.append(target.name)
    known = {s.name for s in solutions.glob("*.ipynb")}
    stale += [p.name for p in sorted(exercises.glob("*.ipynb")) if p.name not in known]
    return stale


def question_table() -> str:
    """Every question, one line each, with the totals: what an instructor plans a course with."""
    from labkit.grading.questions import QUESTIONS

    rows = [("question", "title", "points", "grades", "minutes")]
    rows += [(q.id, q.title, f"{q.points:g}", q.kind, str(q.minutes)) for q in QUESTIONS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 or i == 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    speed = sum(q.kind == "speed" for q in QUESTIONS.values())
    lines.append(f"{len(QUESTIONS)} questions ({speed} graded on speed), "
                 f"{sum(q.points for q in QUESTIONS.values()):g} points, about {sum(q.minutes for q in QUESTIONS.values())} minutes")
    return "\n".join(lines)
