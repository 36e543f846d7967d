"""Benchmark for lesson 04: the largest batch under a memory cap, precisions, checkpointing.

GPU: ResNet-50 fp32 224² under a capped memory fraction (16 GiB): `find_max_batch` against the
guide's binary search in the same run (batch found, forward passes, seconds), and the guide's
steps over clean trials; the largest batch per precision and layout; what activation
checkpointing saves when training and at inference, cut as labkit cuts and as the guide does,
measured by the allocator and counted on the meta device.
CPU: the same against a simulated budget (weights + measured activations), labelled so.

``python bench/memory.py [--device auto] [--save]``; `make gpu-check` calls `run`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cli  # noqa: E402

from labkit.guide import GuideCheckpointed, guide_optimize_batch_size, guide_search  # noqa: E402
from labkit.memory import (  # noqa: E402
    checkpointed,
    compare_precisions,
    find_max_batch,
    make_trial,
    memory_cap,
    saved_for_backward_bytes,
    training_peak_bytes,
    weight_bytes,
)
from labkit.models import build_model, example_batch, sequential_layers  # noqa: E402

MIB = 2**20
CAP_BYTES = 16 * 2**30
SEGMENTS = (2, 4, 8)


def _capped_search(model, example, device: torch.device) -> dict[str, Any]:
    with memory_cap(CAP_BYTES, device) as limit:  # every search below runs against the same real limit
        ours = find_max_batch(model, example, device, budget_bytes=limit)
        t0 = time.perf_counter()
        guide_batch, guide_trials = guide_optimize_batch_size(model, tuple(example.shape), str(device), start_size=4096)
        guide_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        clean_batch, clean_log = guide_search(make_trial(model, example, device, budget_bytes=limit), 4096)
        clean_s = time.perf_counter() - t0
    return {
        "fraction": limit / torch.cuda.mem_get_info(device)[1], "budget_bytes": limit,
        "ours": {"batch": ours.batch, "trials": len(ours.trials), "seconds": ours.seconds,
                 "trial_log": [asdict(t) for t in ours.trials]},
        "guide": {"batch": guide_batch, "trials": guide_trials, "seconds": guide_s, "start_size": 4096},
        "guide_steps_clean_trials": {"batch": clean_batch, "trials": len(clean_log), "seconds": clean_s},
        "agree": ours.batch == guide_batch,
    }


def _train_peak_mib(model, x, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model(x).float().square().mean().backward()
    torch.cuda.synchronize(device)
    model.zero_grad(set_to_none=True)
    return (torch.cuda.max_memory_allocated(device) - base) / MIB


def _infer_peak_mib(model, x, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        model(x)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / MIB


def run(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    model = build_model("resnet50", "full" if gpu else "small", device)
    example = example_batch(model, 1)[0]
    out: dict[str, Any] = {"model": f"resnet50 ({'full' if gpu else 'small'}), fp32"}
    if gpu:
        out["resnet50_fp32_capped"] = _capped_search(model, example, device)
        rows = compare_precisions(model, CAP_BYTES, channels_last=(False, True))  # each search under the cap
    else:  # simulated: weights plus measured activations against a budget, no device limit
        budget = weight_bytes(model) + 64 * MIB
        ours = find_max_batch(model, example, budget_bytes=budget)
        out["resnet50_simulated"] = {"budget_bytes": budget, "batch": ours.batch, "trials": len(ours.trials),
                                     "seconds": ours.seconds}
        rows = compare_precisions(model, budget, dtypes=(torch.float32, torch.bfloat16))
    out["precisions"] = [asdict(r) for r in rows]

    x = example_batch(model, 32)
    meta = build_model("resnet50", "full" if gpu else "small", "meta")
    ck: dict[str, Any] = {
        "batch": 32,
        "saved_plain_mib": saved_for_backward_bytes(model, x) / MIB,
        "saved_plain_no_grad_mib": saved_for_backward_bytes(model, x, grad=False) / MIB,
        "train_peak_plain_counted_mib": training_peak_bytes(meta, x.to("meta")) / MIB,
    }
    if gpu:
        ck |= {"train_peak_plain_mib": _train_peak_mib(model, x, device),
               "infer_peak_plain_mib": _infer_peak_mib(model, x, device)}
    for k in SEGMENTS:
        ckpt, guide = checkpointed(model, segments=k), GuideCheckpointed(sequential_layers(model), k)
        ck[f"segments_{k}"] = {
            "blocks_per_segment": [len(s) for s in ckpt.segments],
            "saved_mib": saved_for_backward_bytes(ckpt, x) / MIB,
            "saved_no_grad_mib": saved_for_backward_bytes(ckpt, x, grad=False) / MIB,
            "train_peak_counted_mib": training_peak_bytes(checkpointed(meta, k), x.to("meta")) / MIB,
            "guide_cut_train_peak_counted_mib": training_peak_bytes(GuideCheckpointed(sequential_layers(meta), k),
                                                                    x.to("meta")) / MIB,
        }
        if gpu:
            ck[f"segments_{k}"] |= {"train_peak_mib": _train_peak_mib(ckpt, x, device),
                                    "guide_cut_train_peak_mib": _train_peak_mib(guide, x, device),
                                    "infer_peak_mib": _infer_peak_mib(ckpt, x, device)}
    out["checkpointing"] = ck
    return out


if __name__ == "__main__":
    cli(run, name="memory", doc=__doc__)
