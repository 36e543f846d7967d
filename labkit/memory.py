"""Where inference memory goes, and the largest batch that fits, found in a handful of trials.

The guide binary-searches the batch size from an arbitrary start, one forward pass per step
(12 trials on an H200 for ResNet-50). Memory at inference grows almost linearly with the batch
(weights are fixed, activations scale with it), so two probes predict the answer, and each
further trial refits the line where it is measured, until n fits and n + 1 provably does not.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from labkit.models import example_batch, sequential_layers

__all__ = [
    "MemoryStats",
    "memory_stats",
    "LayerMemory",
    "activation_memory",
    "weight_bytes",
    "saved_for_backward_bytes",
    "checkpointed",
    "Trial",
    "MaxBatch",
    "search_max_batch",
    "find_max_batch",
    "PrecisionRow",
    "compare_precisions",
]


@dataclass(frozen=True)
class MemoryStats:
    """Bytes. CUDA: the caching allocator's view (allocated, reserved, peak) and the device's
    (free, total from ``cudaMemGetInfo``). CPU: the process's resident memory as allocated and
    peak, the machine's available and total memory as free and total; reserved is 0."""

    device: str
    allocated_bytes: int
    reserved_bytes: int
    peak_bytes: int
    free_bytes: int
    total_bytes: int


def memory_stats(device: str | torch.device = "cpu") -> MemoryStats:
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return MemoryStats(str(device), torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device),
                           torch.cuda.max_memory_allocated(device), free, total)
    info = psutil.Process().memory_info()
    vm = psutil.virtual_memory()
    peak = max(info.rss, getattr(info, "peak_wset", 0) or _peak_rss_bytes() or 0)
    return MemoryStats("cpu", info.rss, 0, peak, vm.available, vm.total)


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _nbytes(out: object) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_nbytes(o) for o in out.values())
    return 0


def weight_bytes(model: nn.Module) -> int:
    return sum(_nbytes(p) for p in model.parameters()) + sum(_nbytes(b) for b in model.buffers())


@dataclass(frozen=True)
class LayerMemory:
    name: str
    output_bytes: int


def activation_memory(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerMemory], int]:
    """Output bytes of every leaf layer for the batch ``example``, and the peak inference holds.

    Under ``no_grad`` a layer's input can be freed once its output exists, so the peak is the
    largest input + output pair along the way (or the input itself), not the sum of all outputs:
    that sum is roughly what training keeps for the backward pass.
    """
    names = {m: n for n, m in model.named_modules() if not list(m.children())}
    layers: list[LayerMemory] = []
    peak = _nbytes(example)

    def hook(module: nn.Module, inputs: tuple, out: object) -> None:
        nonlocal peak
        layers.append(LayerMemory(names[module], _nbytes(out)))
        peak = max(peak, _nbytes(inputs) + _nbytes(out))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return layers, peak


def saved_for_backward_bytes(model: nn.Module, example: torch.Tensor, *, grad: bool = True) -> int:
    """Bytes autograd keeps from one forward pass for a later backward, counted as it packs them.

    This is the memory activation checkpointing trades for recomputation. Under ``grad=False``
    (``no_grad``, as in inference) nothing is kept, with or without checkpointing.
    """
    saved: dict[int, int] = {}  # by storage, so a tensor saved twice counts once

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = example.detach().requires_grad_(grad and example.is_floating_point())
    with torch.set_grad_enabled(grad), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in saved.items() if ptr not in params)


class Checkpointed(nn.Module):
    """``model``'s layers in ``segments`` segments; only segment boundaries are kept for backward."""

    def __init__(self, model: nn.Module, segments: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*sequential_layers(model))
        if not 1 <= segments <= len(self.layers):
            raise ValueError(f"segments must be between 1 and {len(self.layers)} (the model's layers), got {segments}")
        self.segments = segments
        self.input_spec = getattr(model, "input_spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # nothing would be saved anyway: plain forward
            return self.layers(x)
        return checkpoint_sequential(self.layers, self.segments, x, use_reentrant=False)


def checkpointed(model: nn.Module, segments: int = 4) -> Checkpointed:
    """Activation checkpointing over `labkit.models.sequential_layers`: it cuts what a forward
    keeps for backward (fine-tuning, training) and saves **nothing** at inference."""
    return Checkpointed(model, segments)


# -- the largest batch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    batch: int
    fits: bool
    peak_bytes: int | None  # None when the trial ran out of memory
    seconds: float


@dataclass
class MaxBatch:
    """The largest batch that fits, every trial that found it, and against what budget."""

    batch: int
    trials: list[Trial] = field(default_factory=list)
    budget_bytes: int | None = None
    simulated: bool = False  # True: a CPU run against budget_bytes, not a real device's memory

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)


