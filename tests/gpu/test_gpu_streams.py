"""StreamPipeline and MultiModelServer on a real CUDA device: results, overlap. Skipped without one."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from torch import nn

from labkit.models import build_model, example_batch
from labkit.serving import MultiModelServer
from labkit.streams import StreamPipeline

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]

SLEEP_CYCLES = 20_000_000  # about 10-30 ms at any plausible SM clock


class GpuSleep(nn.Module):
    """Keeps the current stream busy for a fixed time, then adds ``add``: compute that can overlap."""

    def __init__(self, add: float = 1.0) -> None:
        super().__init__()
        self.add = add
        self.anchor = nn.Parameter(torch.zeros(()))  # so that the server finds its device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(SLEEP_CYCLES)
        return x + self.add


@pytest.fixture(autouse=True)
def exact_fp32_and_warm():
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    yield
    torch.backends.cudnn.allow_tf32 = saved
    torch.cuda.synchronize()


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_pipeline_outputs_equal_the_model_in_order(buffers):
    model = build_model("resnet50", "small", device="cuda")
    batches = [example_batch(model, n, device="cpu", seed=n) for n in (8, 3, 8, 5, 1, 8)]
    outs = StreamPipeline(model, buffers=buffers).run(batches)
    with torch.no_grad():
        expected = [model(x.cuda()).cpu() for x in batches]
    for out, ref in zip(outs, expected, strict=True):
        assert out.device.type == "cpu"
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_a_run_that_raises_leaves_nothing_for_the_next_run(buffers):
    """The CPU test of the same name on the CUDA path: copies in flight when batch 2 raises."""

    class FailsOn(nn.Module):
        def __init__(self, bad: set[float]) -> None:
            super().__init__()
            self.bad = bad

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.flatten()[0]) in self.bad:
                raise RuntimeError(f"bad batch {float(x.flatten()[0])}")
            return x + 1

    pipe = StreamPipeline(FailsOn({2.0}), buffers=buffers, device="cuda")
    with pytest.raises(RuntimeError, match="bad batch 2"):
        pipe.run([torch.full((3, 2), float(i)) for i in range(5)])
    batches = [torch.full((2, 2), 10.0 + i) for i in range(4)]
    outs = pipe.run(batches)
    assert len(outs) == 4  # this run's outputs only, none of the failed run's
    assert all(torch.equal(o, b + 1) for o, b in zip(outs, batches, strict=True))


def test_copy_in_of_the_next_batch_overlaps_the_compute_of_this_one():
    model = GpuSleep().cuda()
    # pinned and small (4 MB): no host-side staging or output copy outlasts the 10+ ms of compute
    batches = [torch.randn(16, 256, 256).pin_memory() for _ in range(4)]
    pipe = StreamPipeline(model, buffers=2)
    outs = pipe.run(batches, record=True)
    assert all(torch.equal(o, b + 1) for o, b in zip(outs, batches, strict=True))
    event = {(e.stage, e.item): e for e in pipe.timeline}
    for i in range(3):
        assert event[0, i + 1].start_s < event[1, i].end_s  # copy in of i+1 while i computes


def test_four_models_on_their_own_streams_overlap():
    models = {f"m{i}": GpuSleep(i).cuda() for i in range(4)}
    x = torch.ones(4, 4)

    async def main():
        async with MultiModelServer(models) as server:
            await asyncio.gather(*(server.predict(n, x) for n in models))  # warm
            t0 = time.perf_counter()
            for n in models:
                await server.predict(n, x)
            one_after_another = time.perf_counter() - t0
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(server.predict(n, x) for n in models))
            together = time.perf_counter() - t0
            return outs, one_after_another, together

    outs, serial, together = asyncio.run(main())
    assert [o[0, 0].item() for o in outs] == [1.0, 2.0, 3.0, 4.0]
    assert together < 0.6 * serial


def test_server_outputs_equal_the_model_on_cuda():
    model = build_model("resnet50", "small", device="cuda")
    x = example_batch(model, 4, device="cpu", seed=3)

    async def main():
        async with MultiModelServer({"r": model}) as server:
            return await server.predict("r", x)

    with torch.no_grad():
        torch.testing.assert_close(asyncio.run(main()), model(x.cuda()).cpu(), rtol=1e-4, atol=1e-4)


def test_graph_runners_behind_the_pipeline_and_the_server_give_the_models_outputs():
    from labkit.graphs import GraphRunner

    model = build_model("resnet50", "small", device="cuda")
    runner = GraphRunner(model, batch_sizes=(4, 8))
    batches = [example_batch(model, n, device="cpu", seed=n) for n in (8, 3, 8)]
    with torch.no_grad():
        expected = [model(x.cuda()).cpu() for x in batches]
    outs = StreamPipeline(runner, buffers=2).run(batches)  # its device comes from the runner

    async def main():
        async with MultiModelServer({"g": runner}) as server:
            assert server.device.type == "cuda"
            return [await server.predict("g", x) for x in batches]

    for got in (outs, asyncio.run(main())):
        for out, ref in zip(got, expected, strict=True):
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
