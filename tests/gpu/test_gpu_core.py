"""Core measurement on a real CUDA device. Skipped without one (see tests/conftest.py)."""

import time

import pytest
import torch

from labkit.device import pick_device, sync
from labkit.measure import GPUMonitor, Timer, bench
from labkit.models import build_model
from labkit.sweep import batch_sweep

pytestmark = pytest.mark.gpu

SLEEP_CYCLES = 50_000_000  # tens of ms at any plausible SM clock (0.7-2.1 GHz)


@pytest.fixture(autouse=True)
def warm_cuda():
    """Create the context and load the sleep kernel before anything is timed."""
    torch.cuda.init()
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    yield
    torch.cuda.synchronize()


def test_pick_device_cuda():
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device(f"cuda:{torch.cuda.device_count() - 1}").type == "cuda"


def test_sync_waits_for_queued_work():
    t0 = time.perf_counter()
    torch.cuda._sleep(SLEEP_CYCLES)
    launched_ms = (time.perf_counter() - t0) * 1e3
    assert sync("cuda") is None
    waited_ms = (time.perf_counter() - t0) * 1e3
    assert waited_ms > launched_ms
    assert waited_ms >= 5  # the kernel runs for tens of ms; the launch alone returns at once


def test_timer_measures_the_kernel_not_the_launch():
    t0 = time.perf_counter()
    with Timer("cuda") as t:
        torch.cuda._sleep(SLEEP_CYCLES)
    wall_ms = (time.perf_counter() - t0) * 1e3  # Timer's exit waited for the end event
    assert t.elapsed_ms > 0
    assert t.elapsed_ms >= 5
    assert t.elapsed_ms <= wall_ms + 0.5
    assert t.elapsed_ms >= 0.5 * wall_ms


def test_bench_on_cuda_matmul():
    a = torch.randn(2048, 2048, device="cuda")
    calls = []

    def step():
        calls.append(1)
        return a @ a

    stats = bench(step, warmup=3, repeat=10, device="cuda")
    assert len(calls) == 13
    assert stats.n == 10 == len(stats.samples_ms)
    assert all(x > 0 for x in stats.samples_ms)
    assert stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.per_second() > 0


def test_gpu_monitor_sees_a_busy_gpu():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed here")
    a = torch.randn(4096, 4096, device="cuda")
    with GPUMonitor("cuda", interval_s=0.05) as mon:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            for _ in range(8):
                a @ a
            torch.cuda.synchronize()
    assert mon.nvml, mon.reason
    assert mon.name
    assert len(mon.samples) >= 5
    summary = mon.summary()
    assert summary["util_max_pct"] is not None and summary["util_max_pct"] > 0
    assert summary["mem_max_mib"] is not None and summary["mem_max_mib"] > 0
    with_mem = [s for s in mon.samples if s.mem_used_mib is not None]
    assert with_mem
    assert all(0 < s.mem_used_mib <= s.mem_total_mib for s in with_mem)


def test_batch_sweep_throughput_grows_with_batch():
    model = build_model("tiny_cnn", "small", device="cuda")
    points = batch_sweep(model, [1, 8, 64], device="cuda", warmup=5, repeat=20)
    assert [p.batch_size for p in points] == [1, 8, 64]
    rates = [p.items_per_s for p in points]
    assert rates[0] < rates[1] < rates[2], rates
