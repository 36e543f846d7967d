"""Every graded question by id (``"03.split_sizes"``), from the exercises' modules.

A question's cases are plain data handed to its case builder, which makes one `Trial` each.
Instructors' hidden tests are more cases of the same form (``TESTS = {"03.split_sizes":
[((7, 1), [7], "one device takes everything")]}`` in a ``*.py`` file given to ``labkit grade
--tests``): data only, so the grader can hand the submission's process the inputs and keep the
expected values to itself.
"""

from __future__ import annotations

from labkit.grading.exercises import QUESTIONS
from labkit.grading.trials import Question

__all__ = ["Question", "QUESTIONS"]
