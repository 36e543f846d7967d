"""Several models on one device, each with its own CUDA stream and worker thread.

The guide's multi-model server is ``async`` but calls ``stream.synchronize()`` inside the
coroutine: the event loop stops until that model's GPU work ends, so no two requests ever
overlap (`multi_model`, `seed_ms` against `sequential_ms`, in
bench/results/2026-11-27-h200-anchors.json). Here each model's kernels are issued from its own
thread onto its own stream, and completion is awaited through a CUDA event in that thread, so the
event loop keeps serving and the GPU works on several models at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from labkit.batching import DynamicBatcher
from labkit.device import device_of
from labkit.measure import LatencyStats
from labkit.nested import map_tensors

__all__ = ["MultiModelServer", "UnknownModelError", "ServerStoppedError"]

LATENCY_WINDOW = 10_000  # latency percentiles cover the most recent requests: memory stays bounded


class UnknownModelError(LookupError):
    """A request named a model the server does not have."""


class ServerStoppedError(RuntimeError):
    """A request arrived while the server was not running."""


@dataclass
class _Served:
    fn: Callable[[torch.Tensor], Any]
    stream: torch.cuda.Stream | None
    executor: ThreadPoolExecutor
    batcher: DynamicBatcher | None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    requests: int = 0
    errors: int = 0


class MultiModelServer:
    """``await server.predict(name, x)``: ``x`` as the model takes it (a batch), or one input for
    a model listed in ``batching`` (its keyword arguments for a `DynamicBatcher`, which then
    collects that model's requests into batches). Outputs come back as CPU tensors.

    >>> async with MultiModelServer({"a": model_a, "b": model_b}) as server:
    ...     ya, yb = await asyncio.gather(server.predict("a", xa), server.predict("b", xb))
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module | Callable[[torch.Tensor], Any]],
        *,
        device: str | torch.device | None = None,
        batching: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not models:
            raise ValueError("a MultiModelServer needs at least one model")
        unknown = set(batching or {}) - set(models)
        if unknown:
            raise UnknownModelError(f"batching names {sorted(unknown)}, which are not among the models {sorted(models)}")
        self.device = torch.device(device) if device is not None else _device_of(models.values())
        self._models = dict(models)
        self._batching = dict(batching or {})
        self._served: dict[str, _Served] = {}
        self._running = False

    @property
    def names(self) -> list[str]:
        return list(self._models)

    async def start(self) -> None:
        if self._served:
            raise RuntimeError("this server was already started; create a new one")
        try:
            for name, model in self._models.items():
                if isinstance(model, nn.Module):
                    model = model.to(self.device).eval()
                batcher = None
                if name in self._batching:
                    batcher = DynamicBatcher(model, device=self.device, **self._batching[name])
                    await batcher.start()
                stream = None
                if self.device.type == "cuda":
                    stream = torch.cuda.Stream(self.device)
                    stream.wait_stream(torch.cuda.current_stream(self.device))  # weights just moved or cast
                self._served[name] = _Served(model, stream, ThreadPoolExecutor(1, thread_name_prefix=f"labkit-{name}"),
                                             batcher)
        except BaseException:
            await self.stop()  # what was started so far
            self._served = {}
            raise
        self._running = True

    async def stop(self) -> None:
        """Refuse new requests, finish every accepted one, then release the threads."""
        self._running = False
        for s in self._served.values():
            if s.batcher is not None:
                await s.batcher.stop()
            await asyncio.get_running_loop().run_in_executor(None, s.executor.shutdown)

    async def __aenter__(self) -> MultiModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def predict(self, name: str, x: torch.Tensor) -> Any:
        served = self._lookup(name)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor for model {name!r}, got {type(x).__name__}")
        t0 = time.perf_counter()
        served.requests += 1
        ready = None
        if x.is_cuda and served.stream is not None:  # made on the caller's stream: wait for it there
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(x.device))
        try:
            if served.batcher is not None:
                out = await served.batcher.submit(x)
            else:
                out = await asyncio.get_running_loop().run_in_executor(served.executor, self._run, served, x, ready)
        except Exception:
            served.errors += 1
            raise
        served.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        return out

    def _lookup(self, name: str) -> _Served:
        if not self._running:
            raise ServerStoppedError("MultiModelServer is not running (use `async with server:` or `await server.start()`)")
        try:
            return self._served[name]
        except KeyError:
            raise UnknownModelError(f"no model named {name!r}; this server has {', '.join(map(repr, self._served))}") from None

    def _run(self, served: _Served, x: torch.Tensor, ready: torch.cuda.Event | None) -> Any:
        """In the model's own thread: issue its kernels on its stream, then wait on an event."""
        with torch.no_grad(), (torch.cuda.stream(served.stream) if served.stream is not None else nullcontext()):
            if ready is not None:
                served.stream.wait_event(ready)
                x.record_stream(served.stream)  # the caller may drop x before this stream is done with it
            out = served.fn(x.to(self.device, non_blocking=True))
            if served.stream is None:
                return out
            host = map_tensors(_to_host, out)
            done = torch.cuda.Event()
            done.record(served.stream)
        done.synchronize()  # blocks this model's thread only; the GIL is released meanwhile
        return host

    def stats(self) -> dict[str, dict[str, float]]:
        """Per model: requests, errors, latency percentiles in ms over the last `LATENCY_WINDOW`
        requests, and for a batched model its batches and mean batch size (also after `stop`)."""
        out: dict[str, dict[str, float]] = {}
        for name, s in self._served.items():
            lat = LatencyStats.from_samples(list(s.latencies_ms))
            out[name] = {"requests": s.requests, "errors": s.errors, "p50_ms": lat.p50_ms,
                         "p99_ms": lat.p99_ms, "mean_ms": lat.mean_ms}
            if s.batcher is not None:
                summary = s.batcher.stats.summary()
                out[name] |= {"batches": summary["batches"], "mean_batch_size": summary["mean_batch_size"]}
        return out


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy on the host, queued on the current stream (pinned destination: truly asynchronous)."""
    return t.to("cpu", non_blocking=True)


def _device_of(models: Any) -> torch.device:
    """The first model's device that is not the CPU (a `GraphRunner` says where it runs too)."""
    return next((d for d in map(device_of, models) if d.type != "cpu"), torch.device("cpu"))
