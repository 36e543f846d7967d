import math
import threading
import time

import pytest

import labkit.measure as measure
from labkit.measure import BenchStats, GPUMonitor, LatencyStats, Timer, bench, nvml_status
from labkit.models import build_model
from labkit.sweep import batch_sweep


def test_latency_stats_known_samples():
    # numpy's linear interpolation over 1..100: rank q/100 * 99, so p50 -> 50.5,
    # p90 -> 1 + 89.1 = 90.1, p99 -> 1 + 98.01 = 99.01.
    s = LatencyStats.from_samples(range(1, 101))
    assert s.n == 100
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.max_ms == 100.0


def test_latency_stats_order_does_not_matter():
    assert LatencyStats.from_samples([3.0, 1.0, 2.0]) == LatencyStats.from_samples([1.0, 2.0, 3.0])


def test_latency_stats_single_sample():
    s = LatencyStats.from_samples([7.5])
    assert s.n == 1
    assert s.mean_ms == s.p50_ms == s.p90_ms == s.p99_ms == s.max_ms == 7.5


def test_latency_stats_empty_is_nan():
    s = LatencyStats.from_samples([])
    assert s.n == 0
    for value in (s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms):
        assert math.isnan(value)
    assert "n=0" in str(s)


def test_bench_stats_from_known_samples():
    s = BenchStats.from_samples([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.n, s.min_ms, s.median_ms, s.mean_ms) == (5, 1.0, 3.0, 3.0)
    assert s.p10_ms == pytest.approx(1.4)  # rank 0.1 * 4 = 0.4 between 1 and 2
    assert s.p90_ms == pytest.approx(4.6)
    assert s.samples_ms == (4.0, 1.0, 3.0, 2.0, 5.0)


def test_bench_stats_need_a_sample():
    with pytest.raises(ValueError):
        BenchStats.from_samples([])


@pytest.mark.parametrize("median_ms, items, expected", [(2.0, 1, 500.0), (4.0, 8, 2000.0)])
def test_per_second_uses_the_median(median_ms, items, expected):
    s = BenchStats.from_samples([median_ms] * 3)
    assert s.per_second(items) == pytest.approx(expected)


@pytest.mark.parametrize("warmup, repeat", [(0, 1), (2, 5), (3, 7)])
def test_bench_calls_warmup_plus_repeat_times(warmup, repeat):
    calls = []
    s = bench(lambda: calls.append(1), warmup=warmup, repeat=repeat)
    assert len(calls) == warmup + repeat
    assert s.n == repeat
    assert len(s.samples_ms) == repeat
    assert s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms
    assert all(x >= 0 for x in s.samples_ms)


def test_bench_times_each_call():
    s = bench(lambda: time.sleep(0.005), warmup=1, repeat=5)
    assert s.median_ms >= 4.5
    assert s.min_ms >= 4.5
    assert s.median_ms < 2000


@pytest.mark.parametrize("warmup, repeat", [(-1, 5), (0, 0), (3, -2)])
def test_bench_rejects_bad_counts(warmup, repeat):
    with pytest.raises(ValueError):
        bench(lambda: None, warmup=warmup, repeat=repeat)


def test_timer_on_cpu_measures_sleep():
    with Timer("cpu") as t:
        time.sleep(0.02)
    assert 19 <= t.elapsed_ms < 2000


def test_timer_is_nan_before_use():
    assert math.isnan(Timer().elapsed_ms)


def test_batch_sweep_on_cpu():
    model = build_model("tiny_cnn", "small")
    points = batch_sweep(model, [1, 4], warmup=1, repeat=3)
    assert [p.batch_size for p in points] == [1, 4]
    for p in points:
        assert 0 < p.p10_ms <= p.median_ms <= p.p90_ms
        assert p.items_per_s == pytest.approx(p.batch_size * 1e3 / p.median_ms)
        assert set(p.as_dict()) == {"batch_size", "median_ms", "p10_ms", "p90_ms", "items_per_s"}


# --- GPUMonitor -----------------------------------------------------------------------------

@pytest.fixture
def no_nvml(monkeypatch):
    """Force the no-NVML path, even on a GPU machine."""
    monkeypatch.setattr(measure, "_open_nvml", lambda index: (None, None, "no NVML (forced)"))


def test_nvml_status_without_nvml():
    ok, reason = nvml_status()
    if ok:
        pytest.skip("NVML answers on this machine")
    assert ok is False
    assert isinstance(reason, str) and "NVML" in reason


def test_nvml_status_reports_forced_failure(no_nvml):
    assert nvml_status() == (False, "no NVML (forced)")


def test_gpu_monitor_on_this_box_without_nvml():
    if nvml_status()[0]:
        pytest.skip("NVML answers on this machine")
    with GPUMonitor(interval_s=0.05) as mon:
        time.sleep(0.3)
    assert mon.nvml is False
    assert "NVML" in mon.reason
    assert len(mon.samples) >= 2


def test_gpu_monitor_samples_cpu_only_without_nvml(no_nvml):
    with GPUMonitor(interval_s=0.05) as mon:
        time.sleep(0.3)
    assert mon.nvml is False
    assert mon.reason.startswith("no NVML (forced)")
    assert len(mon.samples) >= 2
    for s in mon.samples:
        assert isinstance(s.cpu_pct, float)
        assert s.util_pct is None and s.mem_used_mib is None and s.power_w is None
    times = [s.t_s for s in mon.samples]
    assert times == sorted(times) and times[0] >= 0
    summary = mon.summary()
    assert summary["samples"] == len(mon.samples)
    assert isinstance(summary["cpu_mean_pct"], float)
    for key in ("util_mean_pct", "util_max_pct", "mem_max_mib", "sm_clock_mean_mhz", "power_mean_w"):
        assert summary[key] is None


def test_gpu_monitor_survives_a_failing_sampler(no_nvml, monkeypatch):
    calls = []

    def broken(self):
        calls.append(1)
        raise OSError("sensor gone")

    monkeypatch.setattr(GPUMonitor, "_sample", broken)
    mon = GPUMonitor(interval_s=0.02)
    mon.start()
    try:
        deadline = time.perf_counter() + 2.0
        while len(calls) < 3 and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 3, "the sampling thread stopped after the first failure"
        assert mon._thread.is_alive()
    finally:
        stopper = threading.Thread(target=mon.stop)
        stopper.start()
        stopper.join(timeout=5)
    assert not stopper.is_alive(), "stop() did not return"
    assert not mon._thread.is_alive()
    assert mon.samples == []
    assert "sampling failed" in mon.reason and "OSError" in mon.reason


def test_gpu_monitor_cannot_start_twice(no_nvml):
    with GPUMonitor(interval_s=0.05) as mon:
        with pytest.raises(RuntimeError):
            mon.start()


def test_gpu_monitor_stop_without_start_is_harmless():
    mon = GPUMonitor()
    mon.stop()
    assert mon.samples == [] and mon.reason == "not started"


@pytest.mark.parametrize("interval", [0, -0.1])
def test_gpu_monitor_rejects_non_positive_interval(interval):
    with pytest.raises(ValueError):
        GPUMonitor(interval_s=interval)


@pytest.mark.parametrize("device, index", [(0, 0), (1, 1), ("cuda", 0), ("cuda:1", 1), ("cpu", 0)])
def test_gpu_monitor_device_index(device, index):
    assert GPUMonitor(device).index == index


def test_compare_pairs_the_calls_in_rounds_of_alternating_order_and_takes_the_median_ratio():
    order: list[str] = []
    slow = lambda: (order.append("a"), time.sleep(0.004))  # noqa: E731
    fast = lambda: (order.append("b"), time.sleep(0.001))  # noqa: E731
    result = measure.compare(slow, fast, rounds=4, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then a b | b a | a b | b a
    assert len(result.ratios) == 4 and 2.0 < result.ratio < 5.0  # about 4 ms against about 1 ms
    assert result.a_ms > result.b_ms


def test_compare_ignores_the_round_a_pause_fell_in():
    calls = {"n": 0}

    def a():
        calls["n"] += 1
        time.sleep(0.05 if calls["n"] == 3 else 0.002)  # one long pause, in one round

    result = measure.compare(a, lambda: time.sleep(0.002), rounds=5, warmup=0)
    assert max(result.ratios) > 10 and 0.5 < result.ratio < 2.0
