"""Benchmark for lesson 03: pipeline vs sequential model parallelism, data-parallel efficiency.

Measured on the devices present: several GPUs, one GPU used twice, or CPU stand-ins (the saved
figures carry the devices' label saying which). ``python bench/parallel.py [--device auto] [--save]``;
`make gpu-check` calls `run`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from labkit.device import devices
from labkit.measure import bench
from labkit.models import build_model, example_batch, sequential_layers
from labkit.parallel import DataParallel, PipelineParallel, scaling_efficiency, split_stages

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cli  # noqa: E402


def run(device: torch.device, n: int = 2) -> dict[str, Any]:
    gpu = device.type == "cuda"
    devs = devices(n, "cuda" if gpu else "cpu")
    size, batch, micro = ("full", 128, 16) if gpu else ("small", 32, 4)
    threads = torch.get_num_threads()
    if not gpu:  # one core per CPU stand-in, so two stand-ins do not fight over the same cores
        torch.set_num_threads(1)
    try:
        model = build_model("resnet50", size, devs[0])
        x = example_batch(model, batch, device="cpu")

        def timed(fn) -> float:
            return bench(fn, warmup=2, repeat=5 if gpu else 3, device=devs[0]).median_ms

        with torch.no_grad():
            single_ms = timed(lambda: model(x.to(devs[0])).cpu())
        with DataParallel(model, devs) as dp:
            dp_ms = timed(lambda: dp(x))
        stages = split_stages(sequential_layers(model), n)
        pp = PipelineParallel(stages, devs, micro_batch_size=micro)
        sequential_ms = timed(lambda: pp.run_sequential(x))
        pipeline_ms = timed(lambda: pp(x))
        bubble = pp.bubble
        # Eager stages at small micro-batches are launch-bound, and launching holds the GIL: if
        # that is what slows the pipeline, its ratio to sequential grows with the micro-batch.
        by_micro = {}
        for m in (micro, 4 * micro):
            p = PipelineParallel(stages, devs, micro_batch_size=m)
            by_micro[str(m)] = timed(lambda p=p: p.run_sequential(x)) / timed(lambda p=p: p(x))
    finally:
        torch.set_num_threads(threads)
    return {
        "devices": devs.label,
        "distinct_devices": devs.distinct,
        "model": f"resnet50 ({size})",
        "batch": batch,
        "micro_batch": micro,
        "single_device_img_s": batch / single_ms * 1e3,
        "data_parallel_img_s": batch / dp_ms * 1e3,
        "data_parallel_efficiency": scaling_efficiency(batch / dp_ms, batch / single_ms, n),
        "sequential_model_parallel_ms": sequential_ms,
        "pipeline_ms": pipeline_ms,
        "pipeline_vs_sequential": sequential_ms / pipeline_ms,
        "pipeline_bubble": bubble,
        "pipeline_vs_sequential_by_micro_batch": by_micro,
    }


if __name__ == "__main__":
    cli(run, name="parallel", doc=__doc__)
