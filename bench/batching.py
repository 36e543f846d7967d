"""Benchmark for lessons 01-02: what the batcher's machinery costs, and what it delivers on a GPU.

CPU (always): the batcher's own cost, as a new user meets it: a tiny MLP, 20,000 requests at
once, through the bare asyncio floor (one task and one future per request, no batching), the
guide's naive batcher and `DynamicBatcher`, in interleaved rounds (medians); the same with a
trivial model at batches of 32 and 64; what copying large result rows costs (`row_copy_cost`);
what one batch's trip to the worker thread and back costs (`thread_handoff`);
CPU time an idle batcher burns, ours against the guide's polling design.
GPU (when present): ResNet-50 fp32 224², batch 32, fed float32 or uint8 images, eager or through
CUDA graphs: the batcher's closed-loop throughput against the same model called
directly on ready batches, and against sequential batch 1; NVML utilisation at saturation;
p50/p99 under Poisson load at 70% of the batcher's capacity; the guide's batcher for contrast.

``python bench/batching.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli  # noqa: E402

from labkit.batching import AdaptiveBatcher, DynamicBatcher  # noqa: E402
from labkit.device import sync  # noqa: E402
from labkit.graphs import GraphRunner  # noqa: E402
from labkit.guide import GuideBatcher  # noqa: E402
from labkit.load import closed_loop, open_loop  # noqa: E402
from labkit.measure import GPUMonitor  # noqa: E402
from labkit.models import ImageBytes, build_model, example_batch  # noqa: E402


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


def _tiny_mlp() -> torch.nn.Module:
    """The model a new user tries first: small enough that the batcher's own cost shows."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)).eval()


