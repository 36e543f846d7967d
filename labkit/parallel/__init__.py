"""Inference over several devices: data, model and pipeline parallel; torchrun for many machines.

Every class takes any list of devices: distinct GPUs, one GPU named several times, or the CPU
stand-ins of `labkit.device.devices(n)`, so the code paths run (and are tested) anywhere.
"""

from labkit.parallel.data import DataParallel, scaling_efficiency, split_sizes
from labkit.parallel.model import ModelParallel, balanced_placement
from labkit.parallel.pipeline import PipelineParallel, split_stages

__all__ = [
    "DataParallel",
    "ModelParallel",
    "PipelineParallel",
    "balanced_placement",
    "scaling_efficiency",
    "split_sizes",
    "split_stages",
]
