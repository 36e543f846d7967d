"""Benchmark for lessons 05-06: several models at once, copy/compute overlap, CUDA graphs.

Each comparison runs in one process on the device present; the variants of the overlap and graph
comparisons are timed in turns (one of each per round), the multi-model rounds back to back:
- four models served one after another vs together by `MultiModelServer` (a stream and a thread
  each), at batch 8 and 32, eager and (GPU) as CUDA graphs, and plain calls one after another
  (no server: the baseline lesson 05 compares both servers with);
- fp32 batches from host memory: a plain loop from pageable memory (the guide), the same loop from
  pinned memory, and `StreamPipeline` from the same pageable batches (it pins through its own
  buffers; that copy is timed), double-buffered on three streams; eager and (GPU) as a graph;
- where copies are long next to the compute (GPU: labkit's tiny CNN at 64², as a graph, batch
  256): the pinned loop against `StreamPipeline` fed the same pinned batches, with the mean copy-in
  and compute times of one batch from the pipeline's timeline;
- `GraphRunner` against the eager model at batch 1 and 32.
GPU: ResNet-50 224², fp16 where the lesson says so. CPU: small models; there the streams and
graphs have nothing to overlap or replay, and the figures say so by being about 1x.

``python bench/streams.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
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
from labkit.timeline import busy_s  # noqa: E402


def _models(gpu: bool, device: torch.device, n: int = 4) -> dict[str, torch.nn.Module]:
    dtype = torch.float16 if gpu else torch.float32
    return {f"resnet50_{i}" if gpu else f"tiny_cnn_{i}": build_model("resnet50" if gpu else "tiny_cnn",
                                                                     "full" if gpu else "small", device, seed=i).to(dtype)
            for i in range(n)}


async def _multi_model(models: dict, inputs: dict, rounds: int) -> dict[str, float]:
    async with MultiModelServer(models) as server:
        for _ in range(3):  # warm-up: cuDNN, allocator, threads
            await asyncio.gather(*(server.predict(n, x) for n, x in inputs.items()))
        t0 = time.perf_counter()
        for _ in range(rounds):  # the baseline both servers are compared with: plain calls, no server
            with torch.no_grad():
                for n, x in inputs.items():
                    models[n](x.to(server.device)).cpu()
        plain_ms = (time.perf_counter() - t0) / rounds * 1e3
        t0 = time.perf_counter()
        for _ in range(rounds):
            for n, x in inputs.items():
                await server.predict(n, x)
        serial_ms = (time.perf_counter() - t0) / rounds * 1e3
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(server.predict(n, x) for n, x in inputs.items()))
        together_ms = (time.perf_counter() - t0) / rounds * 1e3
    return {"models": len(models), "plain_calls_ms": plain_ms, "one_after_another_ms": serial_ms,
            "together_ms": together_ms, "speedup": serial_ms / together_ms, "speedup_vs_plain": plain_ms / together_ms}


def _interleaved(runs: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median ms of each run, timed in turns (one of each per round), so that a drift of the
    host's speed during the measurement (frequent on shared GPU machines) hits them all alike."""
    for fn in runs.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(bench(fn, warmup=0, repeat=1, device=device).median_ms)
    return {name: statistics.median(v) for name, v in samples.items()}


def _overlap(model, like: torch.nn.Module, device: torch.device, batch: int, count: int) -> dict[str, float]:
    """``model`` (a module or a `GraphRunner`) over ``count`` host batches shaped for ``like``."""
    pageable = [example_batch(like, batch, device="cpu", seed=i) for i in range(count)]
    pinned = [x.pin_memory() for x in pageable] if device.type == "cuda" else pageable
    pipe = StreamPipeline(model, buffers=2, device=device)
    ms = _interleaved({
        "pageable_loop": lambda: simple_loop(model, pageable, device),
        "pinned_loop": lambda: simple_loop(model, pinned, device),
        "stream_pipeline": lambda: pipe.run(pageable),
    }, rounds=9, device=device)
    out: dict[str, float] = {"batch": batch, "batches": count}
    out |= {f"{name}_img_s": batch * count / (t / 1e3) for name, t in ms.items()}
    out["pinned_vs_pageable"] = out["pinned_loop_img_s"] / out["pageable_loop_img_s"]
    out["pipeline_vs_pageable"] = out["stream_pipeline_img_s"] / out["pageable_loop_img_s"]
    return out


