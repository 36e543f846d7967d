"""DynamicBatcher: each caller gets its own row; outputs that break the batch contract are refused."""

from __future__ import annotations

import asyncio

import torch

from labkit.batching import (
    DynamicBatcher,
)

from .conftest import Recorder, run, vec


def test_each_caller_gets_its_own_row_as_a_cpu_tensor():
    model = Recorder(fn=lambda x: x[:, :1] * 10)

    async def main():
        async with DynamicBatcher(model, max_batch_size=8, max_wait_ms=20) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(20)))

    out = run(main())
    for i, y in enumerate(out):
        assert isinstance(y, torch.Tensor)
        assert y.device.type == "cpu"
        assert y.shape == (1,)
        assert y.item() == 10.0 * i
    assert sum(model.sizes) == 20


def test_tuple_and_dict_outputs_are_split_per_caller():
    def tuple_model(x):
        return x * 2, x.sum(dim=1)

    def dict_model(x):
        return {"double": x * 2, "sum": x.sum(dim=1)}

    async def main():
        async with DynamicBatcher(tuple_model, max_batch_size=4, max_wait_ms=20) as bt, \
                DynamicBatcher(dict_model, max_batch_size=4, max_wait_ms=20) as bd:
            tuples = await asyncio.gather(*(bt.submit(vec(i)) for i in range(6)))
            dicts = await asyncio.gather(*(bd.submit(vec(i)) for i in range(6)))
            return tuples, dicts

    tuples, dicts = run(main())
    for i, t in enumerate(tuples):
        assert isinstance(t, tuple) and len(t) == 2
        assert torch.equal(t[0], vec(2 * i))
        assert t[1].shape == () and t[1].item() == 4.0 * i
    for i, d in enumerate(dicts):
        assert isinstance(d, dict) and set(d) == {"double", "sum"}
        assert torch.equal(d["double"], vec(2 * i))
        assert d["sum"].item() == 4.0 * i


def test_wrong_batch_dimension_gives_every_request_a_value_error():
    def doubled_rows(x):
        return torch.cat([x, x])  # 2n rows for n inputs, whatever n is

    async def main():
        async with DynamicBatcher(doubled_rows, max_batch_size=4, max_wait_ms=20) as b:
            out = await asyncio.gather(*(b.submit(vec(i)) for i in range(4)), return_exceptions=True)
            return out, b.stats.failed

    out, failed = run(main())
    assert all(isinstance(o, ValueError) for o in out), out
    assert failed == 4


def test_a_list_of_per_row_outputs_is_refused_not_transposed():
    # 4 rows of 4: read as columns, each caller would silently get another caller's values.
    async def main():
        async with DynamicBatcher(lambda x: list(x * 2), max_batch_size=4, max_wait_ms=50) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(4)), return_exceptions=True)

    out = run(main())
    assert all(isinstance(o, TypeError) and "list" in str(o) for o in out), out


def test_an_output_with_the_wrong_batch_dimension_fails_the_batch_without_a_split_retry():
    model = Recorder(fn=lambda x: x[:1] * 2)  # only the first row: right for a batch of one

    async def main():
        async with DynamicBatcher(model, max_batch_size=4, max_wait_ms=50) as b:
            return await asyncio.gather(*(b.submit(vec(i)) for i in range(4)), return_exceptions=True)

    out = run(main())
    assert all(isinstance(o, ValueError) and "batch of 4" in str(o) for o in out), out
    assert model.sizes == [4]  # refused as it came back, not retried in halves until it "passed"


def test_rows_of_a_large_batch_output_own_their_memory():
    from labkit.batching.engine import OWN_ROWS_FROM_BYTES

    row = OWN_ROWS_FROM_BYTES // 4 // 4  # float32 elements: four rows make the threshold

    async def main():
        async with DynamicBatcher(lambda x: x[:, :1].repeat(1, row), max_batch_size=4, max_wait_ms=50) as big, \
                DynamicBatcher(lambda x: x * 2, max_batch_size=4, max_wait_ms=50) as small:
            large = await asyncio.gather(*(big.submit(vec(i)) for i in range(4)))
            tiny = await asyncio.gather(*(small.submit(vec(i)) for i in range(4)))
            return large, tiny

    large, tiny = run(main())
    for i, y in enumerate(large):
        assert y.untyped_storage().nbytes() == y.nbytes == row * 4  # its own row, not the batch
        assert torch.equal(y, torch.full((row,), float(i)))
    assert all(torch.equal(y, vec(2 * i)) for i, y in enumerate(tiny))
