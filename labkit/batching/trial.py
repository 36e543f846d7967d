"""One batcher under one Poisson load: the experiment behind notebook 01's plots and playground."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from labkit.batching.core import Batcher
from labkit.batching.dynamic import DynamicBatcher
from labkit.load import LoadResult, open_loop

__all__ = ["TrialResult", "poisson_trial", "run_in_fresh_loop"]


@dataclass(frozen=True)
class TrialResult:
    load: LoadResult
    batcher: dict[str, Any]  # BatcherStats.summary()


async def poisson_trial(
    model: Callable[[torch.Tensor], Any] | torch.nn.Module,
    make_input: Callable[[int], torch.Tensor],
    *,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    batcher: type[Batcher] = DynamicBatcher,
    **batcher_kwargs: Any,
) -> TrialResult:
    """Serve ``model`` with a fresh ``batcher(**batcher_kwargs)`` under Poisson load and measure it."""
    async with batcher(model, **batcher_kwargs) as b:
        load = await open_loop(b.submit, make_input, rate_rps=rate_rps, duration_s=duration_s, seed=seed)
    return TrialResult(load, b.stats.summary())


def run_in_fresh_loop(coro_fn: Callable[[], Any]) -> Any:
    """Run ``coro_fn()`` to completion on a new event loop in another thread.

    A widget's callback runs on the thread of Jupyter's own loop, where `asyncio.run` is refused.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()
