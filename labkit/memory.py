"""Where inference memory goes, and the largest batch that fits, found in a handful of trials.

The guide binary-searches the batch size from an arbitrary start, one forward pass per step
(12 trials on an H200 for ResNet-50, and a wrong answer: its previous batch is still alive while
it tries the next). Memory at inference grows almost linearly with the batch (weights are fixed,
activations scale with it), so a probe and a scout predict the answer, and each further trial
refits where it is measured, until n fits and n + 1 provably does not.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import itertools
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from labkit.device import device_of
from labkit.models import example_batch, sequential_layers

__all__ = [
    "MemoryStats",
    "memory_stats",
    "LayerMemory",
    "activation_memory",
    "weight_bytes",
    "saved_for_backward_bytes",
    "training_peak_bytes",
    "checkpointed",
    "Trial",
    "MaxBatch",
    "search_max_batch",
    "make_trial",
    "find_max_batch",
    "memory_cap",
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


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors alive at once while it is active, as ops create them and as
    Python frees them. Storages that existed before (weights, the input) are not counted; views
    and in-place results share their storage and count once. Works on the meta device too, where
    shapes are worked out without any arithmetic."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing, self.live, self.peak = existing, 0, 0
        self._storages: dict[int, tuple[int, int]] = {}  # storage -> (bytes, tensors using it)
        self._tensors: set[int] = set()

    def _drop(self, tensor_id: int, key: int) -> None:
        self._tensors.discard(tensor_id)
        nbytes, users = self._storages[key]
        if users == 1:
            del self._storages[key]
            self.live -= nbytes
        else:
            self._storages[key] = (nbytes, users - 1)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in self._tensors:
                continue
            storage = t.untyped_storage()
            key = storage._cdata  # the storage itself: unique on every device, meta included
            if key in self.existing:
                continue
            nbytes, users = self._storages.get(key, (storage.nbytes(), 0))
            if users == 0:
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._storages[key] = (nbytes, users + 1)
            self._tensors.add(id(t))
            weakref.finalize(t, self._drop, id(t), key)
        return out


def activation_memory(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerMemory], int]:
    """Output bytes of every leaf layer for the batch ``example``, and the peak inference holds.

    The peak is measured, not estimated: the bytes of all tensors alive at once during the
    forward pass under ``no_grad``, the input included, as each op creates them and Python frees
    them. It is far below the sum of the layer outputs (what training keeps for the backward
    pass), but above the largest single layer: a residual block keeps its input alive until the
    addition. Run it on a model and input on the ``meta`` device to count bytes without computing.
    """
    names = {m: n for n, m in model.named_modules() if not list(m.children())}
    layers: list[LayerMemory] = []
    handles = [m.register_forward_hook(lambda mod, _, out: layers.append(LayerMemory(names[mod], _nbytes(out))))
               for m in names]
    existing = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers(), example)}
    tracker = _LiveBytes(existing)
    try:
        with torch.no_grad(), tracker:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return layers, _nbytes(example) + tracker.peak


def saved_for_backward_bytes(model: nn.Module, example: torch.Tensor, *, grad: bool = True) -> int:
    """Bytes autograd keeps from one forward pass for a later backward, counted as it packs them.

    This is the memory activation checkpointing trades for recomputation. Under ``grad=False``
    (``no_grad``, as in inference) nothing is kept, with or without checkpointing. Works on the
    meta device too.
    """
    return sum(_saved_bytes_per_layer([model], example, grad=grad))


def _saved_bytes_per_layer(layers: Sequence[nn.Module], example: torch.Tensor, *, grad: bool = True) -> list[int]:
    """What each of ``layers``, run one after another on ``example``, keeps for backward.

    Counted by storage (a tensor saved twice, or a view of one, counts once), weights excluded."""
    state = {t.untyped_storage()._cdata for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    seen: set[int] = set()
    saved = [0] * len(layers)
    current = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in state and storage._cdata not in seen:
            seen.add(storage._cdata)
            saved[current] += storage.nbytes()
        return t

    x = example.detach().requires_grad_(grad and example.is_floating_point())
    with torch.set_grad_enabled(grad), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for current, layer in enumerate(layers):  # noqa: B007 (read by pack)
            x = layer(x)
    return saved


def training_peak_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """The most bytes alive at once during a training step (forward, a loss, backward) on
    ``example``, weights excluded, gradients included: what checkpointing is meant to lower.

    Counted as ops create tensors and Python frees them (as `activation_memory` does), so it
    runs on a CPU and on the meta device, and matches what a GPU's allocator reports. The model
    is left as it was: its gradients and buffers (BatchNorm statistics) are put back."""
    with _untouched(model):
        existing = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers(), example)}
        tracker = _LiveBytes(existing)
        with torch.enable_grad(), tracker:
            model(example).float().square().mean().backward()
    return tracker.peak


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Run a measuring pass without leaving a trace: gradients start empty and are put back, and
    so are the buffers a training-mode pass updates (BatchNorm's running statistics)."""
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(b, b.clone()) for b in model.buffers()]
    for p, _ in grads:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in grads:
            p.grad = grad
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


