"""The guide's batcher (seed-guide.md, section 2.1), kept only as the "before" of a measurement.

Its defects are deliberate here and measured in bench/batching.py and notebook 01: it polls every millisecond, waits the
whole window even when requests are queued, runs one batch at a time, stacks in pageable memory,
keys nothing safely, and one exception kills its loop (every later request hangs). Never use it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import torch


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
