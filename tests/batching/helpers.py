"""Small helpers shared by the batching tests."""

import asyncio

import torch


def run(coro):
    return asyncio.run(coro)


def vec(i: float, n: int = 4) -> torch.Tensor:
    """A request input that says which request it is: every element is ``i``."""
    return torch.full((n,), float(i))
