"""Copy/compute overlap with CUDA streams: host→device copy, compute and device→host copy of
successive batches on three streams, ordered by events, so that batch i+1 is copied in while
batch i computes and batch i-1 is copied out.

The guide's version copies with ``non_blocking=True`` from ordinary (pageable) memory; such a copy
cannot be asynchronous (the driver stages it through its own pinned buffer), so nothing overlaps:
no faster than a plain loop, where pinning alone was faster (`streams_pinned_False` and
`streams_pinned_True` in bench/results/2026-11-27-h200-anchors.json). Here every copy goes
through pinned host buffers that are allocated once and reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from labkit.device import device_of
from labkit.graphs import GraphRunner
from labkit.timeline import StageEvent

__all__ = ["StreamPipeline", "GraphRunner", "STAGES", "simple_loop"]

STAGES = ("copy in", "compute", "copy out")


@dataclass
class _Buffer:
    """One of the pipeline's in-flight slots: its pinned host buffers and what it holds now."""

    host_in: torch.Tensor | None = None
    source: torch.Tensor | None = None  # what the batch is copied from: held until the copy is done
    host_out: torch.Tensor | None = None
    device_in: torch.Tensor | None = None
    output: torch.Tensor | None = None  # kept referenced until copied out: its memory stays ours
    rows: int = 0
    index: int = -1
    events: list[torch.cuda.Event] = field(default_factory=list)  # start/end of each stage


def _fit(buf: torch.Tensor | None, like: torch.Tensor, *, device: torch.device | None = None,
         pinned: bool = False) -> torch.Tensor:
    """``buf`` if it can hold ``like``; else a new buffer (grown to the new batch size)."""
    if buf is not None and buf.shape[1:] == like.shape[1:] and buf.dtype == like.dtype and len(buf) >= len(like):
        return buf
    return torch.empty(like.shape, dtype=like.dtype, device=device or "cpu", pin_memory=pinned)


