"""Thousands of requests of every kind through a batcher with a tiny cache: one outcome each, the
right tokens for those that complete, and every block back in the pool at the end."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
import torch

from labkit.generation import generate
from labkit.generation.continuous import ContinuousBatcher
from labkit.generation.model import GPT, GPTConfig
from labkit.generation.static import StaticBatcher

pytestmark = pytest.mark.timeout(120)

VALID, BAD, TOO_BIG, TIMEOUT, CANCEL, POISON = "valid", "bad", "too_big", "timeout", "cancel", "poison"
KINDS = [VALID, BAD, TOO_BIG, TIMEOUT, CANCEL, POISON]
WEIGHTS = [55, 8, 4, 15, 16, 2]
MAX_NEW = 8


class Poisonable(GPT):
    """Raises for a step holding a prompt that starts with token 255."""

    def run(self, ids, positions, attend):
        if bool(((positions == 0) & (ids == 255)).any()):
            raise RuntimeError("poisoned prompt")
        return super().run(ids, positions, attend)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Poisonable(GPTConfig(n_layer=1, n_head=2, d_model=32, context=64)).eval()


@pytest.fixture(scope="module")
def prompts(model):
    """20 prompts and their first MAX_NEW greedy tokens: greedy output for k tokens is a prefix."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(20):
        p = torch.randint(0, 255, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g)
        out.append((p, generate(model, p, MAX_NEW)))
    return out


def bad_prompt(rng: random.Random):
    return rng.choice([
        (torch.tensor([], dtype=torch.long), 2),
        (torch.tensor([1.5, 2.0]), 2),
        (torch.tensor([3, 999]), 2),
        (torch.tensor([[1, 2]]), 2),
        (torch.tensor([1, 2]), 0),
        (torch.ones(60, dtype=torch.long), 10),  # past the model's context
    ])


async def load(b, prompts, n: int, seed: int, too_big: tuple[int, int]):
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    sent = []
    async with b:
        i = 0
        while i < n:
            for _ in range(min(rng.randint(1, 60), n - i)):
                kind = rng.choices(KINDS, WEIGHTS)[0]
                p, ref = rng.choice(prompts)
                k, timeout_ms = rng.randint(1, MAX_NEW), None
                if kind == BAD:
                    p, k = bad_prompt(rng)
                elif kind == TOO_BIG:
                    p, k = torch.ones(too_big[0], dtype=torch.long), too_big[1]
                elif kind == POISON:
                    p = torch.cat([torch.tensor([255]), p])
                elif kind == TIMEOUT:
                    timeout_ms = rng.uniform(0.5, 20)
                task = asyncio.ensure_future(b.submit(p, max_new_tokens=k, timeout_ms=timeout_ms))
                if kind == CANCEL:
                    loop.call_later(rng.uniform(0, 0.01), task.cancel)
                sent.append((kind, ref[:k], task))
                i += 1
            await asyncio.sleep(rng.uniform(0, 0.004))
        await asyncio.wait([t for _, _, t in sent])
    return sent


def outcome(task: asyncio.Task) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "completed"
    if isinstance(exc, TimeoutError):
        return "timed_out"
    if isinstance(exc, (TypeError, ValueError)):
        return "refused"
    assert isinstance(exc, RuntimeError) and "poisoned prompt" in str(exc), repr(exc)
    return "failed"


@pytest.mark.parametrize("kind, n", [("continuous", 2000), ("static", 300)])
def test_every_request_gets_one_outcome_and_no_block_leaks(model, prompts, kind, n):
    if kind == "continuous":  # 12 blocks of 4: a few sequences at once, preempted often
        b, too_big = ContinuousBatcher(model, kv_blocks=12, block_size=4, max_batch_size=16), (40, 10)
    else:
        b, too_big = StaticBatcher(model, max_batch_size=6, max_len=24), (20, 5)
    sent = asyncio.run(load(b, prompts, n, seed=11, too_big=too_big))
    seen = Counter()
    for req_kind, want, task in sent:
        assert task.done()
        got = outcome(task)
        seen[got] += 1
        if got == "completed":
            assert req_kind in (VALID, TIMEOUT, CANCEL) and torch.equal(task.result(), want)
        elif got == "refused":
            assert req_kind in (BAD, TOO_BIG)
        elif req_kind in (BAD, TOO_BIG, POISON):  # refused at submit, or failed by its own step
            assert got == ("failed" if req_kind == POISON else "refused")
    s = b.stats
    # A cancel that lands after the result was set (the caller had not resumed yet) is seen
    # by the caller as a cancellation and counted by the batcher as completed.
    late = seen["cancelled"] - s.cancelled
    assert 0 <= late <= 5
    assert (s.completed - late, s.failed, s.timed_out, s.refused) == (
        seen["completed"], seen["failed"], seen["timed_out"], seen["refused"])
    assert sum(seen.values()) == n
    assert all(seen[k] > 0 for k in ("completed", "failed", "timed_out", "refused", "cancelled"))
    assert b.kv.free_blocks == b.kv.num_blocks and b.kv.sequences == 0
    if kind == "continuous":
        assert s.preemptions > 0
