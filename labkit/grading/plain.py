"""An answer's result as plain data (JSON values), so that the grader compares it without ever
calling the answer's own methods.

An object whose ``__eq__`` always agrees, a list subclass with a lying ``__iter__`` or a tensor
subclass cannot fool a comparison made on what this returns: builtins are read through their
base types' C methods, arrays and tensors through numpy's and torch's C methods, and anything
else becomes ``{"$": "<type>", "repr": "..."}``, equal to no expected value.
"""

from __future__ import annotations

import math
import sys
from typing import Any

__all__ = ["describe", "same", "text", "to_plain", "value_of"]

MAX_DEPTH = 32
MAX_ITEMS = 100_000
TOO_LARGE = {"$": "result too large to grade", "repr": f"nested deeper than {MAX_DEPTH} or over {MAX_ITEMS:,} items"}


def _type_name(x: Any) -> str:
    kind = type(x)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _float(x: float) -> Any:
    return x if math.isfinite(x) else {"$": "float", "value": repr(x)}  # JSON has no nan / inf


def to_plain(x: Any, _depth: int = 0, _budget: list[int] | None = None) -> Any:
    """``x`` as JSON-ready data: the container types are list and dict (str keys), every other
    value is a bool, int, float, str, None or a ``{"$": type, ...}`` tag."""
    budget = _budget if _budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if _depth > MAX_DEPTH or budget[0] < 0:
        return TOO_LARGE
    kind = type(x)  # not isinstance: it believes an object's own `__class__`
    if x is None or kind is bool:
        return x
    if issubclass(kind, int):
        return int.__index__(x)
    if issubclass(kind, float):
        return _float(float.__float__(x))
    if issubclass(kind, str):
        return str.__str__(x)
    if issubclass(kind, (list, tuple)):
        items = []
        for item in list.__iter__(x) if issubclass(kind, list) else tuple.__iter__(x):
            items.append(to_plain(item, _depth + 1, budget))
            if budget[0] < 0:
                return TOO_LARGE
        return items
    if issubclass(kind, dict):
        pairs = []
        for k, v in dict.items(x):
            pairs.append((to_plain(k, _depth + 1, budget), to_plain(v, _depth + 1, budget)))
            if budget[0] < 0:
                return TOO_LARGE
        if all(type(k) is str for k, _ in pairs) and "$" not in dict(pairs):  # "$" marks our tags only
            return dict(pairs)
        return {"$": "dict", "items": [list(p) for p in pairs]}
    if issubclass(kind, BaseException):
        return {"$": "exception", "type": _type_name(x), "bases": [c.__name__ for c in kind.__mro__],
                "message": text(x)}
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if numpy is not None and issubclass(kind, numpy.ndarray):
        return {"$": "numpy.ndarray", "value": to_plain(numpy.ndarray.tolist(x), _depth + 1, budget)}
    if numpy is not None and issubclass(kind, numpy.generic):
        return to_plain(numpy.generic.item(x), _depth + 1, budget)
    if torch is not None and kind in (torch.Tensor, torch.nn.Parameter):
        base = torch._C.TensorBase
        return {"$": "torch.Tensor", "dtype": str(base.dtype.__get__(x)), "shape": list(base.size(x)),
                "value": to_plain(base.tolist(base.detach(x).cpu()), _depth + 1, budget)}
    return {"$": _type_name(x), "repr": _repr(x)}


def _repr(x: Any, show: Any = repr, limit: int = 200) -> str:
    try:
        shown = x if type(x) is str else show(x)
        shown = str.__str__(shown) if isinstance(shown, str) else f"<{type(x).__name__}>"
    except BaseException as e:  # an answer's broken __repr__ is still an answer to describe
        shown = f"<{show.__name__} raised {type(e).__name__}>"
    return shown if len(shown) <= limit else shown[:limit] + "..."


def text(x: Any, limit: int = 500) -> str:
    """``str(x)`` that never raises and stays short: for messages of exceptions an answer raised."""
    return _repr(x, str, limit)


def value_of(plain: Any) -> Any:
    """The comparable value: an array's or a tensor's nested list, anything else as it is."""
    if isinstance(plain, dict) and plain.get("$") in ("numpy.ndarray", "torch.Tensor") and "value" in plain:
        return plain["value"]
    return plain


def describe(plain: Any) -> str:
    """What a learner reads for a value: its repr, or its type and repr for tagged values."""
    if isinstance(plain, dict) and "$" in plain:
        kind = plain["$"]
        if kind == "exception":
            return f"{plain.get('type')}({plain.get('message')!r})"
        if kind in ("numpy.ndarray", "torch.Tensor"):
            return f"{kind} {_repr(plain.get('value'))}"
        if kind == "dict":
            return "{" + ", ".join(f"{_repr(item[0])}: {_repr(item[1])}" for item in plain.get("items", [])
                                   if isinstance(item, list) and len(item) == 2) + "}"
        return f"a {kind}: {plain.get('repr', plain.get('value', ''))}"
    return _repr(plain)


def same(a: Any, b: Any) -> bool:
    """Plain values equal, as a learner means it: 4 and 4.0 are the same number, True is not 1."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
