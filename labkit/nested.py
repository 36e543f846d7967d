"""One walk over nested outputs: the tensors inside tuples, lists, dicts and named tuples.

Models return a tensor, or a tuple/list/dict of them (a named tuple, a dict of heads); code that
moves, counts or splits outputs walks that structure the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["map_tensors", "tensors_in"]


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it, the structure kept: tuples, lists and
    named tuples keep their type, mappings become dicts, anything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [map_tensors(fn, v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # a named tuple takes fields
    return obj


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj``, in order (mappings in their insertion order)."""
    found: list[torch.Tensor] = []
    map_tensors(found.append, obj)
    return found
