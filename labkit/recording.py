"""`labkit.record(name, value, unit=...)`: a lesson's key figure, kept in the executed notebook.

Like scrapbook's ``glue``: the figure becomes an output of the cell with its own MIME type, so the
executed notebook itself carries it and `labkit report` reads it back, with no side files.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["MIME", "record"]

MIME = "application/vnd.labkit.record+json"


def record(name: str, value: Any, unit: str = "", *, reference: str | None = None,
           reference_label: str = "") -> Any:
    """Record ``value`` (a number, or a short text) under ``name``; return it unchanged.

    ``reference``: the dotted path of the matching figure in bench/results (for example
    ``"batching.resnet50_gpu.fp32_graph.batcher_vs_direct"``), shown beside it in the report as
    the median and range over the recorded runs, with the card. ``reference_label`` says what
    that figure is (model, size, precision, eager or graph), since it is rarely exactly what a
    CPU run measured. Outside IPython (a plain script) nothing is displayed.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a recorded figure needs a name, got {name!r}")
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        stored: float | int | str = value if isinstance(value, int) else float(value)
        if isinstance(stored, float) and not math.isfinite(stored):
            stored = str(stored)  # JSON has no NaN or infinity
    elif isinstance(value, str):
        stored = value
    else:
        raise TypeError(f"record {name!r}: expected a number or a string, got {type(value).__name__}")
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return value
    if get_ipython() is not None:
        shown = f"{stored:,.4g}" if isinstance(stored, float) else str(stored)
        display({MIME: {"name": name, "value": stored, "unit": unit, "reference": reference,
                       "reference_label": reference_label},
                 "text/plain": f"recorded {name} = {shown} {unit}".rstrip()}, raw=True)
    return value
