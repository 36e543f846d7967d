"""A real memory limit on a CUDA device, and the budget a search runs against without one."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch

from labkit.memory.checks import whole_number

__all__ = ["memory_cap"]

_CAPS: dict[torch.device, list[float]] = {}  # per device, the memory_cap fractions now in force


@contextlib.contextmanager
def memory_cap(budget_bytes: float, device: str | torch.device = "cuda") -> Iterator[int]:
    """While inside, this process may reserve at most ``budget_bytes`` on the CUDA ``device``
    (`torch.cuda.set_per_process_memory_fraction`); yields the limit in force, in bytes.

    A budget must be a real limit for a max-batch search: only when the caching allocator is
    pressed does it give back its cache and pack tighter, so without the cap reserved memory
    reaches a budget long before the batch stops fitting
    (bench/results/2026-11-27-h200-memory-curve.json). Caps nest, and an inner one never loosens
    an outer one (nor a fraction set before, where this torch can read it back); on the way out
    the fraction that was in force is back.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"memory_cap limits a CUDA device, got {device}")
    budget_bytes = whole_number(budget_bytes, "budget_bytes", minimum=0, round_down=True)
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


def budget_for(device: torch.device, budget_bytes: float | None) -> int:
    """``budget_bytes`` as whole bytes; without one, on CUDA what the process could hold now
    (free, what its cache holds, no more than a cap in force). A CPU has no device limit."""
    if budget_bytes is not None:
        return whole_number(budget_bytes, "budget_bytes", minimum=0, round_down=True)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        caps = _CAPS.get(_indexed(device))
        return min(available, int(caps[-1] * torch.cuda.mem_get_info(device)[1])) if caps else available
    raise ValueError("without a GPU, a max-batch search needs budget_bytes= (a simulated memory budget)")