class Checkpointed(nn.Module):
    """``model``'s layers in ``segments`` segments; only segment boundaries are kept for backward.

    The cuts balance what each segment keeps for backward (measured for one input): during the
    backward pass one segment at a time holds its activations again, so the largest segment sets
    the peak. Stages of blocks (ResNet's ``layer1``…``layer4``) are cut between blocks. Cutting
    into equal numbers of layers instead puts most of ResNet-50's bytes, its early
    high-resolution blocks, in one segment (measured on an H200, batch 32, 4 segments: 2,039 MiB
    at the training peak against 1,106 MiB balanced, from 2,680 MiB without checkpointing).
    """

    def __init__(self, model: nn.Module, segments: int) -> None:
        super().__init__()
        layers = [part for layer in sequential_layers(model)
                  for part in (layer if isinstance(layer, nn.Sequential) else [layer])]
        if not 1 <= segments <= len(layers):
            raise ValueError(f"segments must be between 1 and {len(layers)} (the model's blocks), got {segments}")
        with _untouched(model):
            sizes = _saved_bytes_per_layer(layers, example_batch(model, 1))
        bounds = _balanced_bounds(sizes, segments)
        self.segments = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds))
        self.input_spec = getattr(model, "input_spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # nothing would be saved anyway: plain forward
            for segment in self.segments:
                x = segment(x)
            return x
        for segment in self.segments:
            x = checkpoint(_run_segment, segment, x, use_reentrant=False)
        return x


def _balanced_bounds(sizes: Sequence[int], segments: int) -> list[int]:
    """Cut points splitting ``sizes`` into ``segments`` non-empty runs whose largest sum is least."""
    n = len(sizes)
    prefix = [0, *itertools.accumulate(sizes)]

    @functools.cache
    def best(i: int, k: int) -> tuple[int, tuple[int, ...]]:  # sizes[i:] in k runs: (largest sum, cuts)
        if k == 1:
            return prefix[n] - prefix[i], (n,)
        options = []
        for j in range(i + 1, n - k + 2):
            rest, cuts = best(j, k - 1)
            options.append((max(prefix[j] - prefix[i], rest), (j, *cuts)))
        return min(options)

    return [0, *best(0, segments)[1]]


def _run_segment(segment: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    # A segment that starts in place (ResNet's ReLU(inplace=True)) would overwrite the input the
    # checkpoint keeps to recompute it from; it gets a copy instead.
    if getattr(segment[0], "inplace", False):
        x = x.clone()
    return segment(x)


def checkpointed(model: nn.Module, segments: int = 4) -> Checkpointed:
    """Activation checkpointing over the blocks of `labkit.models.sequential_layers`, cut where
    the bytes kept for backward balance: it lowers a training step's peak (fine-tuning, training)
    and saves **nothing** at inference."""
    return Checkpointed(model, segments)


# -- the largest batch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    batch: int
    fits: bool
    peak_bytes: int | None  # what the budget bounds (CUDA: reserved); None when out of memory
    seconds: float
    allocated_bytes: int | None = None  # the tensors alone (CUDA); None: the same as peak_bytes


@dataclass
class MaxBatch:
    """The largest batch that fits, every trial that found it, and against what budget."""

    batch: int
    trials: list[Trial] = field(default_factory=list)
    budget_bytes: int | None = None
    simulated: bool = False  # True: a CPU run against budget_bytes, not a real device's memory
    limit: int | None = None

    @property
    def capped(self) -> bool:
        """The search stopped at its limit: larger batches may fit too."""
        return self.limit is not None and self.batch >= self.limit

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)


PRESSED = 0.97  # a fit whose peak is this close to the budget was measured under the allocator's pressure


def search_max_batch(trial: Callable[[int], Trial], budget_bytes: int, *, limit: int = 1 << 16,
                     base_bytes: int = 0) -> MaxBatch:
    """The largest n ≤ ``limit`` with ``trial(n).fits``, assuming fitting is monotone in n.

    Tensor bytes grow linearly with the batch, but what the budget bounds on a GPU is what the
    caching allocator *reserves*, and that is not linear (measured on an H200, ResNet-50 under a
    16 GiB cap): far from the cap it keeps freed blocks cached (fp16: 1.7x the tensors), close to
    it it releases them and packs tighter (1.2x at the largest batch). So the search fits its
    line to the allocated bytes and predicts with the reserved/allocated ratio of its largest
    fit: one probe (n=1) sets the scale, a scout at half the proportional guess sets the line,
    the prediction lands just under the cap, and a last step proves n + 1 does not fit. Where
    the ratio was measured far from the cap and still fits, the next guess aims halfway to where
    the tensors alone would fill the budget. Out of memory leaves no peak, so the next guess
    falls back to the line; a simulated trial that overflows keeps its peak, and the secant
    across the budget is used. Two slow predicted steps in a row (a closed bracket cut by less than
    a quarter, an open one grown by less than an eighth), or more predicted steps before any
    failure than the limit has bits, force the next step: a bisection, or before any failure the
    batch where the tensors alone would fill the budget (at most twice the last fit). The answer
    is exact whatever the curve; a curve the line misreads costs more trials (on 20,000 fuzzed
    curves up to 56, limit 65,536). Recorded H200 curves: fp32 5 trials, fp32 channels-last 5,
    fp16 10, bf16 9. ``base_bytes``: what is held before
    any input (the weights), so that the scout is sized by what one input adds.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    result = MaxBatch(0, budget_bytes=budget_bytes, limit=limit)
    fitted: dict[int, tuple[int, int]] = {}  # n -> (peak, allocated), for fits that measured a peak
    over: dict[int, int] = {}  # n -> peak, for trials over budget that still measured one
    lo, hi = 0, limit + 1  # lo fits (0: nothing yet); hi does not (limit + 1: nothing failed yet)

    def attempt(n: int) -> None:
        nonlocal lo, hi
        t = trial(n)
        result.trials.append(t)
        if t.fits:
            lo = max(lo, n)
            if t.peak_bytes:
                fitted[n] = (t.peak_bytes, t.allocated_bytes if t.allocated_bytes is not None else t.peak_bytes)
        else:
            hi = min(hi, n)
            if t.peak_bytes is not None:
                over[n] = t.peak_bytes

    def line() -> tuple[int, int, int, float] | None:
        """The largest fit (batch, peak, allocated) and the allocated bytes per input through the
        two largest fits; None while that slope is not positive."""
        b, (peak, alloc) = max(fitted.items())
        a = max(n for n in fitted if n < b)
        slope = (alloc - fitted[a][1]) / (b - a)
        return (b, peak, alloc, slope) if slope > 0 and alloc > 0 else None

    def predicted() -> float | None:
        b, (peak, _) = max(fitted.items())
        if hi in over and over[hi] > peak:  # a peak on each side of the budget: the secant between them
            return b + (budget_bytes - peak) * (hi - b) / (over[hi] - peak)
        if (fit := line()) is None:
            return None
        b, peak, alloc, slope = fit
        at_ratio = b + (budget_bytes * alloc / peak - alloc) / slope
        last = result.trials[-1]
        if last.fits and last.batch == b and len(result.trials) > 2 and peak < PRESSED * budget_bytes:
            return (at_ratio + tensor_bound(fit)) / 2  # the ratio fell: aim higher
        return at_ratio

    def tensor_bound(fit: tuple[int, int, int, float]) -> float:
        """Where the allocated bytes alone would reach the budget: past it nothing fits."""
        b, _, alloc, slope = fit
        return b + (budget_bytes - alloc) / slope

    attempt(1)
    if lo in (0, limit):  # nothing fits, or the limit is 1
        result.batch = lo
        return result
    per_input = max(1, fitted[1][1] - base_bytes) if 1 in fitted else 1  # over: fixed costs count as the input's
    attempt(min(limit, max(2, (budget_bytes - base_bytes) // per_input // 2)))
    slow = 0  # predicted steps in a row that made little progress
    unbounded = 0  # predicted steps taken while nothing has failed
    while hi - lo > 1:
        width, start = hi - lo, lo
        forced = slow >= 2 or unbounded > limit.bit_length()
        guess = None if forced or len(fitted) < 2 or lo not in fitted else predicted()
        if guess is None and hi <= limit:
            n = (lo + hi) // 2
        elif guess is None:  # nothing failed yet: up to where the tensors alone would fill the budget
            fit = line() if len(fitted) > 1 else None
            n = min(limit, max(lo + 1, min(2 * lo, math.floor(tensor_bound(fit)) if fit else 2 * lo)))
        elif guess >= hi:  # a failure contradicts the line; past the limit means: try the limit
            n = (lo + hi) // 2 if hi <= limit else limit
        else:
            # Near the cap the allocator packs tighter than the line says: round up there
            pressed = fitted[lo][0] >= PRESSED * budget_bytes
            n = min(max(math.ceil(guess) if pressed else math.floor(guess), lo + 1), hi - 1)
        attempt(n)
        if guess is None:  # after a forced step, the next slow prediction forces another
            slow = min(slow, 1)
        elif hi <= limit:  # closed: slow when the bracket lost less than a quarter
            slow = slow + 1 if (hi - lo) * 4 > width * 3 else 0
        else:
            unbounded += 1
            slow = slow + 1 if lo - start < max(2, start // 8) else 0
    result.batch = lo
    return result


def _timed(run: Callable[[], tuple[int, int]], budget_bytes: int | None, n: int, on_oom: Callable[[], None]) -> Trial:
    """One trial: ``run`` returns (peak, allocated); out of memory is a trial that did not fit."""
    t0 = time.perf_counter()
    try:
        peak, allocated = run()
    except torch.cuda.OutOfMemoryError:
        peak = allocated = None
    if peak is None:  # out of the except block: the error's frames, which hold the batch, are gone
        on_oom()
        return Trial(n, False, None, time.perf_counter() - t0)
    return Trial(n, budget_bytes is None or peak <= budget_bytes, peak, time.perf_counter() - t0, allocated)


_CAPS: dict[torch.device, list[float]] = {}  # per device, the memory_cap fractions now in force


@contextlib.contextmanager
def memory_cap(budget_bytes: int, device: str | torch.device = "cuda") -> Iterator[int]:
    """While inside, this process may reserve at most ``budget_bytes`` on the CUDA ``device``
    (`torch.cuda.set_per_process_memory_fraction`); yields the limit in force, in bytes.

    A budget must be a real limit for a max-batch search: only when the caching allocator is
    pressed does it give back its cache and pack tighter, so without the cap reserved memory
    reaches a budget long before the batch stops fitting (ResNet-50 fp16 on an H200: 1.7x the
    tensors' bytes unpressed, 1.2x at the cap). Caps nest, and an inner one never loosens an
    outer one (nor a fraction set before, where this torch can read it back); on the way out the
    fraction that was in force is back.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"memory_cap limits a CUDA device, got {device}")
    device = _indexed(device)
    stack = _CAPS.setdefault(device, [])
    enclosing = stack[-1] if stack else _fraction_in_force(device)
    total = torch.cuda.mem_get_info(device)[1]
    fraction = min(budget_bytes / total, enclosing)
    gc.collect()
    torch.cuda.empty_cache()  # what the cache holds beyond the cap would count against it
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    stack.append(fraction)
    try:
        yield int(fraction * total)
    finally:
        stack.pop()
        torch.cuda.set_per_process_memory_fraction(enclosing, device)
        torch.cuda.empty_cache()


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>``: the key under which caps on that device are kept."""
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _fraction_in_force(device: torch.device) -> float:
    """The per-process fraction set outside labkit, where this torch can read it back."""
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    return min(1.0, getter(device)) if getter is not None else 1.0


def find_max_batch(
    model: nn.Module,
    example: torch.Tensor,
    device: str | torch.device | None = None,
    *,
    budget_bytes: int | None = None,
    limit: int = 1 << 16,
    channels_last: bool = False,
) -> MaxBatch:
    """The largest batch of ``example`` (one input, no batch dimension) that ``model`` can run,
    found by `search_max_batch` with the trials of `make_trial`.

    On CUDA with ``budget_bytes``, the search runs under `memory_cap` (the budget is a real
    limit); without, the limit is the device's. The answer is exact with no headroom: right at
    the cap, what fits depends on how the cache happens to be laid out, so serve a little below.
    """
    device = torch.device(device) if device is not None else device_of(model)
    real_limit = device.type == "cuda" and budget_bytes is not None
    with memory_cap(budget_bytes, device) if real_limit else contextlib.nullcontext() as cap_bytes:
        budget_bytes = _budget(device, budget_bytes if cap_bytes is None else min(budget_bytes, cap_bytes))
        trial = make_trial(model, example, device, budget_bytes=budget_bytes, channels_last=channels_last)
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)  # the weights and whatever else this process holds
        else:
            base = weight_bytes(model)
        result = search_max_batch(trial, budget_bytes, limit=limit, base_bytes=base)
    result.simulated = device.type != "cuda"
    return result


def make_trial(model: nn.Module, example: torch.Tensor, device: str | torch.device | None = None, *,
               budget_bytes: int | None = None, channels_last: bool = False) -> Callable[[int], Trial]:
    """``trial(n)``: does a batch of ``n`` copies of ``example`` fit? (the step of any max-batch search)

    On CUDA a trial is a real forward pass under ``no_grad``; its peak is the most the allocator
    reserved, weights included. Out of memory is caught, the batch freed and the cache emptied,
    so the allocator is usable afterwards; ``budget_bytes`` (default: what the process could
    hold now) bounds the peak too. Elsewhere the memory is *simulated*: a trial fits when the
    weights plus the measured activation peak (`activation_memory`, counted on the meta device,
    so without computing) stay within ``budget_bytes``, which is then required.
    ``channels_last``: batches in NHWC layout (for a model converted with the same format).
    """
    device = torch.device(device) if device is not None else device_of(model)
    budget_bytes = _budget(device, budget_bytes)
    if device.type == "cuda":
        return _cuda_trial(model, example, device, budget_bytes, channels_last)
    return _simulated_trial(model, example, budget_bytes, channels_last)



def _budget(device: torch.device, budget_bytes: int | None) -> int:
    if budget_bytes is not None:
        return budget_bytes
    if device.type == "cuda":  # what is free, what the cache holds, and no more than a cap in force
        available = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        caps = _CAPS.get(_indexed(device))
        return min(available, int(caps[-1] * torch.cuda.mem_get_info(device)[1])) if caps else available
    raise ValueError("without a GPU, a max-batch search needs budget_bytes= (a simulated memory budget)")


def _batch_of(example: torch.Tensor, n: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return example.to(device).expand(n, *example.shape).contiguous(memory_format=layout)


def _cuda_trial(model: nn.Module, example: torch.Tensor, device: torch.device, budget: int,
                channels_last: bool) -> Callable[[int], Trial]:
    def run(n: int) -> tuple[int, int]:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # each trial starts from the weights alone
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(_batch_of(example, n, device, channels_last))
        torch.cuda.synchronize(device)
        # Reserved bounds the device's limit (block rounding and caching put it above what the
        # tensors occupy); allocated is what grows linearly, for the search's line.
        return torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)

    def recover() -> None:  # the failed batch's tensors died with the exception's frames: free them
        gc.collect()
        torch.cuda.empty_cache()

    return lambda n: _timed(lambda: run(n), budget, n, recover)


def _simulated_trial(model: nn.Module, example: torch.Tensor, budget: int,
                     channels_last: bool = False) -> Callable[[int], Trial]:
    weights = weight_bytes(model)
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")  # bytes from shapes alone
    meta_example = example.to("meta")

    def run(n: int) -> tuple[int, int]:
        peak = weights + activation_memory(meta, _batch_of(meta_example, n, meta_example.device, channels_last))[1]
        return peak, peak

    return lambda n: _timed(lambda: run(n), budget, n, gc.collect)


def _on_meta(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.is_meta


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

    Tests the guide's "fit 2-3x larger batches" claim. Half precision halves weights (W) and
    activations, so under a budget B the batch grows 2(B - W/2)/(B - W) times: about 2x when
    the weights are small beside the budget, more when they fill most of it. The layout moves no
    bytes, only which kernels run. On CUDA the budget is the process's whole reserved memory:
    the original model, if it is on that device, counts against it too.
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
