"""labkit.batching on a real CUDA device. Skipped without one (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from labkit.batching import DynamicBatcher
from labkit.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def exact_fp32():
    """Plain fp32 (no TF32) so the batcher and the direct call compute the same thing."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    torch.cuda.synchronize()


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet50", "small", device="cuda")


def _images(model, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(model.input_spec.shape, generator=g) for _ in range(n)]


def _direct(model, xs: list[torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        out = model(torch.stack(xs).to("cuda"))
    return out.cpu()


def test_resnet_outputs_match_the_direct_batch(resnet):
    xs = _images(resnet, 8)

    async def main():
        async with DynamicBatcher(resnet, max_batch_size=8, max_wait_ms=200) as b:
            assert b.device.type == "cuda"
            out = await asyncio.gather(*(b.submit(x) for x in xs))
            return out, b.stats.summary()

    out, summary = run(main())
    assert summary["batch_sizes"] == {8: 1}  # one batch, the same one the direct call sees
    for row in out:
        assert row.device.type == "cpu"  # results come back on the host by default
        assert row.dtype == torch.float32
    torch.testing.assert_close(torch.stack(out), _direct(resnet, xs), atol=1e-3, rtol=1e-3)


def test_results_on_device(resnet):
    xs = _images(resnet, 6, seed=1)

    async def main():
        async with DynamicBatcher(resnet, max_batch_size=8, max_wait_ms=20, results_on_device=True) as b:
            return await asyncio.gather(*(b.submit(x) for x in xs))

    out = run(main())
    assert all(row.device.type == "cuda" for row in out)
    got = torch.stack(out).cpu()  # read on the default stream: record_stream keeps the memory
    ref = torch.stack([_direct(resnet, [x])[0] for x in xs])
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


def test_inflight_slots_have_distinct_streams():
    seen_streams: set[int] = set()
    lock = threading.Lock()

    def model(x):
        with lock:
            seen_streams.add(torch.cuda.current_stream(x.device).cuda_stream)
        time.sleep(0.02)
        return x * 2

    async def main():
        async with DynamicBatcher(model, device="cuda", max_batch_size=2, max_wait_ms=1, max_inflight=2) as b:
            slots = b._runner.slots
            assert len(slots) == 2 and b._runner.threads == 2
            streams = [s.stream for s in slots]
            assert all(isinstance(s, torch.cuda.Stream) for s in streams)
            handles = {s.cuda_stream for s in streams}
            assert len(handles) == 2
            assert torch.cuda.default_stream().cuda_stream not in handles
            out = await asyncio.gather(*(b.submit(torch.full((4,), float(i))) for i in range(8)))
            return handles, out

    handles, out = run(main())
    assert seen_streams <= handles and len(seen_streams) == 2  # the model ran on the slots' streams
    assert [o[0].item() for o in out] == [2.0 * i for i in range(8)]


def _spans(max_inflight: int) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def model(x):
        t0 = time.perf_counter()
        time.sleep(0.05)
        y = x * 2
        with lock:
            spans.append((t0, time.perf_counter()))
        return y

    async def main():
        async with DynamicBatcher(model, device="cuda", max_batch_size=2, max_wait_ms=1,
                                  max_inflight=max_inflight) as b:
            await asyncio.gather(*(b.submit(torch.full((4,), float(i))) for i in range(4)))

    run(main())
    assert len(spans) == 2
    return sorted(spans)


def test_two_inflight_batches_overlap_on_cuda():
    (_, first_end), (second_start, _) = _spans(max_inflight=2)
    assert second_start < first_end


def test_one_inflight_batch_never_overlaps_on_cuda():
    (_, first_end), (second_start, _) = _spans(max_inflight=1)
    assert second_start >= first_end


def test_failure_isolation_on_cuda():
    def model(x):
        assert x.device.type == "cuda"
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError("negative input")
        return x * 2

    values = [1, -2, 3, 4, -5, 6, 7, 8]

    async def main():
        async with DynamicBatcher(model, device="cuda", max_batch_size=8, max_wait_ms=100) as b:
            out = await asyncio.gather(*(b.submit(torch.full((4,), float(v))) for v in values),
                                       return_exceptions=True)
            after = await b.submit(torch.full((4,), 9.0))
            return out, after

    out, after = run(main())
    for v, o in zip(values, out, strict=True):
        if v < 0:
            assert type(o) is RuntimeError and str(o) == "negative input"
        else:
            assert o.device.type == "cpu"
            assert torch.equal(o, torch.full((4,), 2.0 * v))
    assert torch.equal(after, torch.full((4,), 18.0))
