"""Choosing devices, with a CPU fallback everywhere.

Every lesson runs on whatever machine the learner has. `pick_device` turns a user's choice into a
`torch.device` (or a clear error), and `devices(n)` hands multi-device lessons a list they can use
even on a laptop, labelled so nobody mistakes CPU stand-ins for GPUs.
"""

from __future__ import annotations

import re

import torch

__all__ = ["DeviceList", "pick_device", "devices", "sync", "describe", "device_of"]

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def pick_device(spec: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a usable `torch.device`.

    ``"auto"`` takes the first GPU when CUDA is usable, else the CPU. Asking for CUDA on a machine
    without it is an error rather than a silent CPU run, so figures are never mislabelled.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    match = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise ValueError(f"'auto' takes no index, got {spec!r}")
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        if index not in (None, "0"):
            raise ValueError(f"the CPU has no index other than 0, got {spec!r}")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{spec!r} asked for CUDA, but torch {torch.__version__} sees no CUDA device "
            "(use device='auto' or 'cpu' on this machine)"
        )
    count = torch.cuda.device_count()
    i = int(index or 0)
    if i >= count:
        raise ValueError(f"{spec!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", i)


class DeviceList(tuple):
    """A tuple of `torch.device` that says what it really is.

    ``distinct`` is True only when every entry is its own physical device, so a lesson can tell
    "4 GPUs" from "one GPU used 4 times" from "4 CPU stand-ins" and label its figures.
    """

    def __new__(cls, items: list[torch.device], *, distinct: bool, label: str) -> DeviceList:
        obj = super().__new__(cls, items)
        obj.distinct = distinct
        obj.label = label
        return obj

    @property
    def stand_in(self) -> bool:
        """True when these are CPU stand-ins for GPUs."""
        return all(d.type == "cpu" for d in self)

    def __repr__(self) -> str:
        return f"DeviceList([{', '.join(map(str, self))}], {self.label!r})"


def devices(n: int, kind: str = "auto") -> DeviceList:
    """``n`` devices for a multi-device lesson.

    With at least ``n`` GPUs: ``cuda:0..cuda:n-1``. With fewer GPUs, the ones present are reused in
    turn (the code paths are real, the scaling is not). Without CUDA, or with ``kind="cpu"``: ``n``
    CPU stand-ins. The list's ``label`` says which of these it is.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"kind must be 'auto', 'cpu' or 'cuda', got {kind!r}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cuda" and gpus == 0:
        raise RuntimeError("kind='cuda' asked for GPUs, but this machine has no CUDA device")
    if kind == "cpu" or gpus == 0:
        label = f"{n} CPU stand-in(s) for GPUs: the code runs, the timings are not multi-GPU figures"
        return DeviceList([torch.device("cpu")] * n, distinct=n == 1, label=label)
    items = [torch.device("cuda", i % gpus) for i in range(n)]
    if gpus >= n:
        return DeviceList(items, distinct=True, label=f"{n} distinct GPU(s)")
    label = f"{n} slots on {gpus} GPU(s), reused in turn: the code runs, the scaling is not real"
    return DeviceList(items, distinct=False, label=label)


def sync(device: str | torch.device | None = None) -> None:
    """Wait until all queued work on ``device`` has finished; a no-op on the CPU.

    GPU calls return before the GPU is done, so any wall-clock measurement must call this first.
    """
    device = torch.device(device) if device is not None else pick_device("auto")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_of(model: object) -> torch.device:
    """Where ``model`` runs: its parameters' device, else its ``device`` attribute (`GraphRunner`
    has one), else the CPU."""
    params = getattr(model, "parameters", None)
    if callable(params) and (param := next(params(), None)) is not None:
        return param.device
    return torch.device(getattr(model, "device", None) or "cpu")


def describe(device: str | torch.device) -> str:
    """A short human name: ``"NVIDIA H200 (cuda:0)"`` or ``"CPU (8 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return str(device)
