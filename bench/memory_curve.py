"""Record how ResNet-50's inference memory grows with the batch under a capped device, for replay.

For each precision and layout: every batch 1-8, then steps of 8% until the first out-of-memory,
a bisection to the largest batch that runs, and every batch around it. Each row holds whether
the batch ran, the allocator's peak reserved and allocated bytes, and the seconds. The search in
`labkit.memory.search_max_batch` is tested on CPU against these recorded curves, so its trial
counts are those of a real allocator (block rounding, cuDNN workspaces), not of an ideal line.

``python3 bench/memory_curve.py`` on a CUDA machine writes
``bench/results/<date>-<card>-memory-curve.json``.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.device import pick_device  # noqa: E402
from labkit.models import build_model, example_batch  # noqa: E402
from labkit.reference import save_results  # noqa: E402

CAP_BYTES = 16 * 2**30
VARIANTS = {"float32": (torch.float32, False), "float32_channels_last": (torch.float32, True),
            "float16": (torch.float16, False), "bfloat16": (torch.bfloat16, False)}


def _trial(model, example: torch.Tensor, n: int, channels_last: bool) -> dict[str, Any]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            model(example.expand(n, *example.shape).contiguous(memory_format=layout))
        torch.cuda.synchronize()
        row = {"batch": n, "fits": True, "reserved": torch.cuda.max_memory_reserved(),
               "allocated": torch.cuda.max_memory_allocated()}
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        row = {"batch": n, "fits": False, "reserved": None, "allocated": None}
    row["seconds"] = time.perf_counter() - t0
    return row


def curve(model, channels_last: bool) -> list[dict[str, Any]]:
    example = example_batch(model, 1)[0]
    rows: dict[int, dict[str, Any]] = {}

    def fits(n: int) -> bool:
        if n not in rows:
            rows[n] = _trial(model, example, n, channels_last)
        return rows[n]["fits"]

    for n in range(1, 9):
        fits(n)
    n = 8
    while fits(n):
        n = max(n + 1, int(n * 1.08))
    lo, hi = max(k for k in rows if rows[k]["fits"]), n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    for k in range(max(1, lo - 12), lo + 5):
        fits(k)
    return [rows[k] for k in sorted(rows)]


def run(device: torch.device) -> dict[str, Any]:
    base = build_model("resnet50", "full", device)
    total = torch.cuda.mem_get_info(device)[1]
    torch.cuda.set_per_process_memory_fraction(CAP_BYTES / total, device)
    out: dict[str, Any] = {"model": "resnet50 224x224", "budget_bytes": CAP_BYTES, "curves": {}}
    try:
        for name, (dtype, nhwc) in VARIANTS.items():
            layout = torch.channels_last if nhwc else torch.contiguous_format
            model = base.to(dtype=dtype, memory_format=layout)
            t0 = time.perf_counter()
            rows = curve(model, nhwc)
            out["curves"][name] = {"max_batch": max(r["batch"] for r in rows if r["fits"]),
                                   "weight_bytes": sum(p.nbytes for p in model.parameters()),
                                   "seconds": time.perf_counter() - t0, "trials": rows}
            print(name, out["curves"][name]["max_batch"], len(rows), round(out["curves"][name]["seconds"], 1), flush=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    dev = pick_device("cuda")
    print("saved", save_results(run(dev), dev, source="bench/memory_curve.py", suffix="memory-curve"))
