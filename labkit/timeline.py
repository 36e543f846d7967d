"""What worked when: one `StageEvent` per stage and item, and what a timeline of them says.

Pipelines (`labkit.parallel.PipelineParallel`, `labkit.streams.StreamPipeline`) record their
timelines in this form; `labkit.plots` draws them and the lessons measure busy time and the
*bubble* (stage-time spent idle while the pipeline fills and drains) from them. A leaf module:
it imports nothing of labkit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StageEvent", "busy_s", "bubble_fraction"]


@dataclass(frozen=True, order=True)
class StageEvent:
    """One stage working on one item (a micro-batch, a batch), in seconds from a common origin."""

    start_s: float
    end_s: float
    stage: int
    item: int


def busy_s(timeline: Sequence[StageEvent], stage: int | None = None) -> float:
    """Seconds of work recorded for ``stage`` (every stage's added up when None)."""
    return float(sum(e.end_s - e.start_s for e in timeline if stage is None or e.stage == stage))


def bubble_fraction(timeline: Sequence[StageEvent], stages: int) -> float:
    """Share of stage-time spent idle between the first start and the last end."""
    if not timeline:
        return 0.0
    span = max(e.end_s for e in timeline) - min(e.start_s for e in timeline)
    return 1.0 - busy_s(timeline) / (stages * span) if span > 0 else 0.0
