"""Graded exercises: questions with public tests (`check` in a notebook), exercises generated from
the solutions (`labkit assign`), and sandboxed grading of a class's submissions (`labkit grade`)."""

from labkit.grading.check import check
from labkit.grading.questions import QUESTIONS, Question
from labkit.grading.trials import Mismatch, Score

__all__ = ["QUESTIONS", "Mismatch", "Question", "Score", "check"]
