"""`labkit.claim`: a lesson's teaching point, checked against what the notebook measured.

A sentence such as "the batcher is faster than the naive one" is only worth teaching if the
learner's own run shows it. A claim is that sentence, whether it held, and the figures it rests
on. It is shown with ✓ or ✗, kept in the executed notebook under its own MIME type (beside
`labkit.record`'s figures) and collected by `labkit report`; the course test fails when a claim
checked on this machine did not hold.

A claim only a GPU can show is marked ``applies="gpu"``. On a CPU it cannot be checked, so the
lesson passes the recorded GPU figures as evidence and names them in ``recorded``: the claim is
shown as "recorded on <card>" and kept apart from the claims this run checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["MIME", "APPLIES", "claim"]

MIME = "application/vnd.labkit.claim+json"
APPLIES = ("any", "cpu", "gpu")


def _plain(value: Any) -> float | int | str:
    """Evidence as JSON can hold it: numbers stay numbers, NaN and everything else become text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(float(value))
    return str(value)


def _shown(value: float | int | str) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value


def claim(statement: str, holds: bool, *, evidence: Mapping[str, Any] | None = None,
          applies: Literal["any", "cpu", "gpu"] = "any", recorded: str | None = None) -> bool:
    """Show ``statement`` with ✓/✗ and its ``evidence``, keep it in the notebook, return ``holds``.

    ``applies``: where the statement is expected to hold ("any" device, only on a "cpu", only on a
    "gpu"). ``recorded``: ``None`` when ``holds`` was computed from figures measured in this run;
    otherwise the label of the recorded runs it was computed from (card, date, how many runs), for
    a claim this machine cannot show. Outside IPython nothing is displayed.
    """
    if not statement or not isinstance(statement, str):
        raise ValueError(f"a claim needs a statement, got {statement!r}")
    if applies not in APPLIES:
        raise ValueError(f"applies must be one of {APPLIES}, got {applies!r}")
    try:
        holds = bool(holds)  # numpy's bool_ and one-element tensors too
    except (TypeError, RuntimeError, ValueError) as exc:
        raise TypeError(f"claim {statement!r}: holds must be a truth value, got {type(holds).__name__}") from exc
    facts = {str(k): _plain(v) for k, v in (evidence or {}).items()}
    payload = {"statement": statement, "holds": holds, "applies": applies, "evidence": facts,
               "checked": "recorded" if recorded else "here", "source": recorded or ""}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return holds
    if get_ipython() is not None:
        mark = "✓" if holds else "✗"
        where = f"  [recorded on {recorded}]" if recorded else ""
        figures = "; ".join(f"{k} = {_shown(v)}" for k, v in facts.items())
        display({MIME: payload, "text/plain": f"{mark} {statement}{where}" + (f"\n    ({figures})" if figures else "")},
                raw=True)
    return holds
