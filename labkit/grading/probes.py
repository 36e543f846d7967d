"""Probes: the code that calls an answer, beside it in the submission's process.

A probe gets the answer, the inputs the grader chose (plain data) and ``oracle(name, args)``, a
line back to the grader for callbacks it must count itself; it returns what the answer gave and
what it measured there. `observe` turns any outcome, a raise or ``sys.exit`` included, into plain
data; judging happens elsewhere (labkit.grading.trials).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from labkit.grading.exercises import PROBES as EXERCISE_PROBES
from labkit.grading.plain import text, to_plain
from labkit.grading.trials import Oracle

__all__ = ["PROBES", "observe"]


def _call(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    return answer(*inputs["args"]), {}


PROBES: dict[str, Callable[[Callable, Any, Oracle], tuple[Any, dict]]] = {"call": _call, **EXERCISE_PROBES}


def _where(e: BaseException) -> str:
    """The submission's own line when the traceback passes through it (cells are compiled as
    ``<code cell N>``), else the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if f.filename.startswith("<code cell")]
    frame = (own or frames or [None])[-1]
    return f" (line {frame.lineno} of {frame.filename if own else frame.name})" if frame else ""


def observe(probe: str, inputs: Any, answer: Any, oracle: Oracle) -> tuple[Any, str | None, dict]:
    """(output, error, extra), all plain data; never raises."""
    try:
        output, extra = PROBES[probe](answer, inputs, oracle)
        return to_plain(output), None, to_plain(extra)
    except NotImplementedError as e:
        return None, f"not answered yet{': ' + text(e) if text(e) else ''}", {}
    except SystemExit as e:
        return None, f"the answer called sys.exit({text(e.code)}); return a value instead", {}
    except BaseException as e:  # the learner's code failing is feedback, never a crash
        return None, f"the answer raised {type(e).__name__}: {text(e)}{_where(e)}", {}
