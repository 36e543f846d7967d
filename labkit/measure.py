"""Honest timing: timers that synchronise, repeated measurements, percentiles, a GPU monitor.

GPU calls return as soon as the work is queued, so a wall clock read right after one measures the
launch, not the work. `Timer` uses CUDA events (or synchronises) so it measures the work itself;
`bench` warms up and repeats, and reports medians and spreads rather than one lucky run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Timer", "BenchStats", "bench", "Comparison", "compare", "LatencyStats", "GPUMonitor", "MonitorSample", "nvml_status"]


class Timer:
    """Measure the work done inside a ``with`` block, in milliseconds.

    On CUDA it records events on the device's current stream and waits for the end event, so
    ``elapsed_ms`` is GPU time between the two points. On the CPU it reads `time.perf_counter`.

    >>> with Timer("cpu") as t:
    ...     _ = sum(range(1000))
    >>> t.elapsed_ms >= 0
    True
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.elapsed_ms: float = math.nan
        self._cuda = self.device.type == "cuda"

    def __enter__(self) -> Timer:
        if self._cuda:
            self._stream = torch.cuda.current_stream(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record(self._stream)
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self._end.record(self._stream)
            self._end.synchronize()
            self.elapsed_ms = self._start.elapsed_time(self._end)
        else:
            self.elapsed_ms = (time.perf_counter() - self._t0) * 1e3


def _percentile(samples: np.ndarray, q: float) -> float:
    return float(np.percentile(samples, q)) if samples.size else math.nan


@dataclass(frozen=True)
class BenchStats:
    """Summary of repeated timings of one call, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    n: int
    samples_ms: tuple[float, ...] = field(repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> BenchStats:
        a = np.asarray(samples_ms, dtype=float)
        if a.size == 0:
            raise ValueError("bench statistics need at least one sample")
        return cls(
            median_ms=float(np.median(a)),
            p10_ms=_percentile(a, 10),
            p90_ms=_percentile(a, 90),
            min_ms=float(a.min()),
            mean_ms=float(a.mean()),
            n=int(a.size),
            samples_ms=tuple(float(x) for x in a),
        )

    def per_second(self, items_per_call: int = 1) -> float:
        """Throughput implied by the median: items per second."""
        return items_per_call * 1e3 / self.median_ms


def bench(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeat: int = 20,
    device: str | torch.device = "cpu",
) -> BenchStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times, each timed with `Timer`.

    Warm-up absorbs one-off costs (CUDA context, cuDNN autotuning, allocator growth, lazy
    imports) that would otherwise land in the first sample. Each timed call is measured on its own
    so the result has a spread, not just a mean.
    """
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeat):
        with Timer(device) as t:
            fn()
        samples.append(t.elapsed_ms)
    return BenchStats.from_samples(samples)


@dataclass(frozen=True)
class Comparison:
    """Two calls timed in interleaved rounds: ``ratio`` is the median over rounds of a's time over
    b's (above 1: b is faster), the per-round ratios kept as the spread."""

    ratios: tuple[float, ...]
    a_ms: float  # medians over the rounds
    b_ms: float

    @property
    def ratio(self) -> float:
        return float(np.median(self.ratios))


def compare(a: Callable[[], Any], b: Callable[[], Any], *, rounds: int = 7, warmup: int = 2,
            device: str | torch.device = "cpu") -> Comparison:
    """Time ``a`` and ``b`` in ``rounds`` rounds, each round one call of each, their order
    alternating, each call timed with `Timer` after ``warmup`` untimed calls of both.

    A machine whose speed drifts (clocks, heat, another process) would bias a comparison that
    times all of ``a`` and then all of ``b``; paired rounds see the same machine, and the median
    of their ratios ignores the round a pause fell in.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        a()
        b()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    pairs = []
    for number in range(rounds):
        times = {}
        for name, fn in (("a", a), ("b", b)) if number % 2 == 0 else (("b", b), ("a", a)):
            with Timer(device) as t:
                fn()
            times[name] = t.elapsed_ms
        pairs.append((times["a"], times["b"]))
    return Comparison(tuple(ta / tb for ta, tb in pairs), float(np.median([ta for ta, _ in pairs])),
                      float(np.median([tb for _, tb in pairs])))


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of a set of requests, in milliseconds (NaN when there were none)."""

    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=float)
        return cls(
            n=int(a.size),
            mean_ms=float(a.mean()) if a.size else math.nan,
            p50_ms=_percentile(a, 50),
            p90_ms=_percentile(a, 90),
            p99_ms=_percentile(a, 99),
            max_ms=float(a.max()) if a.size else math.nan,
        )

    def __str__(self) -> str:
        return (
            f"n={self.n} p50={self.p50_ms:.2f} ms p90={self.p90_ms:.2f} ms "
            f"p99={self.p99_ms:.2f} ms max={self.max_ms:.2f} ms"
        )


