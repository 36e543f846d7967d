"""Exercise 01: when a batch is due and when to wake, then an event-driven batcher of its own,
graded on its behaviour (idle CPU, one outcome per request, the deadline of the oldest request)
and on its throughput against the guide's design, measured by the grader in the same run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from labkit.grading import trials
from labkit.grading.plain import describe, same, to_plain
from labkit.grading.trials import Question, Trial, calls, speed_credit

# Bound before any submission runs: patching time.sleep or the clock cannot shorten the model.
_sleep, _clock = time.sleep, time.perf_counter
BATCHER_NAIVE, BATCHER_FULL = 1.15, 1.6  # speed-up bands over the guide's one-batch-at-a-time design


def _model(stage_s: float, compute_s: float, per_item_s: float, calls_seen: list | None = None) -> Callable[[list], list]:
    """A fake model on a list of inputs: ``stage_s`` of host work (collating, copying: any number
    of batches at once), then ``compute_s + per_item_s * n`` on the one device (a lock).
    2x + 1 per input; a negative input (a culprit) makes the whole call raise ValueError, and a
    non-number a TypeError, as a real model fails on one bad row."""
    device = threading.Lock()

    def model(xs: list) -> list:
        if calls_seen is not None:
            calls_seen.append([_clock(), list(xs)])
        _sleep(stage_s)
        with device:
            _sleep(compute_s + per_item_s * len(xs))
        if any(not isinstance(x, (int, float)) for x in xs):
            raise TypeError("the model takes numbers")
        if any(x < 0 for x in xs):
            raise ValueError("the model cannot take a negative input")
        return [2 * x + 1 for x in xs]

    return model


def _outcome(task: asyncio.Task) -> Any:
    if task.cancelled():
        return "cancelled"
    if task.exception() is not None:
        return {"raised": type(task.exception()).__name__}
    return task.result()


async def _idle(batcher: Any, inputs: dict, calls_seen: list, extra: dict) -> Any:
    """CPU the batcher burns while nothing is asked of it, then one request."""
    await asyncio.sleep(0.05)
    used = time.process_time()
    await asyncio.sleep(0.5)
    extra["cpu_s"] = time.process_time() - used
    return await batcher.submit(1.0)


async def _stream(batcher: Any, inputs: dict, calls_seen: list, extra: dict) -> Any:
    """Requests at the given gaps, some cancelled a millisecond after they are sent."""
    tasks = []
    for x, delay_s, cancel in inputs["requests"]:
        tasks.append(asyncio.ensure_future(batcher.submit(x)))
        if cancel:
            asyncio.get_running_loop().call_later(0.001, tasks[-1].cancel)
        await asyncio.sleep(delay_s)
    await asyncio.wait(tasks, timeout=10)
    return [_outcome(t) if t.done() else "never answered" for t in tasks]


async def _deadline(batcher: Any, inputs: dict, calls_seen: list, extra: dict) -> Any:
    """Two requests apart in time; when the model was called, relative to the first."""
    origin = _clock()
    first = asyncio.ensure_future(batcher.submit(1.0))
    await asyncio.sleep(inputs["second_after_s"])
    second = asyncio.ensure_future(batcher.submit(2.0))
    output = await asyncio.gather(first, second)
    extra["calls"] = [[at - origin, xs] for at, xs in calls_seen]
    return output


async def _load(batcher: Any, inputs: dict, calls_seen: list, extra: dict) -> Any:
    """Clients in closed loop, each sending its requests one after another."""
    async def client(xs: list) -> list:
        return [await batcher.submit(x) for x in xs]
    shares = [[float(c * 1000 + i + inputs.get("round", 0)) for i in range(inputs["each"])]
              for c in range(inputs["clients"])]
    return sum(await asyncio.gather(*(client(xs) for xs in shares)), [])


_PARTS = {"idle": _idle, "stream": _stream, "deadline": _deadline, "load": _load}


def _batcher_probe(answer: Callable, inputs: dict, oracle: trials.Oracle) -> tuple[Any, dict]:
    """``answer`` is the learner's batcher class; ``inputs["part"]`` names the `_PARTS` to run on it.
    Whatever the part does, the batcher is stopped (within 5 s) and its leftover threads counted."""
    calls_seen: list = []
    model = _model(*inputs["model"], calls_seen)
    before = threading.active_count()

    async def main() -> tuple[Any, dict]:
        batcher = answer(model, **inputs["settings"])
        await batcher.start()
        extra: dict = {}
        try:
            output = await _PARTS[inputs["part"]](batcher, inputs, calls_seen, extra)
        finally:
            stopped = asyncio.ensure_future(batcher.stop())
            done, _ = await asyncio.wait([stopped], timeout=5)
            extra["stopped"] = bool(done) and stopped.exception() is None
        return output, extra

    output, extra = asyncio.run(main())
    deadline = _clock() + 1.0
    while threading.active_count() > before and _clock() < deadline:
        _sleep(0.01)
    extra["threads_left"] = threading.active_count() - before
    return output, extra


def _settled(call: str, seen: trials.Observation) -> None:
    if not seen.extra.get("stopped"):
        raise trials.Mismatch(f"{call}: stop()", "to finish within 5 s, without raising", "it did not",
                       "stop: refuse new requests, let the scheduler drain the queue, await it")
    if seen.extra.get("threads_left", 0):
        raise trials.Mismatch(f"{call}: threads left running", "none", str(seen.extra["threads_left"]),
                       "run the model with asyncio.to_thread (or your own threads, joined at stop)")


SETTINGS = {"max_batch_size": 8, "max_wait_s": 0.005}
MODEL = [0.001, 0.002, 0.0001]  # stage_s, compute_s, per_item_s


def _idle(hint: str = "") -> Trial:
    """(hint)"""
    call = "MiniBatcher started, then idle for 0.5 s"

    def judge(seen: trials.Observation) -> None:
        if not same(seen.output, 3.0):
            raise trials.Mismatch(f"{call}, then submit(1.0)", "3.0", describe(seen.output), "2x + 1 from the model")
        cpu = seen.extra.get("cpu_s", 1.0)
        if not cpu < 0.004:
            raise trials.Mismatch(f"{call}: CPU time used", "under 0.004 s (an event-driven batcher sleeps)", f"{cpu:.4f} s",
                           hint or "wait on an asyncio.Event (set by submit) or a timer, never asyncio.sleep in a loop")
        _settled(call, seen)

    return Trial(call, "mini_batcher", {"part": "idle", "settings": SETTINGS, "model": MODEL}, judge, hint)


def _stream(requests: list, hint: str = "") -> Trial:
    """(requests as [[x, seconds to the next, cancel it?], ...], hint)"""
    call = f"MiniBatcher on {len(requests)} requests ({sum(r[2] for r in requests)} cancelled by their callers)"
    want = []
    for x, _, cancel in requests:
        if cancel:
            want.append("cancelled")
        elif not isinstance(x, (int, float)):
            want.append({"raised": "TypeError"})
        elif x < 0:
            want.append({"raised": "ValueError"})
        else:
            want.append(2 * x + 1)

    def judge(seen: trials.Observation) -> None:
        out = seen.output
        if not isinstance(out, list) or len(out) != len(want):
            raise trials.Mismatch(call, f"{len(want)} outcomes", describe(out), hint)
        for i, (got, expected) in enumerate(zip(out, want, strict=True)):
            if got == "never answered":
                raise trials.Mismatch(f"{call}: request {i} ({requests[i][0]!r})", repr(expected), "no outcome after 10 s",
                               "every request gets exactly one outcome: a result or an exception")
            if not same(got, expected):
                raise trials.Mismatch(f"{call}: request {i} ({requests[i][0]!r})", repr(expected), describe(got),
                               hint or "when a batch raises, split it in halves and retry, until the culprit is alone")
        _settled(call, seen)

    inputs = {"part": "stream", "settings": SETTINGS, "model": MODEL, "requests": to_plain(requests)}
    return Trial(call, "mini_batcher", inputs, judge, hint)


def _deadline(max_wait_s: float, second_after_s: float, hint: str = "") -> Trial:
    """(max_wait_s, second_after_s, hint)"""
    call = f"MiniBatcher(max_wait_s={max_wait_s:g}): submit(1.0), then submit(2.0) {second_after_s:g} s later"

    def judge(seen: trials.Observation) -> None:
        if not same(seen.output, [3.0, 5.0]):
            raise trials.Mismatch(call, "[3.0, 5.0]", describe(seen.output), hint)
        model_calls = seen.extra.get("calls", [])
        if [xs for _, xs in model_calls] != [[1.0, 2.0]]:
            raise trials.Mismatch(f"{call}: the model's calls", "one batch [1.0, 2.0]", str([xs for _, xs in model_calls])[:200],
                           "a request waits up to max_wait_s for others to join its batch")
        at = model_calls[0][0]
        latest = max_wait_s + second_after_s / 2  # halfway to the newest request's deadline
        if not max_wait_s * 0.9 <= at < latest:
            raise trials.Mismatch(f"{call}: when the batch left (s after the first request)",
                           f"{max_wait_s:g} (the oldest request's deadline)", f"{at:.3f}",
                           "the deadline is the oldest request's arrival + max_wait_s, not the newest's")
        _settled(call, seen)

    inputs = {"part": "deadline", "settings": {"max_batch_size": 8, "max_wait_s": max_wait_s}, "model": MODEL,
              "second_after_s": second_after_s}
    return Trial(call, "mini_batcher", inputs, judge, hint)


def _guide_reference(inputs: dict) -> None:
    """The guide's batcher (labkit.guide) under the same load, in the grader's own process."""
    import torch

    from labkit.guide import GuideBatcher

    model = _model(*inputs["model"])

    def on_tensors(batch: torch.Tensor) -> torch.Tensor:
        return torch.tensor(model(batch.tolist()))

    async def main() -> None:
        guide = GuideBatcher(on_tensors, max_batch_size=inputs["settings"]["max_batch_size"],
                             max_wait_time=inputs["settings"]["max_wait_s"])
        guide.start()

        async def client(c: int) -> None:
            for i in range(inputs["each"]):
                await guide.predict(torch.tensor(float(c * 1000 + i)))

        try:
            await asyncio.gather(*(client(c) for c in range(inputs["clients"])))
        finally:
            await guide.stop()

    asyncio.run(main())


def _load(clients: int, each: int, hint: str = "", rounds: int = 3) -> Trial:
    """(clients, requests each, hint, rounds)"""
    stage_s, compute_s, per_item_s = LOAD_MODEL
    size = LOAD_SETTINGS["max_batch_size"]
    batches = clients * each / size
    best = (stage_s + compute_s + per_item_s * size) / max(stage_s, compute_s + per_item_s * size)
    floor_s = batches * (compute_s + per_item_s * size)  # the device alone, busy all the time
    call = f"MiniBatcher, {clients} clients x {each} requests, against the guide's batcher on the same model"

    def judge(seen: trials.Observation) -> None:
        want = [[2 * float(c * 1000 + i + r) + 1 for c in range(clients) for i in range(each)]
                for r in range(len(seen.outputs))]
        if not all(same(o, w) for o, w in zip(seen.outputs, want, strict=True)):
            raise trials.Mismatch(call, "2x + 1 for every request, in each client's order", describe(seen.outputs[0]), hint)
        if min(ans for _, ans in seen.rounds) < 0.9 * floor_s:  # no honest run is faster: a patched clock
            raise trials.Mismatch(f"{call}: time", f"at least {floor_s:.3f} s (the device's own time)",
                           f"{min(a for _, a in seen.rounds):.3f} s", "the model must run for real")
        credit = speed_credit(seen.speedup, naive=BATCHER_NAIVE, full=BATCHER_FULL)
        if credit < 1:
            raise trials.Partial(f"{call}: speed-up (median of {len(seen.rounds)} rounds)",
                          f"{BATCHER_FULL:g}x or more (up to {best:.2f}x when collating overlaps the device)",
                          f"{seen.speedup:.2f}x", hint or "keep two batches in flight: while one computes, the next "
                          "collates (two model calls at once, in threads)", credit=credit)

    inputs = {"part": "load", "settings": LOAD_SETTINGS, "model": LOAD_MODEL, "clients": clients, "each": each}
    return Trial(call, "mini_batcher", inputs, judge, hint, reference=_guide_reference, rounds=rounds)


def _mini_batcher(kind: str, *case: Any) -> Trial:
    """("idle", hint) | ("stream", requests [[x, seconds to the next, cancel?], ...], hint) |
    ("deadline", max_wait_s, second_after_s, hint)"""
    return {"idle": _idle, "stream": _stream, "deadline": _deadline}[kind](*case)


LOAD_SETTINGS = {"max_batch_size": 16, "max_wait_s": 0.005}
LOAD_MODEL = [0.006, 0.0045, 0.0001]  # collating as long as computing: overlap can double the throughput

QUESTIONS = [
    Question("01.batch_due", "How many requests leave now?", 2, calls("batch_due"), (
        (([], 5.0, 4, 0.01), 0, "an empty queue sends nothing"),
        (([1.0, 1.001], 1.002, 4, 0.01), 0, "two requests, the oldest has waited 2 ms of 10: keep waiting"),
        (([1.0, 1.001, 1.002, 1.003, 1.004], 1.004, 4, 0.01), 4, "a full batch leaves at once, at most max_batch_size"),
        (([1.0, 1.005], 1.0101, 4, 0.01), 2, "the oldest has waited past max_wait_s: send what is there"),
        (([1.0], 1.01, 4, 0.01), 1, "waiting exactly max_wait_s is enough"),
    ), minutes=5),
    Question("01.next_wakeup", "When must the scheduler look again?", 1, calls("next_wakeup"), (
        (([], 0.005), None, "nothing queued: no timer (sleep until a request arrives)"),
        (([2.0, 2.003], 0.005), 2.005, "the timer starts at the oldest request, not the newest"),
        (([7.5], 0.02), 7.52, "one request: it is due max_wait_s after it arrived"),
    ), minutes=5),
    Question("01.MiniBatcher", "An event-driven batcher: one outcome per request, no polling", 5, _mini_batcher, (
        ("idle",),
        ("stream", [[float(i), 0.002, False] for i in range(12)], "results in order, one per request"),
        ("stream", [[1.0, 0.0, False], [-1.0, 0.0, False], [2.0, 0.0, False], [3.0, 0.0, False], ["x", 0.0, False],
                    [4.0, 0.0, False]], "a raising batch is split until the culprits are alone: only they fail"),
        ("stream", [[float(i), 0.0005, i % 4 == 1] for i in range(16)],
         "a caller that cancels gets CancelledError; the others still get results"),
        ("deadline", 0.06, 0.03),
    ), minutes=60),
    Question("01.batcher_speed", "Its throughput against the guide's batcher", 3, _load, (
        (64, 6),
    ), kind="speed", minutes=15, budget_s=6.0, answer="MiniBatcher"),
]
PROBES = {"mini_batcher": _batcher_probe}
