"""Instructors' hidden tests: ``*.py`` files in a folder, each defining ``TESTS = {question: [case,
...]}`` with cases of the question's own form (plain data). Loaded and checked in the grader's
process only, before any grading starts; the submissions' processes get a case's inputs when it
runs, never the files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from labkit.grading.questions import QUESTIONS

__all__ = ["SetupError", "load_hidden"]


class SetupError(ValueError):
    """An instructor's mistake found before grading starts: nothing is graded or written."""


def load_hidden(directory: Path | None) -> dict[str, list]:
    """``{question: [case, ...]}`` from every ``*.py`` file in ``directory``, each case checked."""
    if directory is None:
        return {}
    if not directory.exists():
        raise SetupError(f"--tests {directory}: no such folder")
    if not directory.is_dir():
        raise SetupError(f"--tests {directory}: a file; expected a folder of *.py files defining TESTS")
    from labkit.grading.supervisor import readable_paths

    exposed = [p for p in readable_paths() if directory.resolve().is_relative_to(p.resolve())]
    if exposed:
        raise SetupError(f"--tests {directory} lies inside {exposed[0]}, which graded notebooks may read: "
                         "keep hidden tests elsewhere")
    found: dict[str, list] = {}
    for path in sorted(directory.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_hidden_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise SetupError(f"hidden tests {path} do not import: {type(e).__name__}: {e}") from None
        tests = getattr(module, "TESTS", None)
        if not isinstance(tests, dict):
            raise SetupError(f"hidden tests {path} define no TESTS dict ({{question: [case, ...]}})")
        for question, cases in tests.items():
            if question not in QUESTIONS:
                raise SetupError(f"hidden tests {path}: TESTS names {question!r}, which is no question; "
                                 f"questions are: {', '.join(QUESTIONS)}")
            try:
                cases = json.loads(json.dumps(list(cases)))  # what the supervisor will receive
                QUESTIONS[question].trials(cases)
            except (TypeError, ValueError) as e:
                raise SetupError(f"hidden tests {path}, {question}: {e}") from None
            found.setdefault(question, []).extend(cases)
    if not found:
        raise SetupError(f"--tests {directory}: no *.py file in it defines TESTS")
    return found
