"""StaticBatcher and ContinuousBatcher: greedy tokens equal `generate`'s, one outcome per request,
no block leaked, and each batching policy does what it says."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest
import torch

from labkit.batching import BatcherStoppedError
from labkit.generation import TIE, generate, top2_gap
from labkit.generation.continuous import ContinuousBatcher
from labkit.generation.model import GPT, GPTConfig
from labkit.generation.static import StaticBatcher
from labkit.generation.stats import StepRecorder
from labkit.generation.trace import poisson_trace, run_trace

pytestmark = pytest.mark.timeout(60)

POISON = 255  # a prompt starting with it makes `TestModel` raise


class TestModel(GPT):
    """A tiny GPT that can be held at a gate (a step that does not end) or made to raise."""

    __test__ = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def run(self, ids, positions, attend):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if bool(((positions == 0) & (ids == POISON)).any()):
            raise RuntimeError("poisoned prompt")
        return super().run(ids, positions, attend)


@pytest.fixture(scope="module")
def model() -> TestModel:
    torch.manual_seed(0)
    return TestModel(GPTConfig(n_layer=1, n_head=2, d_model=32, context=64)).eval()


@pytest.fixture
def gated(model):
    gate = threading.Event()
    model.gate, model.entered = gate, threading.Event()
    yield gate
    gate.set()
    model.gate = None


def prompts(n: int, seed: int, max_prompt: int = 20, max_new: int = 20) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t, k = int(torch.randint(1, max_prompt + 1, (1,), generator=g)), int(torch.randint(1, max_new + 1, (1,), generator=g))
        out.append((torch.randint(0, POISON, (t,), generator=g), k))
    return out


@functools.cache
def reference(model: GPT, prompt: tuple[int, ...], k: int) -> torch.Tensor:
    return generate(model, torch.tensor(prompt), k)


def ties(model, cases, outs) -> int:
    """Asserts every output equals `generate`'s, except after a top-two tie below `TIE` (counted)."""
    n_ties = 0
    for (prompt, k), out in zip(cases, outs, strict=True):
        want = reference(model, tuple(prompt.tolist()), k)
        assert out.dtype == torch.long and out.shape == (k,)
        if torch.equal(out, want):
            continue
        i = int((out != want).nonzero()[0])
        with torch.inference_mode():
            logits = model(torch.cat([prompt, want[:i]])[None])[0, -1]
        assert float(top2_gap(logits)) < TIE, f"diverged at token {i} without a tie"
        n_ties += 1
    return n_ties


def serve(b, cases, **kw):
    async def main():
        async with b:
            return await asyncio.gather(*(b.submit(p, max_new_tokens=k, **kw) for p, k in cases))
    return asyncio.run(main())


BATCHERS = {
    "static": lambda m: StaticBatcher(m, max_batch_size=4, max_len=64),
    "continuous": lambda m: ContinuousBatcher(m, kv_blocks=24, block_size=8, max_batch_size=8),
    "chunked": lambda m: ContinuousBatcher(m, kv_blocks=24, block_size=8, max_batch_size=8, max_step_tokens=12),
    "preempting": lambda m: ContinuousBatcher(m, kv_blocks=7, block_size=8, max_batch_size=8),
}


@pytest.mark.parametrize("kind", BATCHERS)
def test_tokens_equal_generate_for_mixed_prompt_and_output_lengths(model, kind):
    b = BATCHERS[kind](model)
    cases = prompts(16, seed=1)
    outs = serve(b, cases)
    assert ties(model, cases, outs) <= 1
    s = b.stats
    assert (s.completed, s.failed, s.cancelled, s.timed_out) == (16, 0, 0, 0)
    assert s.tokens_generated == sum(k for _, k in cases)
    assert b.kv.free_blocks == b.kv.num_blocks and b.kv.sequences == 0
    if kind == "preempting":  # 7 blocks of 8 cannot hold 8 such sequences: recompute was exercised
        assert s.preemptions > 0


def test_sync_api_gives_the_same_tokens(model):
    cases = prompts(3, seed=1)
    with ContinuousBatcher(model, kv_blocks=16, block_size=8) as b:
        outs = [b.submit_sync(p, max_new_tokens=k) for p, k in cases]
    assert ties(model, cases, outs) == 0


@pytest.mark.parametrize("kind", ["static", "continuous"])
@pytest.mark.parametrize("prompt, max_new, error, message", [
    (torch.tensor([], dtype=torch.long), 3, ValueError, "empty"),
    (torch.tensor([1.0, 2.0]), 3, TypeError, "integer"),
    (torch.tensor([[1, 2]]), 3, ValueError, "1-D"),
    (torch.tensor([1, 256]), 3, ValueError, "vocabulary"),
    (torch.tensor([1, 2]), 0, ValueError, "max_new_tokens"),
    (torch.ones(60, dtype=torch.long), 10, ValueError, "context"),
])
def test_bad_prompts_are_refused_at_submit(model, kind, prompt, max_new, error, message):
    b = BATCHERS[kind](model)

    async def main():
        async with b:
            with pytest.raises(error, match=message):
                await b.submit(prompt, max_new_tokens=max_new)
            return await b.submit(torch.tensor([1, 2]), max_new_tokens=2)

    assert asyncio.run(main()).shape == (2,)
    assert b.stats.refused == 1 and b.stats.completed == 1


