"""`DataParallel`: one replica per device, each batch split between them, outputs in input order.

The guide gathers with ``as_completed``, so its outputs come back in whatever order the devices
finish: on real traffic, answers go to the wrong requests. Here each device's chunk is a
contiguous slice of the batch and the chunks are concatenated by position, never by arrival.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

__all__ = ["DataParallel", "split_sizes", "scaling_efficiency"]


def split_sizes(n: int, shares: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``shares`` (largest remainder): sizes sum to ``n``, some may be 0."""
    if n < 0 or not shares or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"need n >= 0 and non-negative shares with a positive sum, got {n}, {list(shares)}")
    total = sum(shares)
    exact = [n * s / total for s in shares]
    sizes = [int(e) for e in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def scaling_efficiency(throughput_n: float, throughput_1: float, n: int) -> float:
    """throughput(N) / (N × throughput(1)): 1.0 is perfect linear scaling."""
    if n < 1 or throughput_1 <= 0:
        raise ValueError(f"need n >= 1 and a positive single-device throughput, got {n}, {throughput_1}")
    return throughput_n / (n * throughput_1)


class DataParallel:
    """Replicate ``model`` on ``devices``; each call splits the batch by ``shares`` (equal by default).

    One worker thread per device copies its chunk over (from pinned memory when ``pin_memory``
    and the device is a GPU), runs its replica and brings the result back to the CPU. Use as a
    context manager, or call `close`, to release the threads.
    """

    def __init__(
        self,
        model: nn.Module,
        devices: Sequence[torch.device | str],
        *,
        shares: Sequence[float] | None = None,
        pin_memory: bool = True,
    ) -> None:
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        self.devices = [torch.device(d) for d in devices]
        self.shares = list(shares) if shares is not None else [1.0] * len(self.devices)
        if len(self.shares) != len(self.devices):
            raise ValueError(f"one share per device: {len(self.devices)} devices, {len(self.shares)} shares")
        split_sizes(0, self.shares)  # validates the shares
        self.pin_memory = pin_memory
        self.replicas = [copy.deepcopy(model).to(d).eval() for d in self.devices]
        self._workers = [ThreadPoolExecutor(1, thread_name_prefix=f"labkit-dp-{d}") for d in self.devices]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        sizes = split_sizes(x.shape[0], self.shares)
        chunks = torch.split(x, sizes)  # (sizes[i], *in) views, one per replica
        futures = [
            (worker.submit(self._run, replica, device, chunk))
            for worker, replica, device, chunk in zip(self._workers, self.replicas, self.devices, chunks, strict=True)
            if chunk.shape[0] > 0
        ]
        return torch.cat([f.result() for f in futures])  # (B, *out) by position: input order, always

    def _run(self, replica: nn.Module, device: torch.device, chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if device.type == "cuda":
                if self.pin_memory and chunk.device.type == "cpu":
                    chunk = chunk.pin_memory()
                return replica(chunk.to(device, non_blocking=True)).cpu()
            return replica(chunk.to(device)).cpu()

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown(wait=True)

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
