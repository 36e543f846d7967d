"""`PipelineParallel`: stages on several devices, all busy at once on different micro-batches.

The guide's version runs stage 1 on a batch, then stage 2, and so on, in one thread: every
device but one is idle at any moment. Here each stage has its own thread (and, on a GPU, its own
stream), stages are linked by bounded queues, and the batch is cut into micro-batches, so stage
2 works on micro-batch 1 while stage 1 works on micro-batch 2. The devices idle only while the
pipeline fills and drains (the *bubble*), which `timeline` records and
`labkit.timeline.bubble_fraction` measures.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from labkit.partition import balanced_cuts
from labkit.timeline import StageEvent, bubble_fraction

__all__ = ["PipelineParallel", "split_stages"]

_STOP = object()


def split_stages(layers: Sequence[nn.Module], n: int) -> list[nn.Sequential]:
    """Cut an ordered list of layers into ``n`` contiguous stages whose largest parameter count
    is least: a pipeline runs at the pace of its slowest stage."""
    if not 1 <= n <= len(layers):
        raise ValueError(f"cannot cut {len(layers)} layers into {n} non-empty stages")
    weights = [sum(p.numel() for p in layer.parameters()) + 1 for layer in layers]  # +1: a layer without weights still runs
    cuts = balanced_cuts(weights, n)
    return [nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(cuts)]


class PipelineParallel:
    """Run ``stages`` (stage i on ``devices[i]``) as a pipeline over micro-batches.

    Results come back on the CPU in input order. An exception in any stage stops the pipeline
    and is raised to the caller (with a note naming the stage and micro-batch). Each call starts
    its stage threads and joins them before returning: nothing is left running.

    Stages overlap only where their work runs outside Python's GIL (kernels on separate devices,
    large CPU kernels). Stages whose time is dispatch and kernel launch, as eager layers at small
    micro-batches on a GPU are, take turns holding the GIL, and a pipeline of them is slower than
    `run_sequential` (lesson 03 measures both).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        devices: Sequence[torch.device | str],
        micro_batch_size: int,
        *,
        queue_depth: int = 2,
    ) -> None:
        if len(stages) != len(devices) or not stages:
            raise ValueError(f"one device per stage: {len(stages)} stages, {len(devices)} devices")
        if micro_batch_size < 1 or queue_depth < 1:
            raise ValueError(f"micro_batch_size and queue_depth must be at least 1, got {micro_batch_size}, {queue_depth}")
        self.devices = [torch.device(d) for d in devices]
        self.stages = [s.to(d).eval() for s, d in zip(stages, self.devices, strict=True)]
        self.micro_batch_size = micro_batch_size
        self.queue_depth = queue_depth
        # One stream per stage for the object's life. `torch.cuda.Stream()` hands out the next of a
        # pool of 32, and the caching allocator reuses a freed block only on the stream that made
        # it: a fresh stream per call would pay cudaMalloc for every call's activations again.
        self.streams = [torch.cuda.Stream(d) if d.type == "cuda" else None for d in self.devices]
        self.timeline: list[StageEvent] = []

    @property
    def bubble(self) -> float:
        """`bubble_fraction` of the last call."""
        return bubble_fraction(self.timeline, len(self.stages))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        micro = self._micro_batches(x)
        n = len(self.stages)
        inboxes = [queue.Queue(maxsize=self.queue_depth) for _ in range(n)]
        results: list[torch.Tensor | None] = [None] * len(micro)
        events: list[StageEvent] = []
        errors: list[tuple[int, int, BaseException]] = []
        t0 = time.perf_counter()

        def work(i: int) -> None:
            stage, device, stream, last = self.stages[i], self.devices[i], self.streams[i], i == n - 1
            while (item := inboxes[i].get()) is not _STOP:
                index, tensor = item
                if errors:  # the pipeline is failing: drain without computing
                    continue
                start = time.perf_counter()
                try:
                    out = self._run_stage(stage, device, stream, tensor, to_cpu=last)
                except BaseException as exc:  # reaches the caller, whatever it is
                    errors.append((i, index, exc))
                    continue
                events.append(StageEvent(start - t0, time.perf_counter() - t0, i, index))
                if last:
                    results[index] = out
                else:
                    inboxes[i + 1].put((index, out))
            if not last:
                inboxes[i + 1].put(_STOP)

        threads = [threading.Thread(target=work, args=(i,), name=f"labkit-stage-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        try:
            for index, mb in enumerate(micro):
                if errors:
                    break
                inboxes[0].put((index, mb))
        finally:
            inboxes[0].put(_STOP)
            for t in threads:
                t.join()
        self.timeline = sorted(events)
        if errors:
            stage, index, exc = min(errors, key=lambda e: e[1])
            exc.add_note(f"raised by pipeline stage {stage} ({self.devices[stage]}) on micro-batch {index}")
            raise exc
        return torch.cat(results)  # (B, *out): micro-batches in input order

    def run_sequential(self, x: torch.Tensor) -> torch.Tensor:
        """The same stages one after another on one thread (plain model parallelism): the
        baseline a pipeline must beat. Records `timeline` the same way."""
        micro = self._micro_batches(x)
        events, outs = [], []
        t0 = time.perf_counter()
        for index, tensor in enumerate(micro):
            for i, (stage, device) in enumerate(zip(self.stages, self.devices, strict=True)):
                start = time.perf_counter()
                tensor = self._run_stage(stage, device, None, tensor, to_cpu=i == len(self.stages) - 1)
                events.append(StageEvent(start - t0, time.perf_counter() - t0, i, index))
            outs.append(tensor)
        self.timeline = sorted(events)
        return torch.cat(outs)  # (B, *out)

    def _micro_batches(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        return torch.split(x, self.micro_batch_size)  # (micro_batch_size, *in) views; the last may be shorter

    @staticmethod
    def _run_stage(stage: nn.Module, device: torch.device, stream: torch.cuda.Stream | None,
                   tensor: torch.Tensor, *, to_cpu: bool) -> torch.Tensor:
        with torch.no_grad(), (torch.cuda.stream(stream) if stream is not None else nullcontext()):
            out = stage(tensor.to(device, non_blocking=stream is not None))
            if stream is not None:
                # The next stage reads ``out`` from another thread and stream: finish it first.
                stream.synchronize()
            return out.cpu() if to_cpu else out


