"""Benchmark for lesson 07: ResNet-50 up the optimisation ladder (`labkit.ladder`), then the best
rung served through `DynamicBatcher`.

GPU: ResNet-50 224² (size "full"), batches 1, 32, 128 and 256, every rung this torch can run, each
with items/s, batch-1 latency, TFLOP/s and the share of the card's peak at its precision, and its
outputs against fp32's; the card's measured bf16 matmul ceiling beside the datasheet peak; then
the fastest rung that matches fp32, closed-loop through `DynamicBatcher` at its best batch size,
against the same forward called directly on ready batches. ``max-autotune`` compiles for minutes:
it runs only with ``LADDER_AUTOTUNE=1``.
CPU: the lesson's small ResNet-50 on the rungs a CPU has, labelled CPU, and ``torch.compile``
with and without inductor's freezing against eager (interleaved rounds).

``python bench/ladder.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli  # noqa: E402

from labkit.batching import DynamicBatcher  # noqa: E402
from labkit.device import sync  # noqa: E402
from labkit.ladder import RUNGS, RungResult, climb, fixed_shape, rung_call  # noqa: E402
from labkit.load import closed_loop  # noqa: E402
from labkit.measure import compare  # noqa: E402
from labkit.models import build_model, example_batch  # noqa: E402
from labkit.profile import profile_call  # noqa: E402
from labkit.roofline import matmul_ceiling, peak_tflops  # noqa: E402


def _row(r: RungResult) -> dict[str, Any]:
    if r.skipped:
        return {"skipped": r.skipped}
    return {"precision": r.precision, "img_s": {str(n): v for n, v in r.items_per_s.items()},
            "best_batch": r.best_batch, "best_img_s": r.best_items_per_s, "batch1_ms": r.batch1_ms,
            "tflops": r.tflops, "share_of_peak": r.share_of_peak, "max_rel_error": r.max_rel_error,
            "matches_fp32": r.matches, "first_call_s": r.first_call_s}


async def _served(rung: RungResult, one: torch.Tensor, device: torch.device,
                  seconds: float) -> dict[str, float]:
    """The rung behind DynamicBatcher at its best batch, closed loop, against the same forward
    (`fixed_shape`: padded to that batch, TF32 as the rung sets it) called directly on ready batches."""
    n = rung.best_batch
    forward = fixed_shape(rung, n)
    ready = one[None].expand(n, *one.shape).contiguous().to(device)  # (n, C, H, W): a full batch, on the device
    for _ in range(3):
        forward(ready)
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward(ready)
        done += n
    sync(device)
    direct = done / (time.perf_counter() - start)
    async with DynamicBatcher(forward, max_batch_size=n, max_wait_ms=5, max_inflight=2, max_queue_size=8 * n,
                              device=device, input_spec=None) as b:
        await closed_loop(b.submit, lambda i: one, clients=4 * n, requests=4 * n)  # first-use costs paid
        served = await closed_loop(b.submit, lambda i: one, clients=4 * n, requests=None, duration_s=seconds)
    return {"batch": n, "direct_img_s": direct, "batcher_img_s": served.throughput_rps,
            "batcher_vs_direct": served.throughput_rps / direct}


def _profiles(model: torch.nn.Module, device: torch.device, sizes: tuple[int, ...]) -> dict[str, Any]:
    """The eager fp32 forward under torch.profiler at the smallest and largest batch: operators
    and kernels per forward, host wall time against the device's busy time, the diagnosis."""
    model = model.to(device)
    out = {}
    for n in (min(sizes), max(sizes)):
        p = profile_call(model, example_batch(model, n, device=device), steps=3)
        out[f"batch{n}"] = {"wall_ms": p.wall_ms, "device_ms": p.device_ms, "kernels": p.kernels,
                            "operators": sum(p.top_level.values()) / p.steps, "diagnosis": p.diagnosis}
    return out


def _cpu_compile(model: torch.nn.Module, results: list[RungResult], sizes: tuple[int, ...]) -> dict[str, Any]:
    """torch.compile on a CPU with and without inductor's freezing, each against eager fp32 at
    each batch size (interleaved rounds, median ratio): why the CPU's compile rung freezes."""
    by_name = {r.rung.name: r for r in results}
    eager, frozen = by_name["fp32, TF32 off"], by_name["torch.compile, fp32"]
    plain = torch.compile(copy.deepcopy(model))
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for n in sizes:
            x = example_batch(model, n, device="cpu")
            plain(x)
            out[f"batch{n}"] = {
                "frozen_vs_eager": compare(rung_call(eager, x), rung_call(frozen, x), rounds=7).ratio,
                "not_frozen_vs_eager": compare(rung_call(eager, x), lambda x=x: plain(x), rounds=7).ratio}
    return out


def run(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    model = build_model("resnet50", "full" if gpu else "small", "cpu")
    rungs = [r for r in RUNGS if r.mode != "max-autotune" or os.environ.get("LADDER_AUTOTUNE") == "1"]
    sizes = (1, 32, 128, 256) if gpu else (1, 8)
    results = climb(model, lambda n: example_batch(model, n, device="cpu"), device, batch_sizes=sizes,
                    rungs=rungs, repeat=20 if gpu else 5)
    out: dict[str, Any] = {"model": f"resnet50 ({'full, 224x224' if gpu else 'small'})",
                           "rungs": {r.rung.name: _row(r) for r in results},
                           "profile": _profiles(model, device, sizes)}
    if not os.environ.get("LADDER_AUTOTUNE"):
        out["rungs"]["compile max-autotune, bf16"] = {"skipped": "minutes of compiling; LADDER_AUTOTUNE=1 runs it"}
    if not gpu:
        out["cpu_compile"] = _cpu_compile(model, results, sizes)
    ceiling = matmul_ceiling(device)
    out["matmul_ceiling"] = {"n": ceiling.n, "dtype": str(ceiling.dtype), "tflops": ceiling.tflops,
                             "datasheet_tflops": peak_tflops(torch.cuda.get_device_name(device), "bf16") if gpu else None}
    matching = [r for r in results if r.matches and r.best_items_per_s]
    if matching:
        best = max(matching, key=lambda r: r.best_items_per_s)
        out["best_rung"] = best.rung.name
        one = example_batch(model, 1, device="cpu")[0]
        out["served"] = asyncio.run(_served(best, one, device, seconds=3.0 if gpu else 1.0))
    return out


if __name__ == "__main__":
    cli(run, name="ladder", doc=__doc__)
