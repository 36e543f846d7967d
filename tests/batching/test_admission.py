"""DynamicBatcher at submit: the input signature, value ranges, backpressure."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from labkit.batching import (
    DynamicBatcher,
    QueueFullError,
)
from labkit.models import InputSpec, build_model, example_batch

from .conftest import Recorder, occupy, run, vec


def test_wrong_shape_or_dtype_is_refused_naming_the_signature():
    model = Recorder()

    async def main():
        spec = InputSpec((4,), torch.float32)
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1, input_spec=spec) as b:
            with pytest.raises(ValueError) as shape_err:
                await b.submit(torch.zeros(5))
            with pytest.raises(ValueError) as dtype_err:
                await b.submit(torch.zeros(4, dtype=torch.float64))
            with pytest.raises(TypeError):
                await b.submit([0.0, 1.0, 2.0, 3.0])
            ok = await b.submit(vec(1))
            return shape_err.value, dtype_err.value, ok, b.stats.invalid, b.stats.submitted

    shape_err, dtype_err, ok, invalid, submitted = run(main())
    for err in (shape_err, dtype_err):
        assert "(4,)" in str(err) and "torch.float32" in str(err)
    assert "(5,)" in str(shape_err)
    assert "torch.float64" in str(dtype_err)
    assert torch.equal(ok, vec(2))
    assert invalid == 3
    assert submitted == 1
    assert model.seen == [1.0]  # the invalid ones were never computed


def test_first_request_fixes_the_signature():
    model = Recorder()

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            assert b.input_spec is None
            first = await b.submit(torch.ones(3, dtype=torch.float64))
            with pytest.raises(ValueError, match=r"\(3,\).*torch.float64"):
                await b.submit(torch.ones(4, dtype=torch.float64))
            with pytest.raises(ValueError):
                await b.submit(torch.ones(3, dtype=torch.float32))
            return first, b.input_spec, b.stats.invalid

    first, spec, invalid = run(main())
    assert torch.equal(first, torch.full((3,), 2.0, dtype=torch.float64))
    assert tuple(spec.shape) == (3,) and spec.dtype == torch.float64
    assert invalid == 2


def test_labkit_model_input_spec_is_used():
    model = build_model("mlp", "small")
    in_features = model.input_spec.shape[0]
    x = torch.randn(in_features, generator=torch.Generator().manual_seed(0))

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            assert tuple(b.input_spec.shape) == (in_features,)
            with pytest.raises(ValueError, match=rf"\({in_features},\)"):
                await b.submit(torch.randn(in_features + 1))  # also the first request
            return await b.submit(x)

    y = run(main())
    with torch.no_grad():
        expected = model(x[None])[0]
    torch.testing.assert_close(y, expected)


def test_reduced_precision_labkit_model_is_served_with_its_own_inputs():
    model = build_model("mlp", "small").to(torch.bfloat16)
    x = example_batch(model, 1)[0]  # labkit's own input for this model: bfloat16

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            return await b.submit(x)

    y = run(main())
    with torch.no_grad():
        torch.testing.assert_close(y, model(x[None])[0])


def test_token_ids_out_of_range_are_refused_at_submit():
    model = build_model("transformer", "small")
    x = example_batch(model, 1, device="cpu")[0]
    high = model.input_spec.high

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=1) as b:
            bad = x.clone()
            bad[0] = high
            with pytest.raises(ValueError, match=rf"\[0, {high}\)"):
                await b.submit(bad)
            bad[0] = -1
            with pytest.raises(ValueError):
                await b.submit(bad)
            return await b.submit(x), b.stats.invalid

    y, invalid = run(main())
    assert invalid == 2 and y.shape == (10,)


@pytest.mark.parametrize("high, refused", [(100, True), (256, False)])
def test_uint8_inputs_are_range_checked_only_when_a_byte_can_exceed_the_bound(high, refused):
    spec = InputSpec((3,), torch.uint8, high=high)
    x = torch.tensor([0, 7, 255], dtype=torch.uint8)

    async def main():
        async with DynamicBatcher(lambda b: b.float(), max_batch_size=4, max_wait_ms=1, input_spec=spec) as b:
            return await b.submit(x)

    if refused:
        with pytest.raises(ValueError, match=r"\[0, 100\)"):
            run(main())
    else:
        assert run(main()).tolist() == [0.0, 7.0, 255.0]


def test_queue_full_is_immediate_and_accepted_requests_complete(gate):
    model = Recorder(gate=gate)
    capacity = 3

    async def main():
        b = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, max_inflight=1, max_queue_size=capacity)
        await b.start()
        try:
            blocker = await occupy(b.submit(vec(100)), model)  # dispatched: out of the queue
            queued = [asyncio.create_task(b.submit(vec(i))) for i in range(capacity)]
            await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            with pytest.raises(QueueFullError):
                await b.submit(vec(99))
            refused_in = time.perf_counter() - t0
            rejected = b.stats.rejected
        finally:
            gate.set()
        out = await asyncio.gather(blocker, *queued)
        await b.stop()
        return refused_in, rejected, out

    refused_in, rejected, out = run(main())
    assert refused_in < 0.1
    assert rejected == 1
    assert [o[0].item() for o in out] == [200.0, 0.0, 2.0, 4.0]
    assert 99.0 not in model.seen
