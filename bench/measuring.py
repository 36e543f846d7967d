"""Benchmark for lesson 00: the asynchrony trap, launch overhead and a ResNet-50 batch sweep.

Run on any device: ``python bench/measuring.py [--device auto] [--save]``. `make gpu-check` calls
`run` on the GPU and records the figures with the card's name.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from labkit.measure import GPUMonitor
from labkit.models import build_model
from labkit.overhead import async_trap, launch_overhead
from labkit.sweep import batch_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cli  # noqa: E402


def run(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    size = "full" if gpu else "small"
    batch_sizes = [1, 8, 32, 128, 256] if gpu else [1, 4, 16]
    out: dict[str, Any] = {
        "async_trap": asdict(async_trap(device, 4096 if gpu else 1024)),
        "launch_overhead": asdict(launch_overhead(device)),
        "resnet50_size": size,
    }
    dtypes = [torch.float32, torch.float16] if gpu else [torch.float32]
    for dtype in dtypes:
        model = build_model("resnet50", size, device).to(dtype)
        torch.backends.cudnn.benchmark = gpu
        with GPUMonitor(device.index or 0, interval_s=0.05) as monitor:
            points = batch_sweep(model, batch_sizes, device=device, repeat=10 if gpu else 3)
        name = str(dtype).removeprefix("torch.")
        out[f"resnet50_sweep_{name}"] = [p.as_dict() for p in points]
        out[f"resnet50_monitor_{name}"] = monitor.summary()
    return out


if __name__ == "__main__":
    cli(run, name="measuring", doc=__doc__)
