"""Failure isolation: a model's exception reaches only the requests that caused it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import namedtuple

import pytest
import torch

from labkit.batching import DynamicBatcher

from .conftest import batcher_threads, run, vec, warm_fast_path


class PickyModel:
    """Doubles its input; raises RuntimeError naming the first negative row if it sees one."""

    def __init__(self, exc_type: type[Exception] = RuntimeError):
        self.lock = threading.Lock()
        self.calls: list[list[float]] = []
        self.ok_rows: list[float] = []
        self.exc_type = exc_type

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        firsts = x[:, 0].tolist()
        with self.lock:
            self.calls.append(firsts)
        bad = [v for v in firsts if v < 0]
        if bad:
            raise self.exc_type(f"bad input {bad[0]:g}")
        with self.lock:
            self.ok_rows.extend(firsts)
        return x * 2


def test_good_requests_get_results_and_bad_ones_get_the_models_exception():
    model = PickyModel()
    values = [1, -2, 3, 4, 5, -6, 7, 8]

    async def main():
        async with DynamicBatcher(model, max_batch_size=8, max_wait_ms=50) as b:
            out = await asyncio.gather(*(b.submit(vec(v)) for v in values), return_exceptions=True)
            return out, b.stats.failed, b.stats.completed

    out, failed, completed = run(main())
    assert model.calls[0] == [float(v) for v in values]  # one batch, then isolation
    for v, o in zip(values, out, strict=True):
        if v < 0:
            assert type(o) is RuntimeError
            assert str(o) == f"bad input {v}"
        else:
            assert isinstance(o, torch.Tensor)
            assert torch.equal(o, vec(2 * v))
    assert (failed, completed) == (2, 6)
    assert sorted(model.ok_rows) == sorted(float(v) for v in values if v > 0)  # each good row once


def test_custom_exception_types_reach_the_caller_unchanged():
    class ModelError(Exception):
        pass

    model = PickyModel(ModelError)

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=50) as b:
            return await asyncio.gather(*(b.submit(vec(v)) for v in (-1, 2, -3, 4)), return_exceptions=True)

    out = run(main())
    assert type(out[0]) is ModelError and str(out[0]) == "bad input -1"
    assert type(out[2]) is ModelError and str(out[2]) == "bad input -3"
    assert torch.equal(out[1], vec(4)) and torch.equal(out[3], vec(8))


def test_all_bad_batch_fails_each_request_with_its_own_exception():
    model = PickyModel()

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=50) as b:
            return await asyncio.gather(*(b.submit(vec(-v)) for v in (1, 2, 3, 4)), return_exceptions=True)

    out = run(main())
    assert [str(o) for o in out] == ["bad input -1", "bad input -2", "bad input -3", "bad input -4"]
    assert all(type(o) is RuntimeError for o in out)
    assert model.ok_rows == []


def test_the_loop_keeps_serving_after_failures():
    model = PickyModel()

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=5) as b:
            for round_ in range(3):
                out = await asyncio.gather(b.submit(vec(-1)), b.submit(vec(round_ + 1)), return_exceptions=True)
                assert isinstance(out[0], RuntimeError)
                assert torch.equal(out[1], vec(2 * (round_ + 1)))
            with pytest.raises(RuntimeError, match="bad input -9"):
                await b.submit(vec(-9))
            return await b.submit(vec(10)), b.stats.failed, b.stats.completed

    y, failed, completed = run(main())
    assert torch.equal(y, vec(20))
    assert (failed, completed) == (4, 4)


def test_model_returning_a_non_tensor_gives_each_request_a_type_error():
    async def main():
        async with DynamicBatcher(lambda x: x.sum().item(), max_batch_size=4, max_wait_ms=20) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(3)), return_exceptions=True)

    out = run(main())
    assert all(isinstance(o, TypeError) for o in out), out


def test_model_returning_a_scalar_tensor_gives_each_request_a_value_error():
    async def main():
        async with DynamicBatcher(lambda x: x.sum(), max_batch_size=4, max_wait_ms=20) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(3)), return_exceptions=True)

    out = run(main())
    assert all(isinstance(o, ValueError) for o in out), out


Pair = namedtuple("Pair", ["double", "total"])


def test_namedtuple_output_is_split_per_caller():
    def model(x):
        return Pair(x * 2, x.sum(dim=1))

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=20) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(3)), return_exceptions=True)

    out = run(main())
    for i, row in enumerate(out):
        assert isinstance(row, Pair), row
        assert torch.equal(row.double, vec(2 * i))
        assert row.total.item() == 4.0 * i


@pytest.mark.parametrize("warm_batches", [0, 10], ids=["on a worker", "inline"])
def test_a_model_raising_stop_iteration_fails_only_its_culprit(warm_batches):
    def model(x):
        if (x[:, 0] < 0).any():
            raise StopIteration("a futures-hostile exception")
        return x * 2

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=20) as b:
            for _ in range(warm_batches):  # enough tiny batches and the CPU path runs inline
                await asyncio.gather(*(b.submit(vec(1)) for _ in range(4)))
            out = await asyncio.gather(*(b.submit(vec(-1 if i == 2 else i)) for i in range(4)),
                                       return_exceptions=True)
            return out, await b.submit(vec(5))

    out, after = run(main())
    assert isinstance(out[2], RuntimeError) and "StopIteration" in str(out[2])
    assert [torch.equal(out[i], vec(2 * i)) for i in (0, 1, 3)] == [True, True, True]
    assert torch.equal(after, vec(10))  # and the scheduler is alive
class Abort(BaseException):
    """Not an Exception: what `except Exception` in a model server lets through."""


@pytest.mark.parametrize("exc_type", [Abort, SystemExit, KeyboardInterrupt, GeneratorExit])
@pytest.mark.parametrize("warm", [False, True], ids=["on a worker", "fast path"])
def test_a_base_exception_fails_only_its_culprit_and_leaves_no_thread_behind(exc_type, warm):
    before = batcher_threads()

    def model(x):
        if (x[:, 0] < 0).any():
            raise exc_type("from the model")
        return x * 2

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=20) as b:
            if warm:
                await warm_fast_path(b)
            out = await asyncio.gather(*(b.submit(vec(-1 if i == 2 else i)) for i in range(4)),
                                       return_exceptions=True)
            return out, await b.submit(vec(5)), b.stats.failed

    out, after, failed = run(main())
    assert isinstance(out[2], RuntimeError) and isinstance(out[2].__cause__, exc_type), out[2]
    assert exc_type.__name__ in str(out[2])
    assert [torch.equal(out[i], vec(2 * i)) for i in (0, 1, 3)] == [True, True, True]
    assert torch.equal(after, vec(10)) and failed == 1
    deadline = time.monotonic() + 5
    while batcher_threads() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher_threads() - before