async def batcher_cost(total: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    """Requests/s for ``total`` requests submitted at once (one task each, as ``asyncio.gather``
    makes them) through the floor, the guide's batcher and ours, serving `_tiny_mlp` at batches
    of 32; ``rounds`` interleaved rounds, medians, the collector paused while timing (`_waves`).

    The floor resolves each request's future on the next loop turn and computes nothing: what
    asyncio alone costs per request. Ours keeps every guarantee (validation, backpressure sized
    to the load, timeouts, one outcome each); the guide's keeps none of them.
    """
    loop = asyncio.get_running_loop()
    model, x = _tiny_mlp(), torch.randn(16)

    async def bare(x: torch.Tensor) -> torch.Tensor:
        future = loop.create_future()
        loop.call_soon(future.set_result, x)
        return await future

    guide = GuideBatcher(model, max_batch_size=32, max_wait_time=0.005)
    ours = DynamicBatcher(model, max_batch_size=32, max_wait_ms=5, max_queue_size=total)
    guide.start()
    await ours.start()
    runs: dict[str, list[float]] = {"floor": [], "guide": [], "ours": []}
    submits = {"floor": bare, "guide": guide.predict, "ours": ours.submit}
    try:
        for submit in submits.values():  # warm-up: threads started, first batches paid
            await _waves(submit, x, 1024, 1024)
        for _ in range(rounds):
            for name, submit in submits.items():
                runs[name].append(total / await _waves(submit, x, total, total))
    finally:
        await guide.stop()
        await ours.stop()
    rps = {name: statistics.median(v) for name, v in runs.items()}
    return {
        "requests": total, "rounds": rounds, "model": "Linear(16,32)-ReLU-Linear(32,16), batches of 32",
        "floor_rps": rps["floor"], "guide_rps": rps["guide"], "ours_rps": rps["ours"],
        "ours_vs_floor": rps["ours"] / rps["floor"], "ours_vs_guide": rps["ours"] / rps["guide"],
        "ours_us_per_request": 1e6 / rps["ours"], "floor_us_per_request": 1e6 / rps["floor"],
    }


async def thread_handoff(jobs: int = 2000) -> dict[str, float]:
    """What one batch's trip to a worker thread and back costs with nothing to compute: an empty
    job through `Workers`, its completion handed back with ``call_soon_threadsafe`` (as
    `Batcher._dispatch` and `_compute` do), median µs per trip, the loop otherwise idle.

    It is why the batcher cannot reach the bare floor on tiny CPU models while the model stays off
    the event loop: each batch pays it, shared by the batch's requests.
    """
    from labkit.batching.workers import Workers

    loop = asyncio.get_running_loop()
    workers = Workers(1, name="bench-handoff")
    trips = []
    try:
        for _ in range(jobs):
            done = loop.create_future()
            start = time.perf_counter()
            workers.put(0, lambda done=done: loop.call_soon_threadsafe(done.set_result, None))
            await done
            trips.append((time.perf_counter() - start) * 1e6)
    finally:
        workers.shutdown()
    return {"jobs": jobs, "round_trip_us_median": statistics.median(trips),
            "round_trip_us_p90": statistics.quantiles(trips, n=10)[-1]}


def row_copy_cost(rows: int = 32, reps: int = 20) -> dict[str, Any]:
    """µs to hand out a batch output's rows as views (``unbind``) and as copies that own their
    memory (``clone`` each), by batch-output size: what `engine.OWN_ROWS_FROM_BYTES` weighs."""
    out: dict[str, Any] = {}
    for kib in (1, 32, 256, 1024, 4096, 16384):
        batch = torch.randn(rows, kib * 256 // rows)  # kib KiB of float32 in all
        timings = {}
        for name, split in (("views", lambda b: list(b.unbind(0))), ("copies", lambda b: [r.clone() for r in b.unbind(0)])):
            split(batch)
            t0 = time.perf_counter()
            for _ in range(reps):
                split(batch)
            timings[name] = (time.perf_counter() - t0) / reps * 1e6
        out[f"batch_{kib}KiB"] = {"views_us": timings["views"], "copies_us": timings["copies"],
                                  "copy_us_per_row": (timings["copies"] - timings["views"]) / rows}
    return out


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


def _direct(fn, x: torch.Tensor, device: torch.device, seconds: float) -> dict[str, float]:
    """``fn`` called back to back on one ready batch already on the device: the ceiling."""
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        sync(device)
        launches = []
        for _ in range(5):  # CPU time to issue one call into an empty GPU queue
            t0 = time.perf_counter()
            fn(x)
            launches.append(time.perf_counter() - t0)
            sync(device)
        n, t0 = 0, time.perf_counter()
        with GPUMonitor(device.index or 0, interval_s=0.05) as mon:
            while time.perf_counter() - t0 < seconds:
                fn(x)
                n += len(x)
            sync(device)
        rate = n / (time.perf_counter() - t0)
    return {"img_s": rate, "util_pct": mon.summary()["util_mean_pct"], "launch_ms": sorted(launches)[2] * 1e3}


async def _through_batcher(fn, one: torch.Tensor, device: torch.device, seconds: float) -> dict[str, Any]:
    """Closed-loop throughput with 2 and 4 batches in flight, then Poisson load at 70% of the best
    of them, through DynamicBatcher (2 and 4 in flight) and AdaptiveBatcher aiming at p99 50 ms,
    each after a second of the same load, so that first-use costs are paid before measuring."""
    out: dict[str, Any] = {}
    for inflight in (2, 4):
        clients = 32 * (inflight + 2)  # enough waiting requests to fill every slot with full batches
        async with DynamicBatcher(fn, max_batch_size=32, max_wait_ms=5, max_inflight=inflight,
                                  max_queue_size=4096, device=device) as b:
            await closed_loop(b.submit, lambda i: one, clients=clients, requests=1000)
            with GPUMonitor(device.index or 0, interval_s=0.05) as mon:
                r = await closed_loop(b.submit, lambda i: one, clients=clients, requests=None, duration_s=seconds)
        out[f"inflight{inflight}"] = {"img_s": r.throughput_rps, "util_pct": mon.summary()["util_mean_pct"],
                                      "mean_batch": b.stats.summary()["mean_batch_size"],
                                      "batch_p50_ms": b.stats.summary()["batch_p50_ms"]}
    common = dict(max_batch_size=32, max_queue_size=8192, device=device)
    best = max((2, 4), key=lambda k: out[f"inflight{k}"]["img_s"])
    capacity = out[f"inflight{best}"]["img_s"]
    out |= {"best_inflight": best, "img_s": capacity, "util_pct": out[f"inflight{best}"]["util_pct"]}
    servers = {
        "dynamic_inflight2": lambda: DynamicBatcher(fn, max_wait_ms=5, max_inflight=2, **common),
        "dynamic_inflight4": lambda: DynamicBatcher(fn, max_wait_ms=5, max_inflight=4, **common),
        "adaptive_p99_50ms": lambda: AdaptiveBatcher(fn, target_p99_ms=50, max_wait_ms=20, max_inflight=4, **common),
    }
    load = dict(rate_rps=0.7 * capacity, seed=1, request_timeout_s=5.0)
    for name, make in servers.items():
        async with make() as b:
            await open_loop(b.submit, lambda i: one, duration_s=1.0, **load)  # steady state first
            r = await open_loop(b.submit, lambda i: one, duration_s=seconds, **load)
        out[f"poisson_70pct_{name}"] = {
            "offered_rps": r.offered_rps, "completed": r.completed, "failed": r.failed, "timed_out": r.timed_out,
            "p50_ms": r.latency.p50_ms, "p99_ms": r.latency.p99_ms, "max_ms": r.latency.max_ms,
            "mean_batch": b.stats.summary()["mean_batch_size"]}
    return out


async def gpu_figures(device: torch.device, seconds: float = 2.0) -> dict[str, Any]:
    """ResNet-50 (fp32 weights, 224², batch 32) fed four ways, each batcher against its own direct
    ceiling in the same run: float32 or uint8 images (normalised on the GPU by `ImageBytes`), each
    eager or through CUDA graphs (`GraphRunner`, which takes the launch cost off the CPU)."""
    torch.backends.cudnn.benchmark = False  # the batcher's varying batch sizes would re-tune mid-run
    resnet = build_model("resnet50", "full", device)
    images = ImageBytes(resnet).eval()
    sizes = (1, 2, 4, 8, 16, 24, 32)
    variants = {
        "fp32_eager": resnet,
        "uint8_eager": images,
        "fp32_graph": GraphRunner(resnet, batch_sizes=sizes),
        "uint8_graph": GraphRunner(images, batch_sizes=sizes),
    }
    # What a server does once its models are loaded: move every object alive now out of the
    # collector's reach. Without it, one full collection (~176k objects after importing torch)
    # paused the loop for 109 ms on the 2-core CPU box, and p99 under load became that pause.
    gc.collect()
    gc.freeze()
    out: dict[str, Any] = {}
    for name, fn in variants.items():
        model = images if name.startswith("uint8") else resnet
        x32 = example_batch(model, 32, device=device)
        one = example_batch(model, 1, device="cpu")[0]
        direct = _direct(fn, x32, device, seconds)
        batched = await _through_batcher(fn, one, device, seconds)
        out[name] = {"direct_bs32": direct, "batcher": batched, "batcher_vs_direct": batched["img_s"] / direct["img_s"]}

    one = example_batch(resnet, 1, device="cpu")
    with torch.no_grad():
        resnet(one.to(device)).cpu()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            resnet(one.to(device)).cpu()
            n += 1
    out["sequential_bs1_img_s"] = n / (time.perf_counter() - t0)
    for name in variants:
        out[name]["batcher_vs_sequential_bs1"] = out[name]["batcher"]["img_s"] / out["sequential_bs1_img_s"]

    guide = GuideBatcher(resnet, max_batch_size=32, max_wait_time=0.01, device=str(device))
    guide.start()
    r = await closed_loop(guide.predict, lambda i: one[0], clients=128, requests=None, duration_s=seconds)
    await guide.stop()
    out["guide_batcher_fp32_img_s"] = r.throughput_rps
    out["guide_vs_direct"] = r.throughput_rps / out["fp32_eager"]["direct_bs32"]["img_s"]
    gc.unfreeze()
    return out


async def _run(device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {
        "batcher_cost_cpu": await batcher_cost(),
        "machinery_cpu": await machinery_overhead(),
        "row_copy_cpu": row_copy_cost(),
        "thread_handoff_cpu": await thread_handoff(),
        "idle_cpu": await idle_cpu(),
    }
    if device.type == "cuda":
        results["resnet50_gpu"] = await gpu_figures(device)
    return results


def run(device: torch.device) -> dict[str, Any]:
    return asyncio.run(_run(device))


if __name__ == "__main__":
    cli(run, name="batching", doc=__doc__)
