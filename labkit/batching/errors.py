"""The specific exceptions a batcher gives a request instead of a result.

A request that times out gets the built-in `TimeoutError`; a model's own exception reaches the
request that caused it unchanged.
"""

from __future__ import annotations

__all__ = ["BatcherError", "QueueFullError", "BatcherStoppedError", "LoadShedError"]


class BatcherError(RuntimeError):
    """Base class of the batcher's own errors."""


class QueueFullError(BatcherError):
    """The queue is at ``max_queue_size``: back off and retry, or send the request elsewhere."""


class BatcherStoppedError(BatcherError):
    """The batcher is not running: not started yet, stopping, or stopped."""


class LoadShedError(BatcherError):
    """Refused because it could no longer meet the latency target (`AdaptiveBatcher(shed=True)`)."""
