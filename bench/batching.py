"""Benchmark for lessons 01-02: what the batcher's machinery costs, and what it delivers on a GPU.

CPU (always): requests/s and µs per request through `DynamicBatcher` with a trivial model,
beside the bare asyncio floor (one task and one future per request, resolved at once) measured
in the same run; CPU time an idle batcher burns, ours against the guide's polling design.
GPU (when present): ResNet-50 fp32 224², batch 32: the batcher's closed-loop throughput against
the model called directly on ready batches and against sequential batch 1, NVML utilisation at
saturation, and p50/p99 under Poisson load at 70% of the batcher's capacity.

``python bench/batching.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import GuideBatcher  # noqa: E402
from common import cli  # noqa: E402

from labkit.batching import DynamicBatcher  # noqa: E402
from labkit.device import sync  # noqa: E402
from labkit.load import closed_loop, open_loop  # noqa: E402
from labkit.measure import GPUMonitor  # noqa: E402
from labkit.models import build_model, example_batch  # noqa: E402


async def _waves(submit, x: torch.Tensor, total: int, wave: int) -> float:
    """Seconds to push ``total`` requests through ``submit`` in concurrent waves of ``wave``.

    The garbage collector is paused while timing, as `timeit` does: its pauses land on whichever
    run happens to cross a threshold and would make the comparison a lottery.
    """
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(total // wave):
            await asyncio.gather(*(submit(x) for _ in range(wave)))
        return time.perf_counter() - t0
    finally:
        gc.enable()


async def machinery_overhead(total: int = 20_000, wave: int = 256, rounds: int = 5) -> dict[str, Any]:
    """Best of ``rounds`` alternating runs of the floor and of the batcher (batches of 32 and 64)."""
    loop = asyncio.get_running_loop()

    async def bare(x: torch.Tensor) -> torch.Tensor:
        future = loop.create_future()
        loop.call_soon(future.set_result, x)
        return await future

    x = torch.zeros(16)
    out: dict[str, Any] = {"requests": total, "wave": wave}
    floor_s = float("inf")
    for batch in (32, 64):
        batcher_s = float("inf")
        async with DynamicBatcher(lambda b: b, max_batch_size=batch, max_wait_ms=1, max_queue_size=wave) as b:
            await _waves(b.submit, x, 2 * wave, wave)  # warm-up
            for _ in range(rounds):
                floor_s = min(floor_s, await _waves(bare, x, total, wave))
                batcher_s = min(batcher_s, await _waves(b.submit, x, total, wave))
        out[f"batch{batch}"] = {
            "batcher_rps": total / batcher_s,
            "batcher_us_per_request": batcher_s / total * 1e6,
        }
    out["floor_rps"] = total / floor_s
    out["floor_us_per_request"] = floor_s / total * 1e6
    for batch in (32, 64):
        out[f"batch{batch}"]["vs_floor"] = out[f"batch{batch}"]["batcher_rps"] / out["floor_rps"]
    return out


async def idle_cpu(seconds: float = 1.0) -> dict[str, float]:
    """CPU seconds per wall second spent by a started, idle batcher: ours and the guide's."""

    async def burn(start, stop) -> float:
        await start()
        await asyncio.sleep(0.05)
        t0 = time.process_time()
        await asyncio.sleep(seconds)
        used = time.process_time() - t0
        await stop()
        return used / seconds

    ours = DynamicBatcher(lambda b: b, max_batch_size=32, max_wait_ms=5)
    guide = GuideBatcher(lambda b: b)

    async def guide_start() -> None:
        guide.start()

    return {
        "ours_cpu_s_per_s": await burn(ours.start, ours.stop),
        "guide_cpu_s_per_s": await burn(guide_start, guide.stop),
    }


async def gpu_figures(device: torch.device, seconds: float = 4.0) -> dict[str, Any]:
    torch.backends.cudnn.benchmark = True
    model = build_model("resnet50", "full", device)
    x32 = example_batch(model, 32)
    one = example_batch(model, 1, device="cpu")[0]
    out: dict[str, Any] = {}

    with torch.inference_mode():
        for _ in range(10):
            model(x32)
        sync(device)
        n, t0 = 0, time.perf_counter()
        with GPUMonitor(device.index or 0, interval_s=0.05) as mon:
            while time.perf_counter() - t0 < seconds:
                model(x32)
                n += 32
            sync(device)
        out["direct_bs32_img_s"] = n / (time.perf_counter() - t0)
        out["direct_bs32_util_pct"] = mon.summary()["util_mean_pct"]

        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            model(one[None].to(device)).cpu()
            n += 1
        out["sequential_bs1_img_s"] = n / (time.perf_counter() - t0)

    for inflight in (2, 3, 4):
        async with DynamicBatcher(model, max_batch_size=32, max_wait_ms=5, max_inflight=inflight, max_queue_size=4096) as b:
            await closed_loop(b.submit, lambda i: one, clients=32 * (inflight + 2), requests=2000)
            with GPUMonitor(device.index or 0, interval_s=0.05) as mon:
                r = await closed_loop(b.submit, lambda i: one, clients=32 * (inflight + 2), requests=None, duration_s=seconds)
        out[f"batcher_inflight{inflight}_img_s"] = r.throughput_rps
        out[f"batcher_inflight{inflight}_util_pct"] = mon.summary()["util_mean_pct"]
    best = max((k for k in out if k.startswith("batcher_inflight") and k.endswith("img_s")), key=out.get)
    capacity = out[best]
    out["batcher_best"] = best
    out["batcher_vs_direct"] = capacity / out["direct_bs32_img_s"]
    out["batcher_vs_sequential"] = capacity / out["sequential_bs1_img_s"]

    inflight = int(best.removeprefix("batcher_inflight").removesuffix("_img_s"))
    async with DynamicBatcher(model, max_batch_size=32, max_wait_ms=5, max_inflight=inflight, max_queue_size=8192) as b:
        r = await open_loop(b.submit, lambda i: one, rate_rps=0.7 * capacity, duration_s=seconds, seed=1)
    out["poisson_70pct"] = {"offered_rps": r.offered_rps, "completed": r.completed, "p50_ms": r.latency.p50_ms,
                            "p99_ms": r.latency.p99_ms, "max_ms": r.latency.max_ms, "failed": r.failed,
                            "timed_out": r.timed_out}

    guide = GuideBatcher(model, max_batch_size=32, max_wait_time=0.01, device=str(device))
    guide.start()
    r = await closed_loop(guide.predict, lambda i: one, clients=128, requests=None, duration_s=seconds)
    await guide.stop()
    out["guide_batcher_img_s"] = r.throughput_rps
    return out


async def _run(device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {"machinery_cpu": await machinery_overhead(), "idle_cpu": await idle_cpu()}
    if device.type == "cuda":
        results["resnet50_fp32_gpu"] = await gpu_figures(device)
    return results


def run(device: torch.device) -> dict[str, Any]:
    return asyncio.run(_run(device))


if __name__ == "__main__":
    cli(run, name="batching", doc=__doc__)
