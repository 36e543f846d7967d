"""GraphRunner on a real CUDA device: capture, replay, padding, pieces, threads. Skipped without one."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from labkit.batching import DynamicBatcher
from labkit.graphs import GraphRunner
from labkit.models import ImageBytes, build_model, example_batch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32: cuDNN picks its algorithm per batch size, and in TF32 two algorithms differ by
    more than any useful tolerance, so a padded batch would not match the eager one."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet50", "small", device="cuda")


@pytest.fixture(scope="module")
def runner(resnet):
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # captured kernels keep the precision they were captured with
    try:
        return GraphRunner(resnet, batch_sizes=(1, 2, 4, 8))
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _eager(model, x):
    with torch.no_grad():
        return model(x)


def test_graphs_are_captured_on_cuda(runner):
    assert runner.graphed and sorted(runner._graphs) == [1, 2, 4, 8]


@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_replay_equals_eager_for_padded_and_split_batches(resnet, runner, n):
    x = example_batch(resnet, n, seed=n)
    out = runner(x)
    assert out.shape == (n, 1000) and out.is_cuda
    torch.testing.assert_close(out, _eager(resnet, x), rtol=2e-3, atol=2e-3)


def test_outputs_are_not_overwritten_by_the_next_replay(resnet, runner):
    a, b = example_batch(resnet, 2, seed=1), example_batch(resnet, 2, seed=2)
    out_a = runner(a)
    kept = out_a.clone()
    runner(b)
    torch.testing.assert_close(out_a, kept, rtol=0, atol=0)


def test_host_inputs_are_accepted(resnet, runner):
    x = example_batch(resnet, 3, device="cpu", seed=5)
    torch.testing.assert_close(runner(x), _eager(resnet, x.cuda()), rtol=2e-3, atol=2e-3)


def test_threads_on_their_own_streams_each_get_their_own_rows(resnet, runner):
    inputs = [example_batch(resnet, 1 + i % 4, seed=10 + i) for i in range(12)]
    expected = [_eager(resnet, x) for x in inputs]
    got: list[torch.Tensor | None] = [None] * len(inputs)

    def work(i: int) -> None:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(5):
                got[i] = runner(inputs[i])
            stream.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)


def test_graph_runner_behind_the_batcher(resnet):
    model = ImageBytes(resnet).eval()
    runner = GraphRunner(model, batch_sizes=(1, 2, 4, 8))
    xs = list(example_batch(model, 20, device="cpu", seed=7))
    expected = _eager(model, torch.stack(xs).cuda()).cpu()

    async def main():
        async with DynamicBatcher(runner, max_batch_size=8, max_wait_ms=2, max_inflight=3) as b:
            return await asyncio.gather(*(b.submit(x) for x in xs))

    outs = asyncio.run(main())
    torch.testing.assert_close(torch.stack(outs), expected, rtol=2e-3, atol=2e-3)
