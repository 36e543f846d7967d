"""labkit.guide: the guide's code behaves as the guide's, defects included (they are what lessons measure)."""

from __future__ import annotations

import asyncio
import weakref

import pytest
import torch

from labkit.guide import GuideBatcher, GuideCheckpointed, guide_optimize_batch_size, guide_search
from labkit.memory import Trial
from labkit.models import build_model, example_batch, sequential_layers


def test_the_guide_batcher_serves_each_request_its_own_row():
    async def main():
        batcher = GuideBatcher(lambda b: b * 2, max_batch_size=4, max_wait_time=0.005)
        batcher.start()
        xs = [torch.full((3,), float(i)) for i in range(10)]
        outs = await asyncio.gather(*(batcher.predict(x) for x in xs))
        await batcher.stop()
        return xs, outs

    xs, outs = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        torch.testing.assert_close(out, x * 2)


def test_one_exception_kills_the_guide_batchers_loop_and_later_requests_hang():
    def broken(batch):
        raise RuntimeError("bad batch")

    async def main():
        batcher = GuideBatcher(broken, max_wait_time=0.001)
        batcher.start()
        with pytest.raises(asyncio.TimeoutError):  # nothing ever answers it
            await asyncio.wait_for(batcher.predict(torch.zeros(3)), timeout=0.3)
        await batcher.stop()  # waits for the dead loop without raising what killed it
        return batcher.task.exception()

    assert "bad batch" in str(asyncio.run(main()))


def _fails_above(limit: int):
    """A model that runs out of memory (as the guide recognises it, by message) past ``limit``,
    and notes, when the trial before it fitted, whether that trial's output is still alive."""
    previous: list[weakref.ref | None] = [None]
    still_alive: list[bool] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        if previous[-1] is not None:
            still_alive.append(previous[-1]() is not None)
        if len(x) > limit:
            previous.append(None)
            raise RuntimeError("CUDA out of memory. Tried to allocate (injected)")
        out = x.sum(dim=1)
        previous.append(weakref.ref(out))
        return out

    return model, still_alive


@pytest.fixture
def no_cuda_calls(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)


def test_the_guides_search_bisects_below_its_start_and_keeps_the_last_output_alive(no_cuda_calls):
    model, still_alive = _fails_above(37)
    assert guide_optimize_batch_size(model, (4,), "cpu", start_size=128) == (37, 7)  # 64 32 48 40 36 38 37
    assert still_alive and all(still_alive)  # each forward pass ran beside the last fit's output
    model, _ = _fails_above(10**6)
    assert guide_optimize_batch_size(model, (4,), "cpu", start_size=128) == (128, 8)  # cannot look past its start


def test_the_guides_search_lets_other_errors_through(no_cuda_calls):
    def broken(x):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        guide_optimize_batch_size(broken, (4,), "cpu")


def test_the_guides_steps_over_clean_trials_log_every_trial():
    def trial(n: int) -> Trial:
        return Trial(n, n <= 37, n, 0.0)

    batch, log = guide_search(trial, start_size=128)
    assert batch == 37 and [t.batch for t in log] == [64, 32, 48, 40, 36, 38, 37]


def test_guide_checkpointing_cuts_equal_layer_counts_and_keeps_the_gradients():
    model = build_model("tiny_cnn", "small").train()
    layers = sequential_layers(model)
    ckpt = GuideCheckpointed(layers, 3)
    per = len(layers) // 3
    assert [len(s) for s in ckpt.segments] == [per, per, len(layers) - 2 * per]  # leftovers in the last
    x = example_batch(model, 3)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ckpt(x).square().sum().backward()
    for a, b in zip(plain, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)
