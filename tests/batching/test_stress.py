"""Many concurrent requests of every kind through one DynamicBatcher: one outcome each, nothing lost."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

import pytest
import torch

from labkit.batching import DynamicBatcher, QueueFullError
from labkit.models import InputSpec

pytestmark = pytest.mark.slow

N_REQUESTS = 10_000
VALID, WRONG_SHAPE, BAD, SHORT_TIMEOUT, CANCEL = "valid", "wrong_shape", "bad", "short_timeout", "cancel"
KINDS = [VALID, WRONG_SHAPE, BAD, SHORT_TIMEOUT, CANCEL]
WEIGHTS = [60, 5, 5, 15, 15]


class EchoModel:
    """Returns x + 1000; raises naming the request id when a row is marked bad (x[1] < 0)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[int] = []  # every row of every call, failed calls included
        self.ok: list[int] = []  # rows of calls that returned

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ids = [int(v) for v in x[:, 0].tolist()]
        with self.lock:
            self.seen.extend(ids)
        bad = x[:, 1] < 0
        if bool(bad.any()):
            raise RuntimeError(f"bad input {int(x[bad][0, 0].item())}")
        with self.lock:
            self.ok.extend(ids)
        return x + 1000


def make_input(rid: int, kind: str) -> torch.Tensor:
    if kind == WRONG_SHAPE:
        return torch.tensor([float(rid), 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    return torch.tensor([float(rid), -1.0 if kind == BAD else 1.0, rid * 0.5, 7.0], dtype=torch.float64)


async def _load(model: EchoModel):
    rng = random.Random(20240601)
    loop = asyncio.get_running_loop()
    b = DynamicBatcher(model, max_batch_size=32, max_wait_ms=2, max_queue_size=256, max_inflight=2,
                       input_spec=InputSpec((4,), torch.float64))
    requests: list[tuple[int, str, torch.Tensor, asyncio.Task]] = []
    async with b:
        rid = 0
        while rid < N_REQUESTS:
            burst = 400 if rng.random() < 0.03 else rng.randint(1, 40)  # big ones overflow the queue
            for _ in range(min(burst, N_REQUESTS - rid)):
                kind = rng.choices(KINDS, WEIGHTS)[0]
                x = make_input(rid, kind)
                if kind == SHORT_TIMEOUT:
                    task = asyncio.create_task(b.submit(x, timeout_ms=rng.uniform(0.2, 4.0)))
                else:
                    task = asyncio.create_task(b.submit(x))
                if kind == CANCEL:
                    loop.call_later(rng.uniform(0.0, 0.004), task.cancel)
                requests.append((rid, kind, x, task))
                rid += 1
            await asyncio.sleep(rng.choice([0, 0.001, 0.002, 0.004]))
        await asyncio.wait([t for *_, t in requests], timeout=30)
        final = await b.submit(make_input(N_REQUESTS, VALID))
    return requests, final, b.stats


def _outcome(task: asyncio.Task):
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception() or task.result()


def test_stress_every_request_gets_exactly_one_right_outcome():
    model = EchoModel()
    requests, final, stats = asyncio.run(_load(model))

    assert len(requests) == N_REQUESTS
    assert all(t.done() for *_, t in requests), "a caller was left waiting"
    assert torch.equal(final, make_input(N_REQUESTS, VALID) + 1000)

    allowed = {
        VALID: {torch.Tensor, QueueFullError},
        WRONG_SHAPE: {ValueError},
        BAD: {RuntimeError, QueueFullError},
        SHORT_TIMEOUT: {torch.Tensor, TimeoutError, QueueFullError},
        CANCEL: {torch.Tensor, asyncio.CancelledError, QueueFullError},
    }
    by_class: Counter[type] = Counter()
    ids_by_class: dict[type, set[int]] = {}
    cancelled_ids: set[int] = set()
    for rid, kind, x, task in requests:
        out = _outcome(task)
        cls = torch.Tensor if isinstance(out, torch.Tensor) else type(out)
        assert cls in allowed[kind], (rid, kind, out)
        by_class[cls] += 1
        ids_by_class.setdefault(cls, set()).add(rid)
        if cls is torch.Tensor:
            assert torch.equal(out, x + 1000), (rid, kind)  # its own input, transformed
        elif cls is RuntimeError:
            assert str(out) == f"bad input {rid}"  # the model's own exception for this request
        if cls is asyncio.CancelledError:
            cancelled_ids.add(rid)
    # nothing lost: one outcome each, and every kind of outcome actually happened
    assert sum(by_class.values()) == N_REQUESTS
    for cls in (torch.Tensor, ValueError, RuntimeError, TimeoutError, asyncio.CancelledError, QueueFullError):
        assert by_class[cls] > 0, f"the load never produced a {cls.__name__}: {by_class}"

    # the batcher's own counts agree with what the callers saw
    assert stats.rejected == by_class[QueueFullError]
    assert stats.invalid == by_class[ValueError]
    assert stats.failed == by_class[RuntimeError]
    assert stats.timed_out == by_class[TimeoutError]
    assert by_class[torch.Tensor] + 1 <= stats.completed <= len(model.ok)

    ok = model.ok
    seen = set(model.seen)
    assert len(ok) == len(set(ok)), "an input was computed successfully twice"
    assert ids_by_class[torch.Tensor] | {N_REQUESTS} <= set(ok)
    # computed successfully but not delivered: only callers that gave up while it ran
    assert set(ok) - ids_by_class[torch.Tensor] - {N_REQUESTS} <= cancelled_ids
    # never computed: refused at submit, or timed out while queued
    for cls in (ValueError, QueueFullError, TimeoutError):
        assert not ids_by_class[cls] & seen, f"a request that got {cls.__name__} was computed"
    # every accepted request was counted exactly once
    assert stats.submitted == stats.completed + stats.failed + stats.timed_out + stats.cancelled + stats.shed
    assert sum(n * c for n, c in stats.batch_sizes.items()) == len(stats.queue_wait_ms)
