"""Graded exercises: questions with public tests (`check` in a notebook), exercises generated from
the solutions (`labkit assign`), and isolated grading of a class's submissions (`labkit grade`)."""

from labkit.grading.check import Score, check, score
from labkit.grading.questions import QUESTIONS, Mismatch, Question

__all__ = ["QUESTIONS", "Mismatch", "Question", "Score", "check", "score"]