def search_max_batch(trial: Callable[[int], Trial], budget_bytes: int, *, limit: int = 1 << 16,
                     probes: Sequence[int] = (1, 2)) -> MaxBatch:
    """The largest n ≤ ``limit`` with ``trial(n).fits``, assuming fitting is monotone in n.

    Each step fits peak(n) = fixed + slope·n through the measured trials nearest the boundary
    (the largest that fitted and the smallest that did not, or the two largest that fitted) and
    tries the batch where the line meets the budget, kept inside the bracket still open. The
    first prediction rests on the tiny probes, where fixed costs and allocator rounding weigh
    most, so it is scouted at half size first. Where the line is contradicted (it points past a
    batch that failed) or a step fails to halve a closed bracket, the next step bisects. With a
    linear peak this takes the probes and three trials: the scout, the maximum, and the next
    size, which proves it is the maximum. An out-of-memory failure has no peak to refit with, so
    a ``budget_bytes`` a little under the device's limit makes the search shorter.
    """
    result = MaxBatch(0, budget_bytes=budget_bytes)
    peaks: dict[int, int] = {}
    lo, hi = 0, limit + 1  # lo fits (0: nothing yet); hi does not (limit + 1: nothing failed yet)

    def attempt(n: int) -> None:
        nonlocal lo, hi
        t = trial(n)
        result.trials.append(t)
        if t.peak_bytes is not None:
            peaks[n] = t.peak_bytes
        if t.fits:
            lo = max(lo, n)
        else:
            hi = min(hi, n)

    def predicted() -> int | None:
        fitted = sorted(n for n in peaks if n <= lo)
        over = [n for n in sorted(peaks) if n >= hi][:1]
        n1, n2 = (fitted[-1], over[0]) if over else fitted[-2:]
        slope = (peaks[n2] - peaks[n1]) / (n2 - n1)
        return None if slope <= 0 else math.floor(n1 + (budget_bytes - peaks[n1]) / slope)

    for n in probes:
        if n < hi:
            attempt(n)
    scouted = bisect_next = False
    while hi - lo > 1:
        width = hi - lo
        guess = None if bisect_next or len(peaks) < 2 else predicted()
        if guess is not None and not scouted:
            guess, scouted = max(guess // 2, lo + 1), True
        if guess is None or guess >= hi:  # no usable line, or one the failures contradict
            n = (lo + hi) // 2 if hi <= limit else min(limit, 2 * lo)
        else:
            n = max(guess, lo + 1)
        attempt(n)
        bisect_next = hi <= limit and (hi - lo) * 2 > width and not bisect_next
    result.batch = lo
    return result


def _timed(run: Callable[[], int], budget_bytes: int | None, n: int, on_oom: Callable[[], None]) -> Trial:
    """One trial: ``run`` returns the peak; out-of-memory is a trial that did not fit."""
    t0 = time.perf_counter()
    try:
        peak = run()
    except torch.cuda.OutOfMemoryError:
        on_oom()
        return Trial(n, False, None, time.perf_counter() - t0)
    return Trial(n, budget_bytes is None or peak <= budget_bytes, peak, time.perf_counter() - t0)


def find_max_batch(
    model: nn.Module,
    example: torch.Tensor,
    device: str | torch.device | None = None,
    *,
    budget_bytes: int | None = None,
    limit: int = 1 << 16,
    channels_last: bool = False,
) -> MaxBatch:
    """The largest batch of ``example`` (one input, no batch dimension) that ``model`` can run.

    On CUDA a trial is a real forward pass under ``no_grad``; its peak is the most the allocator
    reserved, weights included. Out of memory is caught, the batch freed and the cache emptied, so the
    allocator is usable afterwards; ``budget_bytes`` (default: what the process could hold now)
    bounds the peak too. On a CPU the memory is *simulated*: a trial fits when the weights plus
    the measured activation peak (`activation_memory`) stay within ``budget_bytes``, required.
    ``channels_last``: batches in NHWC layout (for a model converted with the same format).
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if budget_bytes is None:
            budget_bytes = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        trial = _cuda_trial(model, example, device, budget_bytes, channels_last)
    elif budget_bytes is None:
        raise ValueError("on a CPU find_max_batch needs budget_bytes= (a simulated memory budget)")
    else:
        trial = _simulated_trial(model, example, budget_bytes, channels_last)
    result = search_max_batch(trial, budget_bytes, limit=limit)
    result.simulated = device.type != "cuda"
    return result


def _batch_of(example: torch.Tensor, n: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return example.to(device).expand(n, *example.shape).contiguous(memory_format=layout)


def _cuda_trial(model: nn.Module, example: torch.Tensor, device: torch.device, budget: int,
                channels_last: bool) -> Callable[[int], Trial]:
    def run(n: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # each trial starts from the weights alone
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(_batch_of(example, n, device, channels_last))
        torch.cuda.synchronize(device)
        # Reserved, not allocated: the device's limit applies to what the allocator reserves,
        # which block rounding and fragmentation put above what tensors occupy.
        return torch.cuda.max_memory_reserved(device)

    def recover() -> None:  # the failed batch's tensors died with the exception's frames
        gc.collect()
        torch.cuda.empty_cache()

    return lambda n: _timed(lambda: run(n), budget, n, recover)


def _simulated_trial(model: nn.Module, example: torch.Tensor, budget: int,
                     channels_last: bool = False) -> Callable[[int], Trial]:
    weights = weight_bytes(model)

    def run(n: int) -> int:
        return weights + activation_memory(model, _batch_of(example, n, example.device, channels_last))[1]

    return lambda n: _timed(lambda: run(n), budget, n, gc.collect)


@dataclass(frozen=True)
class PrecisionRow:
    dtype: str
    channels_last: bool
    weight_bytes: int
    max_batch: int
    trials: int


def compare_precisions(
    model: nn.Module,
    budget_bytes: int | None = None,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
    channels_last: Sequence[bool] = (False,),
) -> list[PrecisionRow]:
    """The same model (copied) in each precision and layout: its weights and its largest batch.

    Tests the guide's "fit 2-3x larger batches" claim: half precision halves weights and
    activations, so about 2x, not 3x; the layout moves no bytes, only which kernels run.
    """
    rows = []
    for dtype in dtypes:
        for nhwc in channels_last:
            layout = torch.channels_last if nhwc else torch.preserve_format
            variant = copy.deepcopy(model).to(dtype=dtype, memory_format=layout)
            example = example_batch(variant, 1)[0]
            found = find_max_batch(variant, example, budget_bytes=budget_bytes, channels_last=nhwc)
            rows.append(PrecisionRow(str(dtype).removeprefix("torch."), nhwc, weight_bytes(variant),
                                     found.batch, len(found.trials)))
            del variant
    return rows
