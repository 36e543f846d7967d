"""The specific exceptions a batcher gives a request instead of a result.

A request that times out gets the built-in `TimeoutError`; a model's own exception reaches the
request that caused it unchanged. `finite` is how every setting refuses a bad value.
"""

from __future__ import annotations

import math

__all__ = ["BatcherError", "QueueFullError", "BatcherStoppedError", "LoadShedError", "finite"]


class BatcherError(RuntimeError):
    """Base class of the batcher's own errors."""


class QueueFullError(BatcherError):
    """The queue is at ``max_queue_size``: back off and retry, or send the request elsewhere."""


class BatcherStoppedError(BatcherError):
    """The batcher is not running: not started yet, stopping, or stopped."""


class LoadShedError(BatcherError):
    """Refused because it could no longer meet the latency target (`AdaptiveBatcher(shed=True)`)."""


def finite(name: str, value: float, *, low: float = 0.0, positive: bool = False) -> float:
    """``value`` as a float, or a `ValueError` naming the setting (NaN and infinities too)."""
    value = float(value)
    if not math.isfinite(value) or value < low or (positive and value <= low):
        bound = f"greater than {low:g}" if positive else f"at least {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value
