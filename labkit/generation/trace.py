"""Arrival traces and replaying them through a batcher: what the bench and lesson 08 compare on.

A trace fixes everything a run depends on (arrival times, prompts, output lengths) from a seed,
so a static and a continuous batcher can be measured on the very same requests.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np
import torch

from labkit.generation.serve import GenerationServer
from labkit.generation.stats import GenerationStats

__all__ = ["TraceRequest", "poisson_trace", "replay", "run_trace", "serve_trace"]


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float  # seconds from the start of the trace
    prompt: torch.Tensor  # (T,) token ids
    max_new_tokens: int


def poisson_trace(n: int, rate_rps: float, *, prompt_len: tuple[int, int] = (8, 32),
                  output_len: tuple[int, int] = (4, 192), vocab_size: int = 256, seed: int = 0) -> list[TraceRequest]:
    """``n`` requests arriving as a Poisson process of ``rate_rps``; prompt lengths uniform in
    ``prompt_len`` and output lengths log-uniform in ``output_len`` (both inclusive).

    Log-uniform: as many requests between 4 and 16 tokens as between 48 and 192, the wide spread
    of real output lengths, under which a batch that runs until its longest sequence idles.
    """
    if n < 1 or not 1 <= prompt_len[0] <= prompt_len[1] or not 1 <= output_len[0] <= output_len[1]:
        raise ValueError(f"need n >= 1 and lengths 1 <= low <= high, got n={n}, prompt_len={prompt_len}, "
                         f"output_len={output_len}")
    if not rate_rps > 0:
        raise ValueError(f"rate_rps must be positive, got {rate_rps}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, size=n))  # Poisson: exponential gaps
    prompts = rng.integers(prompt_len[0], prompt_len[1] + 1, size=n)
    lo, hi = math.log(output_len[0]), math.log(output_len[1] + 1)
    outputs = np.minimum(np.exp(rng.uniform(lo, hi, size=n)).astype(int), output_len[1])
    return [TraceRequest(float(t), torch.from_numpy(rng.integers(0, vocab_size, size=int(p))).long(), int(o))
            for t, p, o in zip(arrivals, prompts, outputs, strict=True)]


async def replay(batcher: GenerationServer, trace: list[TraceRequest], *,
                 timeout_ms: float | None = None) -> list[torch.Tensor | BaseException]:
    """Submit each request at its arrival time to a running batcher; each one's tokens or exception."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(r: TraceRequest) -> torch.Tensor:
        await asyncio.sleep(max(0.0, t0 + r.arrival_s - loop.time()))
        return await batcher.submit(r.prompt, max_new_tokens=r.max_new_tokens, timeout_ms=timeout_ms)

    return await asyncio.gather(*(one(r) for r in trace), return_exceptions=True)


def serve_trace(batcher: GenerationServer, trace: list[TraceRequest], *,
                timeout_ms: float | None = None) -> tuple[list[torch.Tensor | BaseException], GenerationStats]:
    """Serve ``trace`` with a fresh ``batcher`` on its own loop thread (so it works inside a
    notebook, whose loop is already running): each request's tokens or exception, in trace
    order, and the batcher's stats once every request has ended."""
    with batcher:
        results = asyncio.run_coroutine_threadsafe(replay(batcher, trace, timeout_ms=timeout_ms), batcher._loop).result()
    return results, batcher.stats


def run_trace(batcher: GenerationServer, trace: list[TraceRequest], *,
              timeout_ms: float | None = None) -> GenerationStats:
    """`serve_trace`'s stats alone."""
    return serve_trace(batcher, trace, timeout_ms=timeout_ms)[1]
