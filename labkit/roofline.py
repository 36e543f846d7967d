"""Busy is not saturated: a throughput figure as achieved FLOP/s and as a share of the card's peak.

NVML's "GPU utilisation" is the share of time at least one kernel ran, so a card can read 100%
busy while doing a few percent of the arithmetic it could. Counting a call's FLOPs
(`torch.utils.flop_counter.FlopCounterMode`, on the meta device so nothing is computed) and
dividing achieved FLOP/s by the datasheet peak for the precision in use says how far from the
physical limit a figure is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_SOURCE", "PEAKS_TFLOPS", "MatmulCeiling", "Roofline", "flops_per_item", "matmul_ceiling", "peak_tflops",
           "precision_of", "roofline"]

PEAK_SOURCE = ("NVIDIA datasheets: H100/H200 SXM, A100 SXM 80GB, L4, T4, GeForce RTX 4090 "
               "(dense tensor-core figures, i.e. half the 'with sparsity' numbers)")

# TFLOP/s (TOPS for int8), dense. "tf32" is what float32 convolutions (and matmuls with TF32 allowed) run as on a
# CUDA card; "fp32" is the plain CUDA-core figure.
PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "int8": 1978.9},
    "H100": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "int8": 1978.9},  # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0, "int8": 624.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "int8": 242.5},
    "T4": {"fp32": 8.1, "fp16": 65.0, "int8": 130.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2},  # fp32 accumulate
}


def peak_tflops(card: str, precision: str) -> float | None:
    """The dense peak of ``card`` (a name such as "NVIDIA H200") at ``precision``; None if unknown."""
    for name, peaks in sorted(PEAKS_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in card.lower():
            return peaks.get(precision)
    return None


def precision_of(dtype: torch.dtype, device: str | torch.device) -> str:
    """The peak a model of ``dtype`` is measured against: float32 on CUDA convolves in TF32 by default."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return "tf32" if torch.device(device).type == "cuda" and tf32 else "fp32"


def flops_per_item(model: nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass per item of ``example`` (a batch), counted on the meta device."""
    meta_model = copy.deepcopy(model).to("meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta_model(example.to("meta"))
    return counter.get_total_flops() / example.shape[0]


@dataclass(frozen=True)
class Roofline:
    """A throughput figure set against the card's arithmetic limit."""

    items_per_s: float
    flops_per_item: float
    card: str
    precision: str

    @property
    def tflops(self) -> float:
        return self.items_per_s * self.flops_per_item / 1e12

    @property
    def peak(self) -> float | None:
        return peak_tflops(self.card, self.precision)

    @property
    def share_of_peak(self) -> float | None:
        return self.tflops / self.peak if self.peak else None

    def __str__(self) -> str:
        share = f" = {self.share_of_peak:.1%} of the {self.card}'s {self.precision} peak ({self.peak:,.0f})" \
            if self.share_of_peak is not None else f" ({self.card}: no {self.precision} peak on file)"
        return f"{self.tflops:,.3g} TFLOP/s{share}"


def roofline(items_per_s: float, flops_per_item: float, card: str, precision: str) -> Roofline:
    """``items_per_s`` of a model costing ``flops_per_item`` each, on ``card`` at ``precision``."""
    return Roofline(items_per_s, flops_per_item, card, precision)


@dataclass(frozen=True)
class MatmulCeiling:
    """What one large square matmul reaches on this device: the practical ceiling a model's
    throughput is measured against, beside the datasheet's peak."""

    n: int
    dtype: torch.dtype
    median_ms: float

    @property
    def tflops(self) -> float:
        return 2 * self.n**3 / (self.median_ms / 1e3) / 1e12  # n³ multiply-adds, 2 FLOPs each


def matmul_ceiling(device: str | torch.device, *, dtype: torch.dtype | None = None, n: int | None = None,
                   repeat: int = 10) -> MatmulCeiling:
    """Time an (n, n) @ (n, n) matmul, synchronised, median of ``repeat`` after warm-up (`bench`).

    Defaults: bf16 at n = 8192 on CUDA (large enough to fill an H200), float32 at n = 1024 on a CPU.
    """
    from labkit.measure import bench

    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    with torch.inference_mode():
        stats = bench(lambda: a @ b, warmup=3, repeat=repeat, device=device)
    return MatmulCeiling(n, dtype, stats.median_ms)
