"""Where a call's time goes, read from `torch.profiler` (nothing here re-implements it): the top
operators and kernels, kernels per step, host time against the device's busy time with the
diagnosis they support, and a trace for Perfetto or chrome://tracing.

On a CPU there is no device queue: the table holds CPU operators and the diagnosis says so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from labkit.device import sync

__all__ = ["OpRow", "Profile", "diagnose", "profile_call"]

# A step whose device was busy this share of its wall time or more is compute-bound; at or below
# LAUNCH_BOUND the device mostly waited for the host to queue work (launch-bound).
COMPUTE_BOUND, LAUNCH_BOUND = 0.8, 0.5


@dataclass(frozen=True)
class OpRow:
    """One operator or kernel, over every profiled step (times include what it called)."""

    name: str
    count: int
    cpu_ms: float
    device_ms: float


def diagnose(wall_ms: float, device_ms: float | None) -> str:
    """What a step's numbers say: launch-bound, compute-bound or between, with the numbers."""
    if device_ms is None:
        return f"CPU: {wall_ms:.3f} ms a step, all of it host time (no device queue to wait on)"
    busy = device_ms / wall_ms if wall_ms > 0 else 0.0
    figures = f"device busy {device_ms:.3f} ms of a {wall_ms:.3f} ms step ({busy:.0%})"
    if busy >= COMPUTE_BOUND:
        return f"compute-bound: {figures}; a faster kernel or less work helps, fewer launches do not"
    if busy <= LAUNCH_BOUND:
        return f"launch-bound: {figures}; the device waits for the host: batch more, or replay a CUDA graph"
    return f"between: {figures}"


@dataclass
class Profile:
    """A profiled call: ``steps`` calls after warm-up, under `torch.profiler`."""

    rows: list[OpRow]  # most device time first on a GPU, most CPU time first on a CPU
    top_level: Counter[str]  # aten operators as modules call them (not the ones inside them)
    steps: int
    wall_ms: float  # per step, the device synchronised
    device_ms: float | None  # per step: the kernels' busy time (None on a CPU)
    kernels: float | None  # kernels launched per step (None on a CPU)
    profiler: Any  # the torch.profiler.profile, for its own views

    @property
    def diagnosis(self) -> str:
        return diagnose(self.wall_ms, self.device_ms)

    def table(self, top: int = 10) -> str:
        """The ``top`` rows as aligned text, times per step."""
        lines = [f"{'operator or kernel':52s} {'calls/step':>10s} {'CPU ms':>9s} {'device ms':>10s}"]
        for row in self.rows[:top]:
            lines.append(f"{row.name[:52]:52s} {row.count / self.steps:10.1f} {row.cpu_ms / self.steps:9.3f} "
                         f"{row.device_ms / self.steps:10.3f}")
        return "\n".join(lines)

    def export_trace(self, path: str | Path) -> Path:
        """A Chrome trace (open it in ui.perfetto.dev or chrome://tracing)."""
        path = Path(path)
        self.profiler.export_chrome_trace(str(path))
        return path


def profile_call(fn: Callable[..., Any], *args: Any, steps: int = 3, warmup: int = 2,
                 device: str | torch.device | None = None) -> Profile:
    """Profile ``steps`` calls of ``fn(*args)`` under ``torch.inference_mode``, after ``warmup``
    calls (lazy initialisation, algorithm choice and caches stay out of the figures).

    ``device``: where ``fn`` runs (default: the first tensor argument's device); on CUDA its
    kernels are profiled too and every step ends with a synchronisation.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if device is None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                fn(*args)
            sync(device)
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
    return _summarise(prof, steps, wall_ms, cuda)


def _device_us(entry: Any) -> float:
    """An event's device time in µs (``device_time_total``; older torch: ``cuda_time_total``)."""
    return float(getattr(entry, "device_time_total", getattr(entry, "cuda_time_total", 0.0)) or 0.0)


def _summarise(prof: Any, steps: int, wall_ms: float, cuda: bool) -> Profile:
    rows = [OpRow(e.key, e.count, e.cpu_time_total / 1e3, _device_us(e) / 1e3) for e in prof.key_averages()]
    rows.sort(key=lambda r: (r.device_ms, r.cpu_ms) if cuda else (r.cpu_ms,), reverse=True)
    events = prof.events()
    top_level = Counter(e.name for e in events if e.name.startswith("aten::")
                        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    kernels = device_ms = None
    if cuda:
        launched = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels = len(launched) / steps
        device_ms = sum(_device_us(e) for e in launched) / 1e3 / steps
    return Profile(rows, top_level, steps, wall_ms, device_ms, kernels, prof)
