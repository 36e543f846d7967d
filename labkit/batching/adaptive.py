"""`AdaptiveBatcher`: batch size and wait chosen to keep latency under a p99 target.

The batcher fits the cost of a batch online, ``ms ≈ a + b·n`` (a: fixed cost per call, b: cost
per item), by least squares over its recent batches, as BentoML's adaptive batching does. It fits
each batch's *busy* time, not its wall time (`BatchRunner.run`): with several batches in flight,
wall times include waiting behind the others. Fitted to wall times, the line grew with the load
on an H200 (eager ResNet-50: 30 ms wall per batch of 32 with 4 in flight, 6 ms of work), the
rule below then chose small batches that could not keep up, and p50 reached 282 ms against a
50 ms target that two real batch times (about 12 ms) met easily. A
request may wait for the batch ahead of it and then for its own, so the batcher chooses the
largest cap ``n`` with ``2·cost(n) ≤ headroom·target`` and lets a batch wait for company only for
the budget that is left. With ``shed=True`` it refuses, with `LoadShedError`, requests that can
no longer meet the target, at submit and again just before compute: failing fast beats a late
answer nobody waits for.

``policy="aimd"`` is the guide's rule, done properly, for comparison: add ``step`` to the cap
while the slowest request of each batch is comfortably under target, halve it when one is over.
Each policy is a controller (`FittedCostController`, `AimdController`) with one job: say the
(cap, wait) for the next batch, and learn from each finished one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from labkit.batching.dynamic import DynamicBatcher
from labkit.batching.errors import LoadShedError, finite
from labkit.batching.queues import Request

__all__ = ["AdaptiveBatcher", "AimdController", "BatchCostModel", "FittedCostController"]


class BatchCostModel:
    """``ms ≈ a + b·n`` fitted to the last ``window`` (batch size, milliseconds) observations."""

    def __init__(self, window: int = 64) -> None:
        self.sizes: deque[int] = deque(maxlen=window)
        self.times_ms: deque[float] = deque(maxlen=window)
        self.a = self.b = math.nan

    def observe(self, n: int, ms: float) -> None:
        if not math.isfinite(ms):
            return
        self.sizes.append(n)
        self.times_ms.append(ms)
        self._fit()

    @property
    def ready(self) -> bool:
        return bool(self.sizes)

    def predict(self, n: int) -> float:
        return self.a + self.b * n

    def _fit(self) -> None:
        n = np.asarray(self.sizes, dtype=float)
        t = np.asarray(self.times_ms, dtype=float)
        if np.ptp(n) == 0:  # one size seen: no slope to fit; assume all cost scales with n
            self.a, self.b = 0.0, float(np.mean(t / n))
            return
        b, a = np.polyfit(n, t, 1)
        self.b = max(float(b), 1e-6)
        self.a = max(float(a), 0.0)


BACKLOG_BATCHES = 16


class FittedCostController:
    """``policy="model"``: the largest cap whose two batch times fit the budget, by the fit.

    It also keeps up with a backlog: the target bounds each batch's *cost*, but when a batch
    has a large fixed cost (eager ResNet-50 on an H200 cost about 6 ms a batch at any size up
    to 32), small batches serve fewer requests a second than arrive, the queue grows without
    end and every request misses (measured there: batches of 1, p50 15 s). A queue that has not
    emptied for `BACKLOG_BATCHES` batches is such a case, not a burst: the cap's floor rises by
    ``step`` until it does, and halves each time the queue is found empty.
    """

    def __init__(self, cost: BatchCostModel, target_ms: float, headroom: float, step: int) -> None:
        self.cost = cost
        self.budget_ms = headroom * target_ms
        self.step = step
        self.floor = 1
        self._backlogged = 0  # batches since the queue was last empty

    def plan(self, max_batch: int, max_wait_ms: float) -> tuple[int, float]:
        if not self.cost.ready:
            return max_batch, max_wait_ms / 1e3
        predict, budget = self.cost.predict, self.budget_ms
        cap = next((n for n in range(max_batch, 0, -1) if 2 * predict(n) <= budget), 1)
        cap = max(cap, min(self.floor, max_batch))
        wait_ms = min(max(budget - 2 * predict(cap), 0.0), max_wait_ms)
        return cap, wait_ms / 1e3

    def observe(self, worst_ms: float, backlog: bool, max_batch: int, max_wait_ms: float) -> None:
        if not backlog:
            self._backlogged = 0
            self.floor = max(1, self.floor // 2)
            return
        self._backlogged += 1
        if self._backlogged >= BACKLOG_BATCHES:
            cap = self.plan(max_batch, max_wait_ms)[0]
            self.floor = min(max_batch, max(self.floor, cap) + self.step)


class AimdController:
    """``policy="aimd"``: add ``step`` to the cap while the slowest request of a batch is under
    ``headroom·target``, halve it when one is over target; the wait is the configured one."""

    def __init__(self, target_ms: float, headroom: float, step: int) -> None:
        self.target_ms = target_ms
        self.headroom = headroom
        self.step = step
        self.cap = 1

    def plan(self, max_batch: int, max_wait_ms: float) -> tuple[int, float]:
        return min(self.cap, max_batch), max_wait_ms / 1e3

    def observe(self, worst_ms: float, backlog: bool, max_batch: int, max_wait_ms: float) -> None:
        cap = min(self.cap, max_batch)
        if worst_ms > self.target_ms:
            self.cap = max(1, cap // 2)
        elif worst_ms < self.headroom * self.target_ms:
            self.cap = min(max_batch, cap + self.step)


class AdaptiveBatcher(DynamicBatcher):
    """A `DynamicBatcher` that steers its batch cap and wait towards ``target_p99_ms``.

    ``max_batch_size`` and ``max_wait_ms`` become upper bounds. ``history`` records, per batch
    (the last `BatcherStats.window` of them), the time, the cap and wait in force, the fitted
    cost and the slowest latency in the batch: plot it to watch the controller converge.
    """

    def __init__(
        self,
        fn_or_model: Callable[[torch.Tensor], Any] | nn.Module,
        *,
        target_p99_ms: float,
        policy: str = "model",
        shed: bool = False,
        headroom: float = 0.8,
        aimd_step: int = 4,
        window: int = 64,
        max_batch_size: int = 64,
        max_wait_ms: float = 10.0,
        **kwargs: Any,
    ) -> None:
        target_p99_ms = finite("target_p99_ms", target_p99_ms, positive=True)
        if policy not in ("model", "aimd"):
            raise ValueError(f"policy must be 'model' (fitted cost) or 'aimd', got {policy!r}")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        if aimd_step < 1 or window < 1:
            raise ValueError(f"aimd_step and window must be at least 1, got {aimd_step} and {window}")
        self.cost = BatchCostModel(window)  # shared: the "model" policy plans by it, shedding predicts by it
        self.controller: FittedCostController | AimdController = (
            FittedCostController(self.cost, target_p99_ms, headroom, aimd_step) if policy == "model"
            else AimdController(target_p99_ms, headroom, aimd_step)
        )
        self.target_p99_ms = target_p99_ms
        self.policy = policy
        self.shed = shed
        self.headroom = headroom
        super().__init__(fn_or_model, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, **kwargs)
        self.history: deque[dict[str, float]] = deque(maxlen=self.stats.window)

    @property
    def cap(self) -> int:
        """The batch cap in force now."""
        return self._plan()[0]

    @property
    def wait_ms(self) -> float:
        """How long a batch may wait for company now, in ms."""
        return self._plan()[1] * 1e3

    def _plan(self) -> tuple[int, float]:
        """(cap, wait in s), derived afresh from the bounds and the controller, changing nothing:
        raising a bound takes effect at once, and asking (`cap`, `_admit`) is free of effects."""
        return self.controller.plan(self.max_batch_size, self.max_wait_ms)

    def _admit(self, req: Request) -> None:
        if not (self.shed and self.cost.ready):
            return
        cap, _ = self._plan()  # the cap this request's batch would have now, not a stale one
        ahead = len(self._queue)
        expected = (
            (self.cost.predict(cap) if self._running else 0.0)  # the batch computing now
            + (ahead // cap) * self.cost.predict(cap)  # full batches ahead of this one
            + self.cost.predict(ahead % cap + 1)  # this request's own batch
        )
        if expected > self.target_p99_ms:
            self._settle(req, LoadShedError(
                f"would take about {expected:.1f} ms (target_p99_ms={self.target_p99_ms:g}): "
                f"{ahead} requests already waiting"
            ), "shed")

    def _screen(self, batch: list[Request], now: float) -> list[Request]:
        if not (self.shed and self.cost.ready):
            return batch
        compute = self.cost.predict(len(batch))
        keep = []
        for req in batch:
            waited = (now - req.arrival) * 1e3
            if waited + compute > self.target_p99_ms:
                self._settle(req, LoadShedError(
                    f"waited {waited:.1f} ms; with about {compute:.1f} ms of compute it would miss "
                    f"target_p99_ms={self.target_p99_ms:g}"
                ), "shed")
            else:
                keep.append(req)
        return keep

    def _on_batch_done(self, batch: list[Request], busy_ms: float) -> None:
        now = self._loop.time()
        worst_ms = max((now - r.arrival) * 1e3 for r in batch)
        self.cost.observe(len(batch), busy_ms)
        self.controller.observe(worst_ms, len(self._queue) > 0, self.max_batch_size, self.max_wait_ms)
        cap, wait_s = self._plan()
        self.history.append({
            "t": now,
            "size": len(batch),
            "cap": cap,
            "wait_ms": wait_s * 1e3,
            "batch_ms": busy_ms,
            "worst_latency_ms": worst_ms,
            "a_ms": self.cost.a,
            "b_ms": self.cost.b,
        })
