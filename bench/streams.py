"""Benchmark for lessons 05-06: several models at once, copy/compute overlap, CUDA graphs.

Each comparison runs in one process, back to back, on the device present:
- four models served one after another vs `MultiModelServer` (a stream and a thread each);
- fp32 batches from host memory: a plain loop from pageable memory (the guide), the same loop from
  pinned memory, and `StreamPipeline` from the same pageable batches (it pins through its own
  buffers; that copy is timed), double-buffered on three streams;
- `GraphRunner` against the eager model at batch 1 and 32.
GPU: ResNet-50 224², fp16 where the lesson says so. CPU: small models; there the streams and
graphs have nothing to overlap or replay, and the figures say so by being about 1x.

``python bench/streams.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli  # noqa: E402

from labkit.graphs import GraphRunner  # noqa: E402
from labkit.measure import bench  # noqa: E402
from labkit.models import build_model, example_batch  # noqa: E402
from labkit.serving import MultiModelServer  # noqa: E402
from labkit.streams import StreamPipeline, simple_loop  # noqa: E402


def _models(gpu: bool, device: torch.device, n: int = 4) -> dict[str, torch.nn.Module]:
    dtype = torch.float16 if gpu else torch.float32
    return {f"resnet50_{i}" if gpu else f"tiny_cnn_{i}": build_model("resnet50" if gpu else "tiny_cnn",
                                                                     "full" if gpu else "small", device, seed=i).to(dtype)
            for i in range(n)}


async def _multi_model(models: dict, batch: int, rounds: int) -> dict[str, float]:
    inputs = {name: example_batch(m, batch, device="cpu") for name, m in models.items()}
    async with MultiModelServer(models) as server:
        for _ in range(3):  # warm-up: cuDNN, allocator, threads
            await asyncio.gather(*(server.predict(n, x) for n, x in inputs.items()))
        t0 = time.perf_counter()
        for _ in range(rounds):
            for n, x in inputs.items():
                await server.predict(n, x)
        serial_ms = (time.perf_counter() - t0) / rounds * 1e3
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(server.predict(n, x) for n, x in inputs.items()))
        together_ms = (time.perf_counter() - t0) / rounds * 1e3
    return {"models": len(models), "batch": batch, "one_after_another_ms": serial_ms,
            "together_ms": together_ms, "speedup": serial_ms / together_ms}


def _overlap(model, device: torch.device, batch: int, count: int) -> dict[str, float]:
    pageable = [example_batch(model, batch, device="cpu", seed=i) for i in range(count)]
    pinned = [x.pin_memory() for x in pageable] if device.type == "cuda" else pageable
    pipe = StreamPipeline(model, buffers=2)
    runs = {
        "pageable_loop": lambda: simple_loop(model, pageable, device),
        "pinned_loop": lambda: simple_loop(model, pinned, device),
        "stream_pipeline": lambda: pipe.run(pageable),
    }
    out: dict[str, float] = {"batch": batch, "batches": count}
    for name, fn in runs.items():
        out[f"{name}_img_s"] = batch * count / (bench(fn, warmup=1, repeat=7, device=device).median_ms / 1e3)
    out["pinned_vs_pageable"] = out["pinned_loop_img_s"] / out["pageable_loop_img_s"]
    out["pipeline_vs_pageable"] = out["stream_pipeline_img_s"] / out["pageable_loop_img_s"]
    return out


def _graphs(model, device: torch.device) -> dict[str, float]:
    runner = GraphRunner(model, batch_sizes=(1, 32))
    out: dict[str, float] = {"graphed": runner.graphed}
    for n in (1, 32):
        x = example_batch(model, n)
        with torch.no_grad():
            eager = bench(lambda x=x: model(x), warmup=5, repeat=30, device=device).median_ms
        graph = bench(lambda x=x: runner(x), warmup=5, repeat=30, device=device).median_ms
        out |= {f"eager_bs{n}_ms": eager, f"graph_bs{n}_ms": graph, f"speedup_bs{n}": eager / graph}
    return out


def run(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    models = _models(gpu, device)
    results: dict[str, Any] = {
        "device": str(device),
        "multi_model": asyncio.run(_multi_model(models, batch=8, rounds=20 if gpu else 5)),
    }
    del models
    fp32 = build_model("resnet50", "full" if gpu else "small", device)
    # fp32: there compute sets the pace and the copies can hide behind it (in fp16 ResNet-50 is
    # launch-bound on an H200, which leaves streams little to overlap and makes the figures noisy)
    results["overlap_fp32"] = _overlap(fp32, device, batch=32 if gpu else 16, count=20 if gpu else 8)
    results["graphs_fp32"] = _graphs(fp32, device)
    if gpu:
        results["graphs_fp16"] = _graphs(fp32.half(), device)
    return results


if __name__ == "__main__":
    cli(run, name="streams", doc=__doc__)
