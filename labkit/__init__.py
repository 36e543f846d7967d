"""labkit: the techniques of GPU Inference Lab, implemented fully and measured honestly.

Importing labkit needs only torch, numpy and psutil: notebooks' extras (ipywidgets, papermill,
matplotlib) are imported where they are used, so the GPU machine's plain python3 can run it.
The names below are loaded on first use, so tools that need no torch (`labkit assign`, the
grader's per-question processes) start in a fraction of a second.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["GPUMonitor", "LatencyStats", "Timer", "bench", "claim", "devices", "pick_device", "record", "sync"]

_HOME = {"devices": "labkit.device", "pick_device": "labkit.device", "sync": "labkit.device",
         "GPUMonitor": "labkit.measure", "LatencyStats": "labkit.measure", "Timer": "labkit.measure",
         "bench": "labkit.measure", "record": "labkit.recording",
         "claim": "labkit.claims"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
