"""Batch-size sweeps: how latency and throughput of one model change with the batch size.

The lesson's central picture: a GPU call has a fixed cost (launches, Python, memory traffic of
the weights) that a bigger batch spreads over more items, until the device is busy and latency
grows with the batch. The sliders in `labkit.widgets` call this same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from labkit.measure import bench
from labkit.models import example_batch

__all__ = ["SweepPoint", "batch_sweep"]


@dataclass(frozen=True)
class SweepPoint:
    """One batch size: median and spread of one call's latency, and items per second."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    items_per_s: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def batch_sweep(
    model: nn.Module,
    batch_sizes: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeat: int = 10,
) -> list[SweepPoint]:
    """Time ``model`` on a random batch of each size (inference mode, one input batch reused)."""
    device = torch.device(device)
    points = []
    with torch.inference_mode():
        for n in batch_sizes:
            x = example_batch(model, n, device=device)
            stats = bench(lambda x=x: model(x), warmup=warmup, repeat=repeat, device=device)
            points.append(SweepPoint(n, stats.median_ms, stats.p10_ms, stats.p90_ms, stats.per_second(n)))
    return points
