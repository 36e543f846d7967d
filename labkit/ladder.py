"""The optimisation ladder: one model through named rungs, each measured the same way.

A rung is a recipe (`Rung`): precision (fp32, TF32, bf16 or fp16, by autocast or by casting the
weights), memory layout, and how the forward runs (eager, CUDA graphs, `torch.compile` in one of
its modes). Each rung builds on the one before, as one climbs it on a real card. For every rung:
items/s at each batch size tried and the best of them, latency at batch 1, TFLOP/s and the share
of the card's peak for the precision used (`labkit.roofline`), and whether the outputs still match
fp32's within the rung's tolerance. A rung this device or this torch cannot run is skipped with
the reason, never faked.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from labkit.device import sync
from labkit.graphs import GraphRunner
from labkit.measure import bench
from labkit.reference import card_name
from labkit.roofline import flops_per_item, roofline

__all__ = ["Rung", "RungResult", "RUNGS", "TOLERANCE", "bench_rung", "climb", "cpu_has_bf16", "fixed_shape", "prepare_rung", "rung_call", "run_rung"]

# Largest |output - fp32 output| / largest |fp32 output| a rung may reach and still "match": fp32
# and TF32 keep about 3 and 10 bits of mantissa beyond what these models need; half precisions
# round each layer to 8 (bf16) or 11 (fp16) bits, and errors compound over ResNet-50's 53 layers.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2, "fp16": 2e-2}


@dataclass(frozen=True)
class Rung:
    name: str
    precision: str = "fp32"  # fp32 | tf32 (fp32 with TF32 allowed: fp32 on a CPU) | bf16 | fp16
    cast: bool = False  # half precision by casting the weights and inputs (else autocast)
    channels_last: bool = False
    mode: str = "eager"  # eager | graphs | compile | reduce-overhead | max-autotune
    freeze: bool = False  # compile with inductor's freezing: weights folded in as constants (inference only)
    cuda_only: str = ""  # why the rung means nothing without a CUDA device ("": it runs anywhere)

    def precision_on(self, device: torch.device) -> str:
        return "fp32" if self.precision == "tf32" and device.type != "cuda" else self.precision

    def unavailable(self, device: torch.device, example: torch.Tensor) -> str | None:
        """Why this rung cannot run here (None: it can)."""
        if self.cuda_only and device.type != "cuda":
            return self.cuda_only
        if self.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16"
        if self.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            return ("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 would be emulated, "
                    "several times slower than fp32")
        if self.channels_last and example.dim() != 4:
            return "channels_last is a layout of image batches (N, C, H, W)"
        if self.mode not in ("eager", "graphs") and not hasattr(torch, "compile"):
            return f"torch {torch.__version__} has no torch.compile"
        return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles), as oneDNN needs."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# The climb, each rung keeping what the ones before it bought.
RUNGS: tuple[Rung, ...] = (
    Rung("fp32, TF32 off"),
    Rung("TF32", "tf32", cuda_only="TF32 is a mode of NVIDIA tensor cores"),
    Rung("channels_last", "tf32", channels_last=True),
    Rung("bf16 autocast", "bf16", channels_last=True),
    Rung("bf16 weights", "bf16", cast=True, channels_last=True),
    Rung("fp16 weights", "fp16", cast=True, channels_last=True,
         cuda_only="fp16 matmuls and convolutions are a GPU's; a CPU emulates them slowly"),
    Rung("CUDA graphs, bf16", "bf16", cast=True, channels_last=True, mode="graphs", cuda_only="CUDA graphs need a CUDA device"),
    # A CPU's compile rung: fp32 in the default layout, with freezing, which folds the batch norms
    # into the convolutions and pre-packs their weights for oneDNN; without it, compiling
    # ResNet-50 gained nothing on the CI CPU (bench/results/2026-12-03-cpu-ladder.json).
    Rung("torch.compile, fp32", "tf32", mode="compile", freeze=True),
    Rung("torch.compile, bf16", "bf16", cast=True, channels_last=True, mode="compile"),
    Rung("compile reduce-overhead, bf16", "bf16", cast=True, channels_last=True, mode="reduce-overhead",
         cuda_only="mode='reduce-overhead' is torch.compile with CUDA graphs"),
    Rung("compile max-autotune, bf16", "bf16", cast=True, channels_last=True, mode="max-autotune",
         cuda_only="mode='max-autotune' tunes GPU kernels (minutes of compiling)"),
)


@dataclass
class RungResult:
    rung: Rung
    skipped: str | None = None  # why it did not run
    items_per_s: dict[int, float] = field(default_factory=dict)  # batch size -> items/s
    batch1_ms: float | None = None
    max_rel_error: float | None = None  # against the fp32 outputs, on the same inputs
    first_call_s: float | None = None  # what compiling or capturing cost before the first result
    tflops: float | None = None
    share_of_peak: float | None = None  # of the card's datasheet peak at this precision (None on a CPU)

    @property
    def best_batch(self) -> int | None:
        return max(self.items_per_s, key=self.items_per_s.get) if self.items_per_s else None

    @property
    def best_items_per_s(self) -> float | None:
        return self.items_per_s[self.best_batch] if self.items_per_s else None

    precision: str = "fp32"  # the rung's precision on the device it ran on
    # the rung's prepared forward and input conversion, kept so that rungs can be compared again
    # (interleaved, `labkit.measure.compare`) or served without compiling twice
    forward: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    to_input: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def matches(self) -> bool | None:
        """Outputs within `TOLERANCE` of fp32's (None when skipped)."""
        return None if self.max_rel_error is None else self.max_rel_error <= TOLERANCE[self.precision]


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def prepare_rung(rung: Rung, model: nn.Module, device: torch.device, batch_sizes: Sequence[int],
              sample: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(forward, to_input): the rung's forward and how it wants a float32 batch converted."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rung.precision, torch.float32)
    layout = torch.channels_last if rung.channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device).eval().to(memory_format=layout)
    if rung.cast:
        model = model.to(dtype)
    as_input = dtype if rung.cast else sample.dtype

    def to_input(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, dtype=as_input if x.is_floating_point() else x.dtype)
        return x.contiguous(memory_format=layout) if x.dim() == 4 else x

    if rung.mode == "graphs":
        forward: Callable = GraphRunner(model, batch_sizes, sample=to_input(sample[None])[0])
    elif rung.mode == "eager":
        forward = model
    else:
        forward = torch.compile(model, mode=None if rung.mode == "compile" else rung.mode)
        if rung.freeze:  # inductor reads the flag when it compiles: at a call that meets a new shape
            compiled = forward

            def forward(x: torch.Tensor) -> torch.Tensor:
                with torch._inductor.config.patch(freezing=True):
                    return compiled(x)
    if dtype != torch.float32 and not rung.cast:  # autocast: the weights stay fp32
        eager = forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype):
                return eager(x)

    return forward, to_input


