"""What a generation batcher did: counts, throughput, latency, and how full its batch and cache were.

`StepRecorder` is updated on the batcher's event loop (never from the worker); `GenerationStats`
is the frozen snapshot ``b.stats`` returns, so a lesson can keep one and compare it with another.
Per-step means are running sums and the timeline is bounded, so a long-running batcher's memory
stays bounded too.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from labkit.measure import LatencyStats

__all__ = ["GenerationStats", "StepSample", "StepRecorder"]


@dataclass(frozen=True)
class StepSample:
    """One step, for the occupancy plot: when it ended and what the batch and cache held."""

    t_s: float  # seconds since the first admission
    active: int  # sequences the step computed
    reserved_slots: int  # token slots of the blocks allocated
    held_tokens: int  # tokens whose K/V are in the cache


@dataclass(frozen=True)
class GenerationStats:
    completed: int
    failed: int  # the model raised in a step this request was in
    timed_out: int
    cancelled: int
    refused: int  # at submit: bad prompt, too long for the batcher, or not running
    tokens_generated: int  # new tokens sampled (a recompute after preemption samples none twice)
    busy_s: float  # first admission to the end of the last step
    tokens_per_s: float  # tokens_generated / busy_s
    ttft: LatencyStats  # submit to first token
    tpot: LatencyStats  # per request: (finish - first token) / (tokens - 1)
    occupancy: float  # mean over steps of active sequences / max_batch_size
    kv_utilisation: float  # mean over steps of tokens held / token slots reserved
    peak_sequences: int  # most sequences holding cache memory at once
    preemptions: int
    steps: int
    max_batch_size: int
    timeline: tuple[StepSample, ...]  # the last steps (bounded), oldest first

    def summary(self) -> dict[str, float | int]:
        """The figures as plain numbers (bench JSON, notebook tables); no timeline."""
        return {
            "completed": self.completed, "failed": self.failed, "timed_out": self.timed_out,
            "cancelled": self.cancelled, "refused": self.refused,
            "tokens_generated": self.tokens_generated, "busy_s": self.busy_s, "tokens_per_s": self.tokens_per_s,
            "ttft_p50_ms": self.ttft.p50_ms, "ttft_p99_ms": self.ttft.p99_ms,
            "tpot_p50_ms": self.tpot.p50_ms, "tpot_p99_ms": self.tpot.p99_ms,
            "occupancy": self.occupancy, "kv_utilisation": self.kv_utilisation,
            "peak_sequences": self.peak_sequences, "preemptions": self.preemptions, "steps": self.steps,
        }


class StepRecorder:
    """The mutable side of `GenerationStats`; ``window`` bounds latency samples and the timeline."""

    def __init__(self, max_batch_size: int, window: int = 10_000) -> None:
        self.max_batch_size = max_batch_size
        self.counts = dict.fromkeys(("completed", "failed", "timed_out", "cancelled", "refused"), 0)
        self.tokens = self.preemptions = self.steps = self.peak = 0
        self.first: float | None = None  # loop time of the first admission
        self.last = math.nan  # loop time the last step ended
        self._occupancy = self._utilisation = 0.0  # sums over steps
        self._ttft_ms: deque[float] = deque(maxlen=window)
        self._tpot_ms: deque[float] = deque(maxlen=window)
        self._timeline: deque[StepSample] = deque(maxlen=window)

    def admitted(self, now: float) -> None:
        if self.first is None:
            self.first = now

    def step(self, now: float, active: int, reserved: int, held: int, sequences: int) -> None:
        """A step ended: ``active`` sequences computed; the cache's state after it."""
        self.steps += 1
        self.last = now
        self._occupancy += active / self.max_batch_size
        self._utilisation += held / reserved if reserved else 0.0
        self.peak = max(self.peak, sequences)
        self._timeline.append(StepSample(now - (self.first or now), active, reserved, held))

    def finished(self, arrival: float, first_token: float, end: float, n_tokens: int) -> None:
        """A request completed with ``n_tokens`` tokens (loop times)."""
        self._ttft_ms.append((first_token - arrival) * 1e3)
        if n_tokens > 1:
            self._tpot_ms.append((end - first_token) * 1e3 / (n_tokens - 1))

    def snapshot(self) -> GenerationStats:
        busy = self.last - self.first if self.first is not None and self.steps else 0.0
        steps = max(self.steps, 1)
        return GenerationStats(
            **self.counts, tokens_generated=self.tokens, busy_s=busy,
            tokens_per_s=self.tokens / busy if busy > 0 else math.nan,
            ttft=LatencyStats.from_samples(self._ttft_ms), tpot=LatencyStats.from_samples(self._tpot_ms),
            occupancy=self._occupancy / steps, kv_utilisation=self._utilisation / steps,
            peak_sequences=self.peak, preemptions=self.preemptions, steps=self.steps,
            max_batch_size=self.max_batch_size, timeline=tuple(self._timeline),
        )
