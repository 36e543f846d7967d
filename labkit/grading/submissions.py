"""A class's submissions: which notebook answers which exercise, whose it is, and what grading
made of each question (shared by the grader and what it writes)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat

from labkit.grading.questions import QUESTIONS
from labkit.grading.sandbox import PACKAGE_ROOT

__all__ = ["Outcome", "Row", "collect_submissions", "default_solutions", "exercise_of"]


@dataclass
class Outcome:
    """One question of one submission, as the supervisor judged it."""

    question: str
    points: float
    out_of: float
    feedback: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the run: cells that failed, time-outs
    details: list[str] = field(default_factory=list)  # the instructor's: every failure in full
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Row:
    """One submitted notebook."""

    submission: Path
    student: str  # its path under the folder given: "alice" for submissions/alice/03_x.ipynb
    exercise: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    reason: str = ""  # why it was not graded at all
    seconds: float = 0.0
    submitted: datetime | None = None

    @property
    def total(self) -> float:
        return round(sum(o.points for o in self.outcomes), 2)

    @property
    def out_of(self) -> float:
        return sum(o.out_of for o in self.outcomes)

    @property
    def name(self) -> str:
        """Unique among the rows: the student and the notebook."""
        return f"{self.student}/{self.submission.name}" if self.student != self.submission.stem else self.submission.name


def collect_submissions(paths: list[Path]) -> list[Row]:
    """Files as given; folders searched for ``*.ipynb`` (checkpoints left out). Each row names its
    student by the path under the folder that holds them all."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            found.append(p)
    roots = [p if p.is_dir() else p.parent for p in paths]
    root = Path(os.path.commonpath([r.resolve() for r in roots])) if roots else Path.cwd()
    rows = []
    for path in found:
        relative = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else Path(path.name)
        student = relative.parent.as_posix() if relative.parent != Path(".") else relative.stem
        rows.append(Row(path, student))
    return rows


def exercise_of(path: Path) -> str:
    """The exercise a submission answers: its notebook metadata, else an ``NN_`` in its name."""
    try:
        number = nbformat.read(path, as_version=4).metadata.get("labkit", {}).get("exercise")
    except Exception as e:
        raise ValueError(f"not a readable notebook: {type(e).__name__}: {e}") from None
    match = re.search(r"(?:^|[^0-9])(\d\d)_", path.name)
    number = number or (match and match.group(1))
    if not number or not any(q.startswith(f"{number}.") for q in QUESTIONS):
        raise ValueError("cannot tell which exercise this is (no labkit.exercise metadata, no known NN_ in its name)")
    return str(number)


def default_solutions() -> Path:
    here = Path("solutions")
    return here if here.is_dir() else PACKAGE_ROOT / "solutions"
