"""Where inference memory goes: the allocator's and the process's figures, the bytes of weights,
of each layer's output, of what autograd keeps for backward, and the peak of a training step.

Peaks are counted, not estimated: `_LiveBytes` follows every tensor ops create and Python frees,
so the same count runs on a CPU and on the meta device (shapes alone, no arithmetic) and matches
what a GPU's allocator reports (tests/gpu/test_gpu_memory.py).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from labkit.nested import tensors_in

__all__ = [
    "MemoryStats",
    "memory_stats",
    "LayerMemory",
    "activation_memory",
    "weight_bytes",
    "saved_for_backward_bytes",
    "training_peak_bytes",
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


def _nbytes(obj: object) -> int:
    """The bytes of every tensor in ``obj`` (a tensor, or tuples, lists and dicts of them)."""
    return sum(t.numel() * t.element_size() for t in tensors_in(obj))


def weight_bytes(model: nn.Module) -> int:
    return _nbytes([*model.parameters(), *model.buffers()])


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
        for t in tensors_in(out):
            if id(t) in self._tensors:
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


def _storages_of(model: nn.Module, *tensors: torch.Tensor) -> set[int]:
    """The storages that exist before a measured pass: the model's weights and buffers, its input."""
    return {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers(), *tensors)}


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
    tracker = _LiveBytes(_storages_of(model, example))
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
    return sum(saved_bytes_per_layer([model], example, grad=grad))


def saved_bytes_per_layer(layers: Sequence[nn.Module], example: torch.Tensor, *, grad: bool = True) -> list[int]:
    """What each of ``layers``, run one after another on ``example``, keeps for backward: what
    `labkit.memory.checkpointing` balances its segments by.

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
    with untouched(model):
        tracker = _LiveBytes(_storages_of(model, example))
        with torch.enable_grad(), tracker:
            model(example).float().square().mean().backward()
    return tracker.peak


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
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
