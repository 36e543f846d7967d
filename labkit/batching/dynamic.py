"""`DynamicBatcher`: first in, first out, a batch leaves when full or when its oldest has waited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from labkit.batching.core import Batcher
from labkit.batching.queues import FifoQueue

__all__ = ["DynamicBatcher"]


class DynamicBatcher(Batcher):
    """Collects single requests into batches for ``fn_or_model``.

    A batch leaves as soon as ``max_batch_size`` requests wait, or when the *oldest* waiting
    request has waited ``max_wait_ms``. Up to ``max_inflight`` batches run at once, so the next
    batch is collated and copied while the current one computes. At most ``max_queue_size``
    requests wait; past that `submit` raises `QueueFullError` at once (backpressure). The other
    settings (``max_batch_size``, ``max_wait_ms``, ``max_inflight``, ``device``, ``input_spec``,
    ``results_on_device``, ``freeze_gc``) are `Batcher`'s.

    >>> async with DynamicBatcher(model, max_batch_size=32, max_wait_ms=5) as batcher:
    ...     y = await batcher.submit(x)          # x: one input, no batch dimension
    """

    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        *,
        max_queue_size: int = 1024,
        **settings: Any,
    ) -> None:
        self.max_queue_size = max_queue_size
        super().__init__(fn_or_model, FifoQueue(max_queue_size), **settings)
