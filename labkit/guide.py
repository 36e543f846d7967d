"""The course guide's own code (/work/shared/seed-guide.md), kept only as the "before" of a measurement.

Lessons show it (``inspect.getsource``) and measure it; bench/batching.py and bench/memory.py
run it beside labkit's versions in the same run. Its defects are kept on purpose, because they
are what the measurements show; never use any of it:

- `GuideBatcher` (guide 2.1), its defects marked (a)-(e) in its source: (a) its timer starts
  when the loop starts collecting, not when the first request arrives, so it waits the whole
  window even with requests queued; (b) it polls every millisecond while idle; (c) it stacks in
  pageable memory on the event loop and (d) runs one batch at a time; (e) one exception kills
  its loop, after which every request hangs; and it keys requests by ``id(tensor)``, which
  Python reuses. (`labkit.batching.DynamicBatcher` fixes each.)
- `guide_optimize_batch_size` (guide 4.1, ``GPUMemoryManager.optimize_batch_size``): a binary
  search over 1..``start_size``, one forward pass per step. It cannot look past ``start_size``,
  it catches out of memory by the error's message, and it leaves memory behind: the previous
  trial's input is still referenced while the next one is allocated, its output while the next
  forward pass runs, and after out of memory the cache is emptied while the error still holds
  the failed pass's tensors. So near the limit it answers low (bench/results/2026-11-27-h200.json,
  ``memory.resnet50_fp32_capped``: ``guide`` against ``ours``).
  `guide_search` takes the same steps over clean trials, so a run can tell what the steps cost
  from what the leftovers cost. (`labkit.memory.find_max_batch` predicts instead.)
- `GuideCheckpointed` (guide 4.2, ``CheckpointedModel``): the same number of layers in every
  segment, whatever each keeps for backward. (`labkit.memory.checkpointed` balances bytes.)

Not exported from `labkit`: importing it is a deliberate act.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from labkit.memory import Trial

__all__ = ["GuideBatcher", "guide_optimize_batch_size", "guide_search", "GuideCheckpointed"]


class GuideBatcher:
    """The guide's ``DynamicBatcher``, its design intact (the defects are listed above).

    One change, for measuring: `stop` waits for the loop without raising what killed it, so a
    run can report the death (``batcher.task.exception()``) instead of failing with it."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], max_batch_size: int = 32,
                 max_wait_time: float = 0.01, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait_time = max_wait_time
        self.device = device
        self.request_queue: deque = deque()
        self.running = False

    async def predict(self, x: torch.Tensor) -> torch.Tensor:
        future = asyncio.get_running_loop().create_future()
        self.request_queue.append((id(x), x, future))  # keyed by id(x), which Python reuses
        return await future

    async def _process_loop(self) -> None:
        while self.running:
            batch_start = time.time()
            batch, futures = [], []
            while len(batch) < self.max_batch_size:  # (a) waits the whole window...
                if time.time() - batch_start > self.max_wait_time:
                    break
                if self.request_queue:
                    _, data, future = self.request_queue.popleft()
                    batch.append(data)
                    futures.append(future)
                else:
                    await asyncio.sleep(0.001)  # (b) ...polling every millisecond
            if batch:
                batch_tensor = torch.stack(batch).to(self.device)  # (c) pageable memory, on the event loop
                outputs = await asyncio.get_running_loop().run_in_executor(None, self._infer, batch_tensor)
                for i, future in enumerate(futures):  # (d) one batch at a time, nothing overlaps
                    if not future.done():
                        future.set_result(outputs[i])  # (e) any exception above kills this loop

    def _infer(self, batch_tensor: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch_tensor)

    def start(self) -> None:
        self.running = True
        self.task = asyncio.create_task(self._process_loop())

    async def stop(self) -> None:
        self.running = False
        await asyncio.wait([self.task])


def _bisect(fits: Callable[[int], bool], start_size: int) -> tuple[int, int]:
    """The guide's binary search over 1..``start_size``: (the batch it settles on, the trials run)."""
    max_batch, min_batch, optimal_batch, trials = start_size, 1, 1, 0
    while min_batch <= max_batch:
        batch_size = (min_batch + max_batch) // 2
        trials += 1
        if fits(batch_size):
            optimal_batch, min_batch = batch_size, batch_size + 1  # success: try larger
        else:
            max_batch = batch_size - 1  # out of memory: try smaller
    return optimal_batch, trials


def guide_optimize_batch_size(model: nn.Module, input_shape: tuple[int, ...], device: str = "cuda",
                              start_size: int = 128) -> tuple[int, int]:
    """The guide's ``optimize_batch_size`` on ``model``: (the batch it settles on, the forward
    passes it ran). Its leftovers are the guide's: ``held`` plays its loop variables, rebound only
    once the next trial's tensors exist, and the cache is emptied inside the ``except`` block,
    while the error still references the failed pass. Out of memory is recognised by message."""
    held: dict[str, torch.Tensor] = {}

    def fits(batch_size: int) -> bool:
        try:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            held["dummy_input"] = torch.randn(batch_size, *input_shape).to(device)
            with torch.no_grad():
                held["_"] = model(held["dummy_input"])
            return True
        except RuntimeError as e:
            if "out of memory" in str(e):
                torch.cuda.empty_cache()
                return False
            raise

    return _bisect(fits, start_size)


def guide_search(trial: Callable[[int], Trial], start_size: int = 128) -> tuple[int, list[Trial]]:
    """The guide's steps over a clean ``trial(n)`` (`labkit.memory.make_trial`), without its
    leftovers: (the batch it settles on, every trial in order)."""
    log: list[Trial] = []

    def fits(batch_size: int) -> bool:
        log.append(trial(batch_size))
        return log[-1].fits

    return _bisect(fits, start_size)[0], log


class GuideCheckpointed(nn.Module):
    """The guide's ``CheckpointedModel``: ``segments`` runs of equal numbers of ``layers``.
    Unlike the guide it keeps the leftover layers (in the last segment), so that outputs stay
    right, and copies each segment's input (ResNet's in-place ReLU may start one)."""

    def __init__(self, layers: list[nn.Module], segments: int) -> None:
        super().__init__()
        per = len(layers) // segments
        bounds = [*(i * per for i in range(segments)), len(layers)]
        self.segments = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = checkpoint(lambda x, segment=segment: segment(x.clone()), x, use_reentrant=False)
        return x
