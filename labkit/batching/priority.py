"""`PriorityBatcher`: several priority levels sharing each batch, none starving.

Level 0 is the most important. Unlike the guide's version, which reserves fixed shares of each
batch and leaves them empty when a level has nothing waiting, every slot is filled while any
request waits (work-conserving). Slots go by ``policy``: ``"strict"`` (level 0 first, then 1, ...)
or ``"weighted"`` (shares by ``weights`` among the levels with requests). ``max_age_ms`` bounds
starvation: requests that have waited that long, from any level, get up to ``aged_share`` of the
next batch (at least one slot), oldest first; the policy fills the rest. Low priority always
progresses, and under overload high priority still keeps most of each batch.
Each level can have its own queue limit and default timeout, as Triton's queue policies do, and
its own order: ``"fifo"``, or ``"edf"`` (earliest deadline first, for requests with timeouts).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import torch
from torch import nn

from labkit.batching.core import Batcher
from labkit.batching.errors import finite
from labkit.batching.queues import PriorityQueues

__all__ = ["PriorityBatcher"]


class PriorityBatcher(Batcher):
    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        *,
        levels: int = 3,
        policy: str = "strict",
        weights: Sequence[float] | None = None,
        order: str = "fifo",
        max_age_ms: float | None = 100.0,
        aged_share: float = 0.25,
        max_queue_size: int | Sequence[int] = 1024,
        timeouts_ms: Sequence[float | None] | None = None,
        **kwargs: Any,
    ) -> None:
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        sizes = [max_queue_size] * levels if isinstance(max_queue_size, int) else list(max_queue_size)
        timeouts = list(timeouts_ms) if timeouts_ms is not None else [None] * levels
        if len(sizes) != levels or len(timeouts) != levels:
            raise ValueError(f"max_queue_size and timeouts_ms need one value per level ({levels})")
        if max_age_ms is not None:
            max_age_ms = finite("max_age_ms", max_age_ms, positive=True)
        timeouts = [None if t is None else finite("timeouts_ms", t, positive=True) for t in timeouts]
        self.levels = levels
        self.timeouts_ms = timeouts
        queue = PriorityQueues(
            levels, policy=policy, weights=weights, order=order, max_sizes=sizes,
            max_age_s=None if max_age_ms is None else max_age_ms / 1e3, aged_share=aged_share,
        )
        super().__init__(fn_or_model, queue, **kwargs)

    def submit(self, x: torch.Tensor, *, priority: int, timeout_ms: float | None = None) -> Coroutine[Any, Any, Any]:
        """Queue ``x`` at ``priority`` (0 = most important); ``timeout_ms`` overrides the level's default.

        A bad ``priority`` raises `ValueError` at once, before anything is awaited.
        """
        return self._submit(x, self._timeout(priority, timeout_ms), priority)

    def submit_sync(self, x: torch.Tensor, *, priority: int, timeout_ms: float | None = None) -> Any:
        timeout = self._timeout(priority, timeout_ms)
        return self._call_sync(lambda: self._submit(x, timeout, priority))

    def _timeout(self, priority: int, timeout_ms: float | None) -> float | None:
        if not isinstance(priority, int) or not 0 <= priority < self.levels:
            raise ValueError(f"priority must be an int in 0..{self.levels - 1} (0 is the most important), got {priority!r}")
        return timeout_ms if timeout_ms is not None else self.timeouts_ms[priority]
