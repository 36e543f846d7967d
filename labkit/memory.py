"""Where inference memory goes, and the largest batch that fits, found in a handful of trials.

The guide binary-searches the batch size from an arbitrary start, running a forward pass per
step (12 trials on an H200 for ResNet-50). Memory at inference grows almost exactly linearly with
the batch (weights are fixed, activations scale with it), so two small probes predict the answer
and two trials confirm it: n fits and n + 1 does not.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn

__all__ = ["MemoryStats", "memory_stats", "LayerMemory", "activation_memory", "Trial", "MaxBatch", "find_max_batch"]


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


@dataclass(frozen=True)
class LayerMemory:
    name: str
    output_bytes: int


def _nbytes(out: object) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_nbytes(o) for o in out.values())
    return 0


def activation_memory(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerMemory], int]:
    """Output bytes of every leaf layer for ``example``, and the peak an inference holds.

    Under ``no_grad`` a layer's input can be freed once its output exists, so the peak is the
    largest input + output pair along the way (plus the model's input), not the sum of all
    outputs: that sum is what training keeps for the backward pass.
    """
    layers: list[LayerMemory] = []
    peak = 0

    def hook(module: nn.Module, inputs: tuple, out: object) -> None:
        nonlocal peak
        layers.append(LayerMemory(names[module], _nbytes(out)))
        peak = max(peak, _nbytes(inputs) + _nbytes(out))

    names = {m: n for n, m in model.named_modules() if not list(m.children())}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return layers, max(peak, _nbytes(example))


@dataclass(frozen=True)
class Trial:
    batch: int
    fits: bool
    peak_bytes: int | None  # None when the trial ran out of memory
    seconds: float


@dataclass
class MaxBatch:
    """The largest batch that fits, how it was found, and against what."""

    batch: int
    trials: list[Trial] = field(default_factory=list)
    budget_bytes: int | None = None
    simulated: bool = False  # True: a CPU run against budget_bytes, not a real device's memory

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)


def _cuda_trial(model: nn.Module, example: torch.Tensor, device: torch.device, budget: int | None) -> Callable[[int], Trial]:
    def trial(n: int) -> Trial:
        t0 = time.perf_counter()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)  # the peak counts weights too, as budget_bytes does
        x = out = None
        try:
            x = example.to(device).expand(n, *example.shape).contiguous()
            with torch.no_grad():
                out = model(x)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            fits = budget is None or peak <= budget
        except torch.cuda.OutOfMemoryError:
            peak, fits = None, False
        finally:
            del x, out  # free before the allocator is emptied, or the cache keeps the blocks
            gc.collect()
            torch.cuda.empty_cache()
        return Trial(n, fits, peak, time.perf_counter() - t0)

    return trial


def _simulated_trial(model: nn.Module, example: torch.Tensor, budget: int) -> Callable[[int], Trial]:
    weights = sum(_nbytes(p) for p in model.parameters()) + sum(_nbytes(b) for b in model.buffers())

    def trial(n: int) -> Trial:
        t0 = time.perf_counter()
        _, peak = activation_memory(model, example.expand(n, *example.shape).contiguous())
        peak += weights
        return Trial(n, peak <= budget, peak, time.perf_counter() - t0)

    return trial


def find_max_batch(
    model: nn.Module,
    example: torch.Tensor,
    device: str | torch.device | None = None,
    *,
    budget_bytes: int | None = None,
    limit: int = 1 << 16,
) -> MaxBatch:
    """The largest batch of ``example`` (one input, no batch dimension) that ``model`` can run.

    On CUDA a trial is a real forward pass; running out of memory is caught, the cache emptied,
    and the trial counted as not fitting; ``budget_bytes`` caps the peak further if given. On a
    CPU the memory is *simulated*: a trial fits when weights plus the measured activation peak
    (`activation_memory`) stay within ``budget_bytes``, which is then required.

    Two probes fit peak(n) = a + b·n; the prediction is confirmed by trying it and the next
    size, and refined by bisection only if memory was not linear.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        trial = _cuda_trial(model, example, device, budget_bytes)
    elif budget_bytes is None:
        raise ValueError("on a CPU find_max_batch needs budget_bytes= (a simulated memory budget)")
    else:
        trial = _simulated_trial(model, example, budget_bytes)
    result = MaxBatch(0, budget_bytes=budget_bytes, simulated=device.type != "cuda")
    tried: dict[int, Trial] = {}

    def fits(n: int) -> bool:
        if n not in tried:
            tried[n] = trial(n)
            result.trials.append(tried[n])
        return tried[n].fits

    if not fits(1):
        return result
    if not fits(2):
        result.batch = 1
        return result
    p1, p2 = tried[1].peak_bytes, tried[2].peak_bytes
    per_item, fixed = p2 - p1, 2 * p1 - p2  # peak(n) = fixed + per_item * n
    budget = budget_bytes
    if budget is None:  # CUDA: what this process could hold at most
        budget = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    guess = limit if per_item <= 0 else max(2, min(limit, math.floor((budget - fixed) / per_item)))

    if fits(guess):
        if guess >= limit or not fits(guess + 1):  # the usual end: four trials in all
            result.batch = guess
            return result
        lo, hi = guess + 1, None  # memory grew slower than predicted: double until one fails
        while hi is None:
            nxt = min(limit, lo * 2)
            if nxt == lo:
                result.batch = lo
                return result
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    elif fits(guess - 1):  # predicted one too many (rounding)
        result.batch = guess - 1
        return result
    else:
        lo, hi = 2, guess - 1
    while hi - lo > 1:  # memory was not linear in the batch: bisect the bracket
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    result.batch = lo
    return result