def _long_copies(device: torch.device, batch: int = 256, count: int = 20) -> dict[str, float]:
    """A small model on large batches, so a copy in is not short next to the compute; both runs
    are fed the same pinned batches, so only the overlap differs."""
    model = build_model("tiny_cnn", "full", device)
    runner = GraphRunner(model, batch_sizes=(batch,))
    pinned = [example_batch(model, batch, device="cpu", seed=i).pin_memory() for i in range(count)]
    pipe = StreamPipeline(runner, buffers=2, device=device)
    ms = _interleaved({"pinned_loop": lambda: simple_loop(runner, pinned, device),
                       "stream_pipeline": lambda: pipe.run(pinned)}, rounds=9, device=device)
    pipe.run(pinned, record=True)
    mean_ms = {k: 1e3 * busy_s(pipe.timeline, k) / count for k in (0, 1)}  # one event per batch and stage
    return {"model": "tiny_cnn full (64², width 64), graph", "batch": batch, "batches": count,
            "pinned_loop_img_s": batch * count / (ms["pinned_loop"] / 1e3),
            "stream_pipeline_img_s": batch * count / (ms["stream_pipeline"] / 1e3),
            "pipeline_vs_pinned": ms["pinned_loop"] / ms["stream_pipeline"],
            "copy_in_ms": mean_ms[0], "compute_ms": mean_ms[1]}


def _graphs(model, device: torch.device) -> dict[str, float]:
    runner = GraphRunner(model, batch_sizes=(1, 32))
    out: dict[str, float] = {"graphed": runner.graphed}
    for n in (1, 32):
        x = example_batch(model, n)
        with torch.no_grad():
            ms = _interleaved({"eager": lambda x=x: model(x), "graph": lambda x=x: runner(x)}, rounds=30, device=device)
        out |= {f"eager_bs{n}_ms": ms["eager"], f"graph_bs{n}_ms": ms["graph"], f"speedup_bs{n}": ms["eager"] / ms["graph"]}
    return out


def run(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    results: dict[str, Any] = {"device": str(device)}
    models = _models(gpu, device)
    for batch in (8, 32):  # small batches leave the GPU room to run several models at once
        inputs = {name: example_batch(m, batch, device="cpu") for name, m in models.items()}
        results[f"multi_model_eager_bs{batch}"] = {"batch": batch} | asyncio.run(_multi_model(models, inputs, rounds=20 if gpu else 5))
        if gpu:  # eager ResNet-50 is launch-bound at these sizes; graphs free the CPU
            graphed = {name: GraphRunner(m, batch_sizes=(batch,)) for name, m in models.items()}
            results[f"multi_model_graphs_bs{batch}"] = {"batch": batch} | asyncio.run(_multi_model(graphed, inputs, rounds=20))
            del graphed
    del models
    fp32 = build_model("resnet50", "full" if gpu else "small", device)
    batch, count = (32, 20) if gpu else (16, 8)
    # fp32: compute sets the pace and the copies can hide behind it. Eager, the CPU issuing
    # ~170 kernels per batch is nearly as slow as the GPU; as a graph, the CPU is free to stage
    # the next batch, and the overlap shows whole.
    results["overlap_fp32_eager"] = _overlap(fp32, fp32, device, batch, count)
    if gpu:
        results["overlap_fp32_graphs"] = _overlap(GraphRunner(fp32, batch_sizes=(batch,)), fp32, device, batch, count)
        results["overlap_long_copies"] = _long_copies(device)
    results["graphs_fp32"] = _graphs(fp32, device)
    if gpu:
        results["graphs_fp16"] = _graphs(fp32.half(), device)
    return results


if __name__ == "__main__":
    cli(run, name="streams", doc=__doc__)