class StreamPipeline:
    """Runs ``model`` over a stream of batches with copies and compute overlapped.

    ``run(batches)`` takes CPU tensors and returns CPU outputs, in order. On a CPU the batches
    go through the same slots one at a time (there is nothing to overlap). ``timeline`` (after a
    run with ``record=True``) holds a `StageEvent` per batch and stage (0 copy in, 1 compute, 2
    copy out; on a CPU compute only), from CUDA events, for
    `labkit.plots.plot_pipeline_timeline`.

    Lifetimes: a pinned input buffer is refilled only after its previous copy finished; a device
    input only after the compute that read it; an output stays referenced until it is copied
    out, so the allocator cannot hand its memory to another stream meanwhile (no
    ``record_stream`` needed). Inputs already in pinned memory are copied from where they are;
    others are staged through the slot's own pinned buffer. The streams first wait for the
    caller's stream, so work queued just before ``run`` (weights, inputs) is complete. A run that
    raises waits for its work in flight and empties every slot: the next run starts clean.
    """

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor], buffers: int = 2, *,
                 device: str | torch.device | None = None) -> None:
        if buffers < 1:
            raise ValueError(f"buffers must be at least 1, got {buffers}")
        self.device = torch.device(device) if device is not None else device_of(model)
        self.model = model
        self.buffers = buffers
        self.timeline: list[StageEvent] = []
        self._slots = [_Buffer() for _ in range(buffers)]
        cuda = self.device.type == "cuda"
        self.streams = [torch.cuda.Stream(self.device) for _ in STAGES] if cuda else []
        self._issue = self._issue_on_cuda if cuda else self._issue_on_host
        self._collect = self._collect_on_cuda if cuda else self._collect_on_host

    def run(self, batches: Iterable[torch.Tensor], *, record: bool = False) -> list[torch.Tensor]:
        """Batch i goes to slot i mod ``buffers``, whose previous batch is collected first."""
        self.timeline = []
        self._start_clock()
        results: list[torch.Tensor] = []
        try:
            for i, x in enumerate(batches):
                slot = self._slots[i % self.buffers]
                if slot.index >= 0:  # this slot's previous batch: collect it before reusing the slot
                    results.append(self._collect(slot, record))
                self._issue(slot, i, x, record)
            pending = sorted((s for s in self._slots if s.index >= 0), key=lambda s: s.index)
            results.extend(self._collect(s, record) for s in pending)
        except BaseException:
            for stream in self.streams:  # copies of this run may still read or write the slots' buffers
                stream.synchronize()
            raise
        finally:
            self._empty_slots()  # after a failure too: no batch of this run is left for the next
        return results

    def _start_clock(self) -> None:
        self._t0 = time.perf_counter()
        if self.streams:
            caller = torch.cuda.current_stream(self.device)
            for stream in self.streams:  # weights or inputs the caller just wrote may still be in flight
                stream.wait_stream(caller)
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record(caller)

    def _empty_slots(self) -> None:
        for slot in self._slots:
            slot.output, slot.source, slot.index = None, None, -1

    def _issue_on_host(self, slot: _Buffer, index: int, x: torch.Tensor, record: bool) -> None:
        start = time.perf_counter() - self._t0
        with torch.no_grad():
            slot.output = self.model(x)
        if record:
            self.timeline.append(StageEvent(start, time.perf_counter() - self._t0, 1, index))
        slot.rows, slot.index = len(x), index

    def _collect_on_host(self, slot: _Buffer, record: bool) -> torch.Tensor:
        out, slot.output, slot.index = slot.output, None, -1
        return out

    def _issue_on_cuda(self, slot: _Buffer, index: int, x: torch.Tensor, record: bool) -> None:
        copy_in, compute, copy_out = self.streams
        slot.events = [torch.cuda.Event(enable_timing=record) for _ in range(2 * len(STAGES))]
        start_in, end_in, start_c, end_c, start_out, end_out = slot.events
        if x.is_pinned():  # copied from where it is; `slot.source` keeps it alive until collected
            source = x
        else:  # staged in this slot's pinned buffer, free again: its last copy ended before `_collect`
            slot.host_in = _fit(slot.host_in, x, pinned=True)
            source = slot.host_in[: len(x)]  # (B, *in): the buffer may be longer than this batch
            source.copy_(x)
        slot.source = source
        slot.device_in = _fit(slot.device_in, x, device=self.device)
        with torch.cuda.stream(copy_in):
            start_in.record()
            slot.device_in[: len(x)].copy_(source, non_blocking=True)
            end_in.record()
        with torch.cuda.stream(compute), torch.no_grad():
            compute.wait_event(end_in)
            start_c.record()
            slot.output = self.model(slot.device_in[: len(x)])
            end_c.record()
        if not isinstance(slot.output, torch.Tensor):
            raise TypeError(f"StreamPipeline needs a model that returns one tensor, got {type(slot.output).__name__}")
        slot.host_out = _fit(slot.host_out, slot.output, pinned=True)
        with torch.cuda.stream(copy_out):
            copy_out.wait_event(end_c)
            start_out.record()
            slot.host_out[: len(x)].copy_(slot.output, non_blocking=True)
            end_out.record()
        slot.rows, slot.index = len(x), index

    def _collect_on_cuda(self, slot: _Buffer, record: bool) -> torch.Tensor:
        slot.events[-1].synchronize()  # everything of this slot's batch is done
        out = slot.host_out[: slot.rows].clone()  # (B, *out): the caller's own, the buffer stays ours
        if record:
            ms = [self._origin.elapsed_time(e) / 1e3 for e in slot.events]
            self.timeline += [StageEvent(ms[2 * k], ms[2 * k + 1], k, slot.index) for k in range(len(STAGES))]
        slot.output, slot.source, slot.index = None, None, -1
        return out


def simple_loop(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """The baseline: one batch at a time, copy in, compute, copy out, all on one stream.

    Batches in pinned memory are copied with ``non_blocking=True``, as the guide does; from
    pageable memory that flag changes nothing, which is the guide's mistake.
    """
    device = torch.device(device)
    with torch.no_grad():
        return [model(x.to(device, non_blocking=True)).cpu() for x in batches]
