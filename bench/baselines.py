"""The guide's batcher (2.1), max-batch search (4.1) and checkpointing (4.3), kept only as the "before" of a measurement.

Its defects are deliberate here and measured in bench/batching.py and notebook 01: it polls every millisecond, waits the
whole window even when requests are queued, runs one batch at a time, stacks in pageable memory,
keys nothing safely, and one exception kills its loop (every later request hangs). Never use it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class GuideBatcher:
    def __init__(self, model, max_batch_size: int = 32, max_wait_time: float = 0.01, device: str = "cpu"):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait_time = max_wait_time
        self.device = device
        self.request_queue: deque = deque()
        self.running = False

    async def predict(self, x: torch.Tensor):
        future = asyncio.get_running_loop().create_future()
        self.request_queue.append((id(x), x, future))
        return await future

    async def _process_loop(self) -> None:
        while self.running:
            batch_start = time.time()
            batch, futures = [], []
            while len(batch) < self.max_batch_size:
                if time.time() - batch_start > self.max_wait_time:
                    break
                if self.request_queue:
                    _, data, future = self.request_queue.popleft()
                    batch.append(data)
                    futures.append(future)
                else:
                    await asyncio.sleep(0.001)
            if batch:
                batch_tensor = torch.stack(batch).to(self.device)
                outputs = await asyncio.get_running_loop().run_in_executor(None, self._infer, batch_tensor)
                for i, future in enumerate(futures):
                    if not future.done():
                        future.set_result(outputs[i])

    def _infer(self, batch_tensor: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch_tensor)

    def start(self) -> None:
        self.running = True
        self.task = asyncio.create_task(self._process_loop())

    async def stop(self) -> None:
        self.running = False
        await self.task


def guide_optimize_batch_size(model, input_shape, device: str = "cuda", start_size: int = 128) -> tuple[int, int]:
    """The guide's GPUMemoryManager.optimize_batch_size (seed-guide.md 4.1): a binary search over
    1..start_size, one forward pass per step, out of memory caught by message. Returns the batch
    it settles on and how many forward passes it ran. It cannot look past ``start_size``, and each
    trial runs while the previous trial's input batch is still referenced (``dummy_input`` is
    rebound only once the next one exists), so it answers low."""
    max_batch, min_batch, optimal_batch, trials = start_size, 1, 1, 0
    while min_batch <= max_batch:
        batch_size = (min_batch + max_batch) // 2
        trials += 1
        try:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            dummy_input = torch.randn(batch_size, *input_shape).to(device)
            with torch.no_grad():
                _ = model(dummy_input)
            optimal_batch = batch_size
            min_batch = batch_size + 1
        except RuntimeError as e:
            if "out of memory" in str(e):
                max_batch = batch_size - 1
                torch.cuda.empty_cache()
            else:
                raise e
    return optimal_batch, trials


def guide_search_steps(trial, start_size: int) -> tuple[int, int]:
    """The same binary search over a clean ``trial(n) -> Trial`` (`labkit.memory.make_trial`): its
    steps without its leftovers, so a run shows what the leftovers cost. Returns (batch, trials)."""
    max_batch, min_batch, optimal_batch, trials = start_size, 1, 1, 0
    while min_batch <= max_batch:
        batch_size = (min_batch + max_batch) // 2
        trials += 1
        if trial(batch_size).fits:
            optimal_batch, min_batch = batch_size, batch_size + 1
        else:
            max_batch = batch_size - 1
    return optimal_batch, trials


class GuideCheckpointed(nn.Module):
    """The guide's CheckpointedModel (4.3): the same number of layers in every segment, whatever
    each keeps for backward. Unlike the guide it keeps the leftover layers (in the last segment),
    so that outputs stay right, and copies each segment's input (ResNet's in-place ReLU may start
    one)."""

    def __init__(self, layers: list[nn.Module], segments: int) -> None:
        super().__init__()
        per = len(layers) // segments
        bounds = [*(i * per for i in range(segments)), len(layers)]
        self.segments = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = checkpoint(lambda x, segment=segment: segment(x.clone()), x, use_reentrant=False)
        return x
