"""What this machine is and what the course will do on it: ``labkit doctor``'s facts.

Their own module, so that the command line (`labkit.cli`) and the report builder
(`labkit.report`), which both use them, need not import each other.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

import labkit
from labkit.device import describe, devices, pick_device
from labkit.measure import nvml_status
from labkit.reference import recorded_runs

__all__ = ["doctor_facts", "print_doctor"]


def doctor_facts() -> dict[str, Any]:
    """Everything ``labkit doctor`` prints, as data (the report builder records it with each run)."""
    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append({
            "index": i,
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "compute_capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
        })
    nvml, nvml_detail = nvml_status(0)
    device = pick_device("auto")
    runs = recorded_runs()
    return {
        "labkit": labkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "nvml": nvml,
        "nvml_detail": nvml_detail,
        "device": str(device),
        "device_name": describe(device),
        "recorded_gpu_runs": [{"card": r.card, "date": r.date, "file": r.path.name} for r in runs],
        "plan": _plan(gpus, runs),
    }


def _plan(gpus: list[dict], runs: list) -> list[str]:
    """What the course will do here: CPU figures and recorded GPU ones, or this machine's GPUs."""
    recorded = f"{runs[-1].card}, {runs[-1].date}" if runs else None
    if not gpus:
        plan = [
            "No CUDA device: every lesson runs on the CPU. Use size='small' (the default).",
            "Figures measured here are CPU figures, labelled so.",
            f"Recorded GPU figures ({recorded}) are shown beside them." if recorded else
            "No recorded GPU figures found under bench/results/.",
            f"Multi-device lessons use CPU stand-ins: {devices(2).label}.",
        ]
    else:
        plan = [
            f"Lessons run on cuda:0 ({gpus[0]['name']}); pass size='full' for figures worth comparing.",
            "`make gpu-check` runs the GPU tests and benchmarks and records them under bench/results/.",
        ]
        if len(gpus) == 1:
            plan.append(f"Multi-GPU lessons: {devices(2).label}; scaling is modelled from this card.")
        else:
            plan.append(f"Multi-GPU lessons use {len(gpus)} GPUs and measure real scaling.")
    return plan


def print_doctor(f: dict[str, Any]) -> None:
    """The facts as ``labkit doctor`` prints them."""
    cuda = f"CUDA {f['cuda_build']}" if f["cuda_build"] else "CPU-only build"
    print(f"labkit {f['labkit']}  ·  python {f['python']}  ·  {f['platform']}")
    print(f"torch       {f['torch']} ({cuda}{', cuDNN ' + str(f['cudnn']) if f['cudnn'] else ''})")
    if f["gpus"]:
        for g in f["gpus"]:
            print(f"GPU {g['index']}       {g['name']}, {g['memory_gib']} GiB, compute capability "
                  f"{g['compute_capability']}, {g['multiprocessors']} SMs")
    else:
        print("GPU         none visible to torch")
    print(f"CPU         {f['cpu_threads']} torch threads")
    print(f"NVML        {'yes' if f['nvml'] else 'no'}: {f['nvml_detail']}")
    print(f"device      {f['device']} -> {f['device_name']}")
    for r in f["recorded_gpu_runs"]:
        print(f"recorded    {r['card']} on {r['date']} ({r['file']})")
    print("\nWhat the course will do on this machine:")
    for line in f["plan"]:
        print(f"  - {line}")