@dataclass(frozen=True)
class MonitorSample:
    """One reading of the device and of this process. GPU fields are None without NVML."""

    t_s: float
    cpu_pct: float
    util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    sm_clock_mhz: float | None = None
    power_w: float | None = None


def _open_nvml(index: int) -> tuple[Any, str | None, str]:
    """(handle, GPU name, explanation); the handle is None when NVML does not answer."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml, index)
        name = pynvml.nvmlDeviceGetName(handle)
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors, ...
        return None, None, f"no NVML ({type(exc).__name__}: {exc})"
    name = name.decode() if isinstance(name, bytes) else name
    return handle, name, f"NVML on GPU {index} ({name})"


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML numbers every GPU in the machine, CUDA only the visible ones (CUDA_VISIBLE_DEVICES):
    match CUDA device ``index`` to its NVML handle by UUID where torch knows it."""
    try:
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:
                return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception:  # an older torch or driver, a MIG slice: fall back to the index
        pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def nvml_status(index: int = 0) -> tuple[bool, str]:
    """Whether NVML answers for GPU ``index``, and a sentence saying so (or why not)."""
    handle, _, reason = _open_nvml(index)
    if handle is not None:
        import pynvml

        pynvml.nvmlShutdown()
    return handle is not None, reason


class GPUMonitor:
    """Sample GPU utilisation, memory, SM clock and power in a background thread through NVML.

    Use as a context manager around the work to watch. Where NVML is missing (a CPU box, a
    container without the driver) it still runs: ``nvml`` is False, ``reason`` says why, and the
    samples carry only this process's CPU utilisation. It never raises from the sampling thread.
    """

    def __init__(self, device: int | str | torch.device = 0, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.index = device if isinstance(device, int) else (torch.device(device).index or 0)
        self.interval_s = interval_s
        self.samples: list[MonitorSample] = []
        self.nvml = False
        self.reason = "not started"
        self.name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GPUMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this GPUMonitor is already running; create a new one")
        import psutil

        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only primes the counter
        self._handle = self._open_nvml()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="labkit-gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():  # never started, or already stopped
            return
        self._stop.set()
        self._thread.join()
        if self.nvml:
            import pynvml

            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def _open_nvml(self) -> Any:
        handle, self.name, self.reason = _open_nvml(self.index)
        self.nvml = handle is not None
        if not self.nvml:
            self.reason += "; sampling this process's CPU use only"
        return handle

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(self._sample())
            except Exception as exc:  # keep the thread alive and say what happened
                self.reason = f"sampling failed: {type(exc).__name__}: {exc}"
            if self._stop.wait(self.interval_s):
                return

    def _sample(self) -> MonitorSample:
        t = time.perf_counter() - self._t0
        cpu = self._process.cpu_percent(None)
        if not self.nvml:
            return MonitorSample(t_s=t, cpu_pct=cpu)
        import pynvml

        def read(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except pynvml.NVMLError:
                return None

        h = self._handle
        util = read(lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        mem = read(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
        clock = read(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
        power_mw = read(lambda: pynvml.nvmlDeviceGetPowerUsage(h))
        return MonitorSample(
            t_s=t,
            cpu_pct=cpu,
            util_pct=None if util is None else float(util),
            mem_used_mib=None if mem is None else mem.used / 2**20,
            mem_total_mib=None if mem is None else mem.total / 2**20,
            sm_clock_mhz=None if clock is None else float(clock),
            power_w=None if power_mw is None else power_mw / 1e3,
        )

    def summary(self) -> dict[str, float | None]:
        """Mean and peak of each quantity over the samples (None where it was not measured)."""

        def stat(name: str, how: Callable[[list[float]], float]) -> float | None:
            values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
            return how(values) if values else None

        mean = lambda v: float(np.mean(v))  # noqa: E731
        return {
            "samples": len(self.samples),
            "util_mean_pct": stat("util_pct", mean),
            "util_max_pct": stat("util_pct", max),
            "mem_max_mib": stat("mem_used_mib", max),
            "sm_clock_mean_mhz": stat("sm_clock_mhz", mean),
            "power_mean_w": stat("power_w", mean),
            "cpu_mean_pct": stat("cpu_pct", mean),
        }
