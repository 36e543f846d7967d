"""Two experiments every GPU timing lesson needs: the asynchrony trap and the launch overhead.

`async_trap` times one large matrix product three ways. On a GPU the unsynchronised wall clock
reports only the time to *queue* the work, a small fraction of the truth; the synchronised clock
and CUDA events agree. On a CPU all three agree, because the CPU runs the work before returning.

`launch_overhead` measures the fixed cost of one tiny operation: queued back to back (what a
busy GPU pipeline pays per kernel) and one at a time with a sync after each (what a
request-at-a-time server pays). That fixed cost is why batching pays.

`count_operators` counts what one forward pass issues (torch.profiler): the operators the
modules call and, on a GPU, the kernels they launch: how many fixed costs one call pays.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from labkit.device import sync
from labkit.measure import Timer
from labkit.profile import profile_call

__all__ = ["AsyncTrap", "async_trap", "LaunchOverhead", "launch_overhead", "OperatorCount", "count_operators"]


@dataclass(frozen=True)
class AsyncTrap:
    unsynced_wall_ms: float
    synced_wall_ms: float
    event_ms: float


def async_trap(device: str | torch.device, n: int = 2048, repeat: int = 5) -> AsyncTrap:
    """Median over ``repeat`` runs of an ``n``x``n`` float32 matmul, timed three ways."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up: library initialisation and allocator growth
    sync(device)
    unsynced, synced, events = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        unsynced.append((time.perf_counter() - t0) * 1e3)
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        synced.append((time.perf_counter() - t0) * 1e3)
        with Timer(device) as t:
            a @ b
        events.append(t.elapsed_ms)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return AsyncTrap(med(unsynced), med(synced), med(events))


@dataclass(frozen=True)
class LaunchOverhead:
    queued_us: float  # per op, many ops queued and one sync at the end
    synced_us: float  # per op, with a sync after every op


def launch_overhead(device: str | torch.device, calls: int = 2000) -> LaunchOverhead:
    """Per-operation cost of ``x.add_(1)`` on a 1-element tensor, the smallest useful op."""
    device = torch.device(device)
    x = torch.zeros(1, device=device)
    for _ in range(100):
        x.add_(1)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        x.add_(1)
    sync(device)
    queued = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        x.add_(1)
        sync(device)
    synced = (time.perf_counter() - t0) / calls
    return LaunchOverhead(queued * 1e6, synced * 1e6)


@dataclass(frozen=True)
class OperatorCount:
    """What one forward pass issued: top-level aten operators by name, and GPU kernels (None on a CPU)."""

    operators: Counter[str]
    kernels: int | None

    @property
    def total(self) -> int:
        return sum(self.operators.values())


def count_operators(model: nn.Module, example: torch.Tensor) -> OperatorCount:
    """Profile one warmed-up forward of ``model`` on ``example`` (inference mode; `labkit.profile`).

    Operators are counted at the level the modules call them (``aten::conv2d``, not the
    ``aten::convolution`` and allocations inside it); on CUDA every kernel launched is counted too.
    """
    found = profile_call(model, example, steps=1, warmup=1)
    return OperatorCount(found.top_level, None if found.kernels is None else int(found.kernels))
