"""`DynamicBatcher`: first in, first out, a batch leaves when full or when its oldest has waited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from labkit.batching.core import Batcher
from labkit.batching.queues import FifoQueue
from labkit.models import InputSpec

__all__ = ["DynamicBatcher"]


class DynamicBatcher(Batcher):
    """Collects single requests into batches for ``fn_or_model``.

    A batch leaves as soon as ``max_batch_size`` requests wait, or when the *oldest* waiting
    request has waited ``max_wait_ms``. Up to ``max_inflight`` batches run at once, so the next
    batch is collated and copied while the current one computes. At most ``max_queue_size``
    requests wait; past that `submit` raises `QueueFullError` at once (backpressure).

    >>> async with DynamicBatcher(model, max_batch_size=32, max_wait_ms=5) as batcher:
    ...     y = await batcher.submit(x)          # x: one input, no batch dimension
    """

    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue_size: int = 1024,
        max_inflight: int = 2,
        device: str | torch.device | None = None,
        input_spec: InputSpec | None = None,
        results_on_device: bool = False,
        freeze_gc: bool = True,
    ) -> None:
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        self.max_queue_size = max_queue_size
        super().__init__(
            fn_or_model,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_inflight=max_inflight,
            device=device,
            input_spec=input_spec,
            results_on_device=results_on_device,
            freeze_gc=freeze_gc,
        )

    def _make_queue(self) -> FifoQueue:
        return FifoQueue(self.max_queue_size)
