"""labkit: the techniques of GPU Inference Lab, implemented fully and measured honestly.

Importing labkit needs only torch, numpy and psutil: notebooks' extras (ipywidgets, papermill,
matplotlib) are imported where they are used, so the GPU machine's plain python3 can run it.
"""

from labkit.device import devices, pick_device, sync
from labkit.measure import GPUMonitor, LatencyStats, Timer, bench

__version__ = "0.1.0"
__all__ = ["GPUMonitor", "LatencyStats", "Timer", "bench", "devices", "pick_device", "sync"]