def test_requests_the_batcher_could_never_hold_are_refused_saying_why(model):
    with pytest.raises(ValueError, match="max_len of 16"):
        serve(StaticBatcher(model, max_batch_size=2, max_len=16), [(torch.ones(10, dtype=torch.long), 7)])
    with pytest.raises(ValueError, match="needs 3 blocks of 8 tokens; this cache has 2"):
        serve(ContinuousBatcher(model, kv_blocks=2, block_size=8), [(torch.ones(10, dtype=torch.long), 8)])
    fits = ContinuousBatcher(model, kv_blocks=2, block_size=8)  # 10 + 7 - 1 = 16 tokens held at most
    assert serve(fits, [(torch.ones(10, dtype=torch.long), 7)])[0].shape == (7,)


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_submit_before_start_and_after_stop_is_refused(model, kind):
    b = BATCHERS[kind](model)

    async def main():
        with pytest.raises(BatcherStoppedError, match="not started"):
            await b.submit(torch.tensor([1]), max_new_tokens=1)
        async with b:
            await b.submit(torch.tensor([1]), max_new_tokens=1)
        with pytest.raises(BatcherStoppedError, match="stopped"):
            await b.submit(torch.tensor([1]), max_new_tokens=1)

    asyncio.run(main())
    assert b.stats.refused == 2 and b.stats.completed == 1


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_stop_drains_every_accepted_request(model, kind):
    b = BATCHERS[kind](model)
    cases = prompts(12, seed=1)

    async def main():
        await b.start()
        tasks = [asyncio.ensure_future(b.submit(p, max_new_tokens=k)) for p, k in cases]
        await asyncio.sleep(0)  # every one submitted
        await b.stop()
        assert all(t.done() for t in tasks)
        return [t.result() for t in tasks]

    assert ties(model, cases, asyncio.run(main())) == 0
    assert b.kv.free_blocks == b.kv.num_blocks


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_a_model_that_raises_fails_that_step_and_the_batcher_keeps_serving(model, kind):
    b = BATCHERS[kind](model)

    async def main():
        async with b:
            bad = b.submit(torch.tensor([POISON, 1, 2]), max_new_tokens=5)
            with pytest.raises(RuntimeError, match="poisoned prompt"):
                await bad
            return await b.submit(torch.tensor([3, 4]), max_new_tokens=4)

    assert ties(model, [(torch.tensor([3, 4]), 4)], [asyncio.run(main())]) == 0
    assert (b.stats.failed, b.stats.completed) == (1, 1)
    assert b.kv.free_blocks == b.kv.num_blocks


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_timeout_fires_while_the_model_is_still_in_its_step(model, gated, kind):
    """The step runs on the worker: the loop delivers the timeout with the model held mid-step,
    and the request's blocks come back once the step ends."""
    b = BATCHERS[kind](model)

    async def main():
        async with b:
            slow = asyncio.ensure_future(b.submit(torch.tensor([5, 6, 7]), max_new_tokens=3, timeout_ms=30))
            with pytest.raises(TimeoutError, match="timeout_ms=30"):
                await slow
            assert model.entered.is_set() and not gated.is_set()  # still inside the first step
            gated.set()
            return await b.submit(torch.tensor([5, 6, 7]), max_new_tokens=3)

    out = asyncio.run(main())
    assert ties(model, [(torch.tensor([5, 6, 7]), 3)], [out]) == 0
    assert (b.stats.timed_out, b.stats.completed) == (1, 1)
    assert b.kv.free_blocks == b.kv.num_blocks


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_a_cancelled_request_is_counted_once_and_frees_its_blocks(model, gated, kind):
    b = BATCHERS[kind](model)

    async def main():
        async with b:
            task = asyncio.ensure_future(b.submit(torch.tensor([1, 2, 3]), max_new_tokens=20))
            other = asyncio.ensure_future(b.submit(torch.tensor([4, 5]), max_new_tokens=6))
            assert await asyncio.to_thread(model.entered.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gated.set()
            return await other

    out = asyncio.run(main())
    assert ties(model, [(torch.tensor([4, 5]), 6)], [out]) == 0
    assert (b.stats.cancelled, b.stats.completed) == (1, 1)
    assert b.kv.free_blocks == b.kv.num_blocks


def test_a_scheduler_that_dies_leaves_nobody_waiting_and_no_block_taken(model, gated):
    b = ContinuousBatcher(model, kv_blocks=8, block_size=8)

    async def main():
        await b.start()
        running = asyncio.ensure_future(b.submit(torch.tensor([1, 2]), max_new_tokens=5))
        assert await asyncio.to_thread(model.entered.wait, 10)
        queued = asyncio.ensure_future(b.submit(torch.tensor([3]), max_new_tokens=5))
        await asyncio.sleep(0)
        b._task.cancel()  # as a bug or a torn-down loop would
        for task in (running, queued):
            with pytest.raises(BatcherStoppedError, match="stopped unexpectedly"):
                await task
        with pytest.raises(BatcherStoppedError, match="stopped"):
            await b.submit(torch.tensor([1]), max_new_tokens=1)
        gated.set()
        await asyncio.to_thread(b._workers.threads[0].join, 10)

    asyncio.run(main())
    assert b.kv.free_blocks == b.kv.num_blocks


def finish_order(b, cases, late):
    """Serve ``cases`` at once and ``late`` as soon as the first of them finishes; who ends first."""
    order = []

    async def one(name, p, k):
        await b.submit(p, max_new_tokens=k)
        order.append(name)

    async def main():
        async with b:
            first = [asyncio.ensure_future(one(f"c{i}", p, k)) for i, (p, k) in enumerate(cases)]
            while not order:
                await asyncio.sleep(0.001)
            await one("late", *late)
            await asyncio.gather(*first)

    asyncio.run(main())
    return order


def test_static_a_batch_runs_until_its_longest_and_nobody_joins(model):
    b = StaticBatcher(model, max_batch_size=2, max_len=64)
    order = finish_order(b, [(torch.tensor([1]), 2), (torch.tensor([2]), 40)], (torch.tensor([3]), 2))
    assert order == ["c0", "c1", "late"]  # late waited for the long one although a slot was idle
    s = b.stats
    assert s.peak_sequences == 2 and s.occupancy < 1
    first_batch = [x for x in s.timeline if x.reserved_slots == 2 * 64]
    assert len(first_batch) >= 40  # the finished sequence kept its reservation to the end


def test_continuous_a_sequence_joins_as_soon_as_one_leaves(model):
    b = ContinuousBatcher(model, kv_blocks=16, block_size=8, max_batch_size=2)
    order = finish_order(b, [(torch.tensor([1]), 2), (torch.tensor([2]), 40)], (torch.tensor([3]), 2))
    assert order == ["c0", "late", "c1"]


def test_stats_snapshot_and_run_trace(model):
    trace = poisson_trace(20, rate_rps=2000, prompt_len=(2, 10), output_len=(1, 30), seed=4)
    s = run_trace(ContinuousBatcher(model, kv_blocks=32, block_size=8, max_batch_size=8), trace)
    assert s.completed == 20 and s.tokens_generated == sum(r.max_new_tokens for r in trace)
    assert s.ttft.n == 20 and s.tpot.n == sum(r.max_new_tokens > 1 for r in trace)
    assert 0 < s.occupancy <= 1 and 0 < s.kv_utilisation <= 1 and s.tokens_per_s > 0
    assert 1 <= s.peak_sequences <= 8 and len(s.timeline) == s.steps
    assert [x.t_s for x in s.timeline] == sorted(x.t_s for x in s.timeline)
    assert s.summary()["completed"] == 20


def test_poisson_trace_is_reproducible_and_within_its_ranges():
    a, b = poisson_trace(200, 50, seed=7), poisson_trace(200, 50, seed=7)
    assert [(r.arrival_s, r.max_new_tokens) for r in a] == [(r.arrival_s, r.max_new_tokens) for r in b]
    assert all(8 <= len(r.prompt) <= 32 and 4 <= r.max_new_tokens <= 192 for r in a)
    assert min(r.max_new_tokens for r in a) < 8 and max(r.max_new_tokens for r in a) > 100  # wide
    assert all(x < y for x, y in zip([r.arrival_s for r in a], [r.arrival_s for r in a][1:], strict=False))


def test_step_recorder_means_and_bounded_timeline():
    rec = StepRecorder(max_batch_size=4, window=3)
    rec.admitted(10.0)
    for i, (active, reserved, held) in enumerate([(4, 64, 32), (2, 64, 16), (1, 32, 8), (1, 32, 32), (0, 0, 0)]):
        rec.step(11.0 + i, active, reserved, held, sequences=active)
    rec.tokens = 30
    rec.finished(arrival=10.0, first_token=10.5, end=12.5, n_tokens=5)
    s = rec.snapshot()
    assert s.steps == 5 and len(s.timeline) == 3 and s.timeline[0].t_s == 3.0  # the last three
    assert s.occupancy == pytest.approx((1 + 0.5 + 0.25 + 0.25 + 0) / 5)
    assert s.kv_utilisation == pytest.approx((0.5 + 0.25 + 0.25 + 1 + 0) / 5)
    assert s.busy_s == 5.0 and s.tokens_per_s == 6.0 and s.peak_sequences == 4
    assert s.ttft.p50_ms == pytest.approx(500) and s.tpot.p50_ms == pytest.approx(500)
