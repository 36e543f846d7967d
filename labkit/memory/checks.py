"""The argument checks the max-batch search shares: budgets and limits are whole, finite numbers."""

from __future__ import annotations

import math
import numbers

from torch import nn

__all__ = ["whole_number", "measurable"]


def whole_number(value: object, name: str, *, minimum: int, round_down: bool = False) -> int:
    """``value`` as an ``int``, or a `TypeError`/`ValueError` that names ``name`` and says what was
    expected. Integral floats (``1e4``) are accepted; ``round_down``: any finite float is, rounded
    down (a budget of 1.5e9 bytes is a budget of 1,500,000,000 bytes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if not round_down and value != math.floor(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    if math.floor(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return math.floor(value)


def measurable(model: object) -> nn.Module:
    """``model``, if a max-batch search can measure it: an `nn.Module`, whose weights count
    against the budget and can be copied to the meta device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"a max-batch search measures an nn.Module (its weights count against the budget), "
                        f"got {type(model).__name__} {getattr(model, '__name__', '')!s}".rstrip()
                        + "; wrap a plain function in an nn.Module whose forward calls it")
    return model
