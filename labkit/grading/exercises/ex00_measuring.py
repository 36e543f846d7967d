"""Exercise 00: timing asynchronous work honestly, and comparing two things on a drifting machine.

The probes hand the answer a fake clock and a fake device built from the inputs, so a grade never
depends on how noisy the grading machine is: an answer that reads the clock at the right moments
gets the true durations exactly, and each typical mistake gets its own wrong numbers. The judges
re-run those mistakes on the same fakes (in the grader's process) to recognise them and say which
one it was.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading.plain import describe, to_plain
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial

BENCH_KEYS = ("p50_ms", "p99_ms", "mean_ms")
BENCH_TOLERANCE = 0.02  # relative: each typical mistake lands at least 10% away in the public cases
COMPARE_TOLERANCE = 0.05  # relative: interleaved rounds land within 2%, a biased order 15% or more away


def _number(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _close(got: Any, wants: Sequence[float], tolerance: float) -> bool:
    return _number(got) and any(abs(got - w) <= tolerance * abs(w) + 1e-9 for w in wants)


# -- 00.bench: a fake asynchronous device -------------------------------------------------------


class FakeGPU:
    """A device that queues work: ``fn()`` costs ``host_us`` of host time and queues a kernel of
    the next duration in line; ``sync()`` waits (advances the clock) until the queue is empty;
    ``clock()`` is the time in seconds. Counts the calls of each."""

    def __init__(self, kernel_ms: Sequence[float], host_us: float) -> None:
        self.kernels_s = [k / 1e3 for k in kernel_ms]
        self.host_s = host_us / 1e6
        self.now = 0.0  # host time
        self.idle_at = 0.0  # when the device finishes what is queued
        self.fn_calls = self.sync_calls = 0

    def fn(self) -> None:
        self.now += self.host_s
        kernel = self.kernels_s[min(self.fn_calls, len(self.kernels_s) - 1)]
        self.idle_at = max(self.now, self.idle_at) + kernel
        self.fn_calls += 1

    def sync(self) -> None:
        self.now = max(self.now, self.idle_at)
        self.sync_calls += 1

    def clock(self) -> float:
        return self.now


def _bench_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    gpu = FakeGPU(inputs["warmup_ms"] + inputs["kernel_ms"], inputs["host_us"])
    output = answer(gpu.fn, gpu.sync, gpu.clock, warmup=len(inputs["warmup_ms"]), repeat=len(inputs["kernel_ms"]))
    return output, {"fn_calls": gpu.fn_calls, "sync_calls": gpu.sync_calls}


def percentiles(samples: Sequence[float], q: float) -> list[float]:
    """The ``q``-th percentile by each definition an answer may fairly use: nearest rank, linear
    interpolation (numpy's default, `statistics.quantiles(method="inclusive")`), its lower and
    higher neighbours, and `statistics.quantiles`' default ("exclusive")."""
    s, n = sorted(samples), len(samples)

    def at(position: float) -> float:  # 0-based, interpolated, clamped to the samples
        position = min(max(position, 0.0), n - 1.0)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        return s[low] + (s[high] - s[low]) * (position - low)

    linear = (n - 1) * q / 100
    return [s[max(1, math.ceil(q / 100 * n)) - 1], at(linear), s[math.floor(linear)], s[math.ceil(linear)],
            at((n + 1) * q / 100 - 1)]


def _stats(samples_ms: Sequence[float]) -> dict[str, list[float]]:
    """Every acceptable value of each key of a bench of these samples."""
    return {"p50_ms": percentiles(samples_ms, 50), "p99_ms": percentiles(samples_ms, 99),
            "mean_ms": [statistics.fmean(samples_ms)]}


def _shown(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.4g}" if high - low <= 1e-9 * abs(high) else f"{low:.4g} to {high:.4g}"


# Typical mistakes, each run on a fresh FakeGPU: what it would report, and what to say when an
# answer reports the same.

def _timed(gpu: FakeGPU, before: Callable[[], None], after: Callable[[], None]) -> float:
    before()
    start = gpu.clock()
    gpu.fn()
    after()
    return (gpu.clock() - start) * 1e3


def _no_sync(gpu: FakeGPU, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        gpu.fn()
    return [_timed(gpu, lambda: None, lambda: None) for _ in range(repeat)]


def _whole_loop(gpu: FakeGPU, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        gpu.fn()
    gpu.sync()
    start = gpu.clock()
    for _ in range(repeat):
        gpu.fn()
    gpu.sync()
    return [(gpu.clock() - start) * 1e3 / repeat] * repeat


def _warmup_timed(gpu: FakeGPU, warmup: int, repeat: int) -> list[float]:
    return [_timed(gpu, gpu.sync, gpu.sync) for _ in range(warmup + repeat)]


def _warmup_still_queued(gpu: FakeGPU, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        gpu.fn()
    return [_timed(gpu, lambda: None, gpu.sync) for _ in range(repeat)]


MISTAKES: tuple[tuple[Callable[[FakeGPU, int, int], list[float]], str], ...] = (
    (_no_sync, "fn() only queues its kernel: a clock read before sync() times just the launch; call sync() "
               "after fn(), then read the clock"),
    (_whole_loop, "timing the whole loop gives one average, no spread: time each call alone (sync, clock, fn(), "
                  "sync, clock)"),
    (_warmup_timed, "the warm-up calls were timed too: run them untimed, then time the repeat calls"),
    (_warmup_still_queued, "the first timed call also waited for the queued warm-up kernels: sync() before the "
                           "first clock reading"),
)


def _diagnose_bench(got: dict, wrong: list[str], kernel_ms: list[float], warmup_ms: list[float],
                    host_us: float, truth: dict[str, list[float]], samples: list[float]) -> str | None:
    """A hint naming the mistake that gives exactly ``got``, else None."""
    for mistake, hint in MISTAKES:
        seen = _stats(mistake(FakeGPU(warmup_ms + kernel_ms, host_us), len(warmup_ms), len(kernel_ms)))
        if all(_close(got[k], seen[k], BENCH_TOLERANCE) for k in BENCH_KEYS):
            return hint
    if all(_close(got[k] * 1e3, truth[k], BENCH_TOLERANCE) for k in BENCH_KEYS):
        return "these are seconds: clock() counts seconds, the keys want milliseconds (x 1000)"
    if "p99_ms" in wrong and _close(got["p99_ms"], [max(samples)], BENCH_TOLERANCE):
        return "p99 is the time 99% of calls stay under, not the slowest call: take the 99th percentile"
    if "p50_ms" in wrong and _close(got["p50_ms"], truth["mean_ms"], BENCH_TOLERANCE):
        return "p50 is the median of the samples, not their mean (a few slow calls drag a mean up)"
    if wrong == ["mean_ms"] and _close(got["mean_ms"], truth["p50_ms"], BENCH_TOLERANCE):
        return "mean_ms is the mean of the samples (it includes the slow calls), not their median"
    return None


def _bench(warmup_ms: Sequence[float], kernel_ms: Sequence[float], hint: str = "", host_us: float = 5.0) -> Trial:
    """(warmup_ms: the warm-up calls' kernel durations, kernel_ms: the timed calls' ones, hint, host_us:
    the host time of one launch)"""
    warmup_ms, kernel_ms = [float(k) for k in warmup_ms], [float(k) for k in kernel_ms]
    if not kernel_ms or min(warmup_ms + kernel_ms) < 0 or not host_us >= 0:
        raise ValueError("need at least one timed kernel, no negative durations")
    warmup, repeat = len(warmup_ms), len(kernel_ms)
    samples = [host_us / 1e3 + k for k in kernel_ms]  # what an honest bench measures, in ms
    truth = _stats(samples)
    median = statistics.median(kernel_ms)
    slow = [k for k in kernel_ms if k > 2 * median]
    warm = f"warm-up kernels {_shown(warmup_ms)} ms, " if warmup_ms else ""
    call = (f"bench(fn, sync, clock, warmup={warmup}, repeat={repeat}) on a fake GPU: {host_us:g} µs per launch, "
            f"{warm}timed kernels ~{median:.4g} ms" + (f", {len(slow)} slow (up to {max(slow):.4g} ms)" if slow else ""))
    expected = "{" + ", ".join(f"'{k}': {_shown(truth[k])}" for k in BENCH_KEYS) + "}"

    def judge(seen: Observation) -> None:
        got = seen.output
        if not (isinstance(got, dict) and all(_number(got.get(k)) for k in BENCH_KEYS)):
            raise Mismatch(call, f"a dict of numbers {expected}", describe(got),
                           "return a dict with the keys p50_ms, p99_ms and mean_ms, in milliseconds")
        fn_calls, sync_calls = seen.extra.get("fn_calls"), seen.extra.get("sync_calls")
        if fn_calls != warmup + repeat:
            raise Mismatch(f"{call}: calls of fn", f"{warmup + repeat} ({warmup} warm-up + {repeat} timed)",
                           describe(fn_calls), "call fn warmup times untimed, then repeat times, each timed")
        if sync_calls == 0:
            raise Mismatch(f"{call}: calls of sync", "at least one per timed call", "0", MISTAKES[0][1])
        wrong = [k for k in BENCH_KEYS if not _close(got[k], truth[k], BENCH_TOLERANCE)]
        if wrong:
            why = _diagnose_bench(got, wrong, kernel_ms, warmup_ms, host_us, truth, samples)
            shown = "{" + ", ".join(f"'{k}': {got[k]:.4g}" for k in BENCH_KEYS) + "}"
            raise Mismatch(f"{call}: {', '.join(wrong)} wrong", expected, shown, why or hint)

    inputs = {"warmup_ms": warmup_ms, "kernel_ms": kernel_ms, "host_us": float(host_us)}
    return Trial(call, "bench", inputs, judge, hint)


# -- 00.compare: a machine whose speed drifts ---------------------------------------------------


class DriftingMachine:
    """Two synchronous functions on one fake clock: each call of ``a`` or ``b`` takes its base time
    times the machine's slowness when it starts, ``1 + drift_per_s * t`` (the card heating up, or
    speeding up when negative, never below a fifth); ``pause`` = [name, call index, ms] adds a
    one-off stall (a garbage collection) to one call."""

    def __init__(self, a_ms: float, b_ms: float, drift_per_s: float, pause: Sequence | None) -> None:
        self.base_s = {"a": a_ms / 1e3, "b": b_ms / 1e3}
        self.drift_per_s = drift_per_s
        self.pause = (str(pause[0]), int(pause[1]), float(pause[2]) / 1e3) if pause else None
        self.now = 0.0
        self.count = {"a": 0, "b": 0}
        self.order: list[str] = []

    def run(self, name: str) -> None:
        slowness = max(0.2, 1.0 + self.drift_per_s * self.now)
        self.now += self.base_s[name] * slowness
        if self.pause and self.pause[:2] == (name, self.count[name]):
            self.now += self.pause[2]
        self.count[name] += 1
        if len(self.order) < 10_000:
            self.order.append(name)

    def a(self) -> None:
        self.run("a")

    def b(self) -> None:
        self.run("b")

    def clock(self) -> float:
        return self.now


def _machine(inputs: dict) -> DriftingMachine:
    return DriftingMachine(inputs["a_ms"], inputs["b_ms"], inputs["drift_per_s"], inputs["pause"])


def _compare_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    machine = _machine(inputs)
    output = answer(machine.a, machine.b, machine.clock, rounds=inputs["rounds"])
    return output, {"a_calls": machine.count["a"], "b_calls": machine.count["b"], "order": "".join(machine.order)}


def _round_ratios(machine: DriftingMachine, rounds: int) -> list[float]:
    """a then b in each round, time_a / time_b per round."""
    ratios = []
    for _ in range(rounds):
        start = machine.clock()
        machine.a()
        middle = machine.clock()
        machine.b()
        ratios.append((middle - start) / (machine.clock() - middle))
    return ratios


def _one_after_the_other(machine: DriftingMachine, rounds: int) -> float:
    start = machine.clock()
    for _ in range(rounds):
        machine.a()
    middle = machine.clock()
    for _ in range(rounds):
        machine.b()
    return (middle - start) / (machine.clock() - middle)


def _compare(a_ms: float, b_ms: float, rounds: int, drift_per_s: float = 0.0, pause: Sequence | None = None,
             hint: str = "") -> Trial:
    """(a_ms, b_ms, rounds, drift_per_s: how much slower the machine gets per second, pause: [name ('a' or 'b'),
    which call (from 0), ms] or None, hint)"""
    if not (a_ms > 0 and b_ms > 0 and isinstance(rounds, int) and rounds >= 1):
        raise ValueError("need a_ms > 0, b_ms > 0 and an integer rounds >= 1")
    if pause is not None and not (len(pause) == 3 and pause[0] in ("a", "b") and int(pause[1]) >= 0):
        raise ValueError("pause is [name ('a' or 'b'), call index from 0, ms]")
    truth = a_ms / b_ms
    inputs = {"a_ms": float(a_ms), "b_ms": float(b_ms), "rounds": rounds, "drift_per_s": float(drift_per_s),
              "pause": None if pause is None else [str(pause[0]), int(pause[1]), float(pause[2])]}
    drifts = (f"; each call takes (1 {'+' if drift_per_s > 0 else '-'} {abs(drift_per_s):g}·t)x its base time "
              "(t: seconds since the start)" if drift_per_s else "")
    paused = f"; call {int(pause[1]) + 1} of {pause[0]} stalls for {pause[2]:g} ms" if pause else ""
    call = f"compare(a = {a_ms:g} ms of work, b = {b_ms:g} ms, clock, rounds={rounds}){drifts}{paused}"
    expected = f"{truth:.4g} (within {COMPARE_TOLERANCE:.0%})"

    def diagnose(got: float, order: str) -> str | None:
        if _close(got, [1 / truth], COMPARE_TOLERANCE):
            return "return time_a / time_b: how many times faster b is (above 1 when b is faster)"
        if pause is not None:
            means = [statistics.fmean(_round_ratios(_machine(inputs), rounds)), _totals(inputs, rounds),
                     _one_after_the_other(_machine(inputs), rounds)]
            if _close(got, means, COMPARE_TOLERANCE):
                return ("one round hit a stall, and a mean (or a ratio of totals) follows it: return the median of "
                        "the per-round ratios")
        switches = sum(x != y for x, y in zip(order, order[1:], strict=False))
        if drift_per_s != 0 and switches < rounds:
            return ("a and b were not interleaved: the machine's speed drifts, so whichever runs later looks "
                    "slower or faster; time a then b in every round")
        return None

    def judge(seen: Observation) -> None:
        got = seen.output
        if not _number(got):
            raise Mismatch(call, f"a number, {expected}", describe(got), "return time_a / time_b as a float")
        a_calls, b_calls = seen.extra.get("a_calls"), seen.extra.get("b_calls")
        if not (_number(a_calls) and _number(b_calls) and a_calls >= rounds and b_calls >= rounds):
            raise Mismatch(f"{call}: calls of a and b", f"at least {rounds} each (one per round)",
                           f"a {describe(a_calls)}, b {describe(b_calls)}", "call a and b once each in every round")
        if not _close(got, [truth], COMPARE_TOLERANCE):
            order = seen.extra.get("order")
            why = diagnose(got, order if isinstance(order, str) else "")
            raise Mismatch(call, expected, f"{got:.4g}", why or hint)

    return Trial(call, "compare", inputs, judge, hint)


def _totals(inputs: dict, rounds: int) -> float:
    """Interleaved rounds, but the ratio of the summed times."""
    machine, time_a, time_b = _machine(inputs), 0.0, 0.0
    for _ in range(rounds):
        start = machine.clock()
        machine.a()
        middle = machine.clock()
        machine.b()
        time_a, time_b = time_a + middle - start, time_b + machine.clock() - middle
    return time_a / time_b


# -- 00.share_of_peak ---------------------------------------------------------------------------


def _share(args: Sequence[float], expected: float, hint: str = "") -> Trial:
    """(args: (items_per_s, flops_per_item, peak_tflops), expected share, hint)"""
    items_per_s, flops_per_item, peak_tflops = args
    call = f"share_of_peak({items_per_s!r}, {flops_per_item!r}, {peak_tflops!r})"

    def judge(seen: Observation) -> None:
        got = seen.output
        if _close(got, [expected], 1e-6):
            return
        why = None
        if _number(got) and expected and _close(got, [100 * expected], 1e-6):
            why = "a share of 1 (0.25 for a quarter), not a percentage"
        elif _number(got) and expected and _close(got, [1e12 * expected], 1e-6):
            why = "the peak is in TFLOP/s: multiply it by 1e12 to compare it with FLOP/s"
        raise Mismatch(call, f"{expected:.6g}", describe(got), why or hint)

    return Trial(call, "call", {"args": to_plain(list(args))}, judge, hint)


# -- the questions ------------------------------------------------------------------------------


def _shuffled(values: list[float], seed: int) -> list[float]:
    """A fixed interleaving of ``values`` (the slow calls spread through the run, not bunched)."""
    import random

    out = list(values)
    random.Random(seed).shuffle(out)
    return out


# 200 timed calls: every percentile definition agrees (p50 on a plateau at 2.2 ms, p99 on three
# calls of 9 ms), and the slowest call (30 ms) is not the p99. The first timed kernel is a fast one.
_TYPICAL = [2.0] + _shuffled([2.0] * 39 + [2.1] * 50 + [2.2] * 50 + [2.3] * 36 + [2.5] * 20 + [9.0] * 3 + [30.0], 0)
# tiny kernels: the launch is a large part of each call
_TINY = _shuffled([0.02] * 40 + [0.03] * 45 + [0.05] * 12 + [0.2] * 3, 1)

QUESTIONS = [
    Question("00.bench", "Time asynchronous work: sync, warm up, percentiles", 4, _bench, (
        ([50.0] * 3, _TYPICAL, "sync before each clock reading, skip the warm-up, one sample per call"),
        ([], [1.0, 1.5, 1.2, 4.0, 1.1, 1.3, 1.4, 4.0, 1.6], "warmup=0: no warm-up calls; still one sample per call"),
        ([10.0] * 5, _TINY, "tiny kernels: the launch is part of each call's time", 50.0),
    ), minutes=25),
    Question("00.compare", "Compare two things in interleaved rounds", 3, _compare, (
        (30.0, 10.0, 21, 0.5, None, "the machine slows down during the run: interleave a and b"),
        (4.0, 8.0, 15, 0.0, ["a", 7, 400.0], "one round is hit by a stall: take the median of the per-round ratios"),
        (12.0, 3.0, 25, -0.8, None, "the machine speeds up during the run: interleave a and b"),
    ), minutes=15),
    Question("00.share_of_peak", "Achieved FLOP/s as a share of the peak", 1, _share, (
        ((2000, 4.1e9, 19.5), 2000 * 4.1e9 / 19.5e12, "FLOP/s achieved = items/s x FLOP per item; the peak is "
                                                      "in TFLOP/s (1e12 FLOP/s)"),
        ((12000, 8.2e9, 989.5), 12000 * 8.2e9 / 989.5e12, "a share of 1, not a percentage"),
        ((0, 4.1e9, 19.5), 0.0, "nothing done is no share of the peak"),
    ), minutes=5),
]
PROBES = {"bench": _bench_probe, "compare": _compare_probe}