def run_rung(rung: Rung, model: nn.Module, batches: dict[int, torch.Tensor], reference: torch.Tensor,
             device: torch.device, *, repeat: int = 10) -> RungResult:
    """One rung on ``batches`` (batch size -> a float32 batch; batch 1 included), against
    ``reference``: the fp32 outputs for the largest batch."""
    sample = batches[max(batches)]
    why = rung.unavailable(device, sample)
    if why is not None:
        return RungResult(rung, skipped=why)
    result = RungResult(rung, precision=rung.precision_on(device))
    with _tf32(rung.precision != "fp32"), torch.inference_mode():
        forward, to_input = prepare_rung(rung, model, device, sorted(batches), sample)
        result.forward, result.to_input = forward, to_input
        largest = to_input(sample)
        start = time.perf_counter()
        out = forward(largest)
        sync(device)
        result.first_call_s = time.perf_counter() - start
        result.max_rel_error = float((out.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        for n, batch in sorted(batches.items()):
            result.items_per_s[n] = bench_rung(result, batch, device, repeat=repeat)
            if n == 1:
                result.batch1_ms = 1e3 / result.items_per_s[n]
    return result


def rung_call(result: RungResult, batch: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One call of a rung that ran (its kept forward) on a float32 ``batch``, converted once, run
    as the climb ran it: under inference mode, TF32 as the rung sets it (a compiled rung called
    otherwise would compile again, for seconds: its guards include both)."""
    if result.forward is None or result.to_input is None:
        raise ValueError(f"rung {result.rung.name!r} did not run here ({result.skipped or 'no forward kept'})")
    forward, x, tf32 = result.forward, result.to_input(batch), result.rung.precision != "fp32"

    def call() -> torch.Tensor:
        with _tf32(tf32), torch.inference_mode():
            return forward(x)

    return call


def bench_rung(result: RungResult, batch: torch.Tensor, device: str | torch.device, *, repeat: int = 10) -> float:
    """Items/s of a rung that ran on a float32 ``batch``: median of ``repeat`` timed calls after
    warm-up, the device synchronised."""
    stats = bench(rung_call(result, batch), warmup=3, repeat=repeat, device=torch.device(device))
    return len(batch) / (stats.median_ms / 1e3)


def climb(model: nn.Module, example: Callable[[int], torch.Tensor], device: str | torch.device, *,
          batch_sizes: Sequence[int] = (1, 8, 32), rungs: Sequence[Rung] = RUNGS, repeat: int = 10) -> list[RungResult]:
    """Every rung in turn on the same inputs (``example(n)``: a float32 batch of ``n``), with the
    FLOPs of one item counted once (`flops_per_item`) for TFLOP/s and the share of the peak."""
    device = torch.device(device)
    batches = {n: example(n) for n in sorted(set(batch_sizes) | {1})}
    model = copy.deepcopy(model).to(device).eval()
    with _tf32(False), torch.inference_mode():
        reference = model(batches[max(batches)].to(device)).float()
    flops = flops_per_item(model, batches[1].to(device))
    card = card_name(device)
    results = []
    for rung in rungs:
        result = run_rung(rung, model, batches, reference, device, repeat=repeat)
        if result.best_items_per_s:
            line: Any = roofline(result.best_items_per_s, flops, card, result.precision)
            result.tflops, result.share_of_peak = line.tflops, line.share_of_peak
        results.append(result)
    return results


def fixed_shape(result: RungResult, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rung's forward for a server: every batch of up to ``n`` items padded to ``n``, so that
    a compiled rung meets the one shape it was compiled for (a new shape compiles again, for
    seconds; a batcher's batches vary), run under inference mode as it was compiled, and only
    the real rows returned, as ordinary tensors a caller may modify."""
    if result.forward is None or result.to_input is None:
        raise ValueError(f"rung {result.rung.name!r} did not run here ({result.skipped or 'no forward kept'})")
    forward, to_input = result.forward, result.to_input

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = len(x)
        if rows > n:
            raise ValueError(f"a batch of {rows} items; this forward takes at most {n}")
        if rows < n:
            x = torch.cat([x, x.new_zeros((n - rows, *x.shape[1:]))])  # (n, ...): pad rows, computed and dropped
        x = to_input(x)  # after padding: the layout and dtype the rung was compiled for
        with _tf32(result.rung.precision != "fp32"), torch.inference_mode():
            out = forward(x)
        return out[:rows].clone()  # outside inference mode: an ordinary tensor

    return run
