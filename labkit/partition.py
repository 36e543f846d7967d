"""One contiguous split of a sequence of sizes into balanced parts.

Pipeline stages, model-parallel placement and checkpoint segments all cut an ordered list of
layers into contiguous runs, and each is as slow (or as large) as its largest run: the cut that
matters is the one whose largest part is least.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate

__all__ = ["balanced_cuts"]


def balanced_cuts(sizes: Sequence[float], parts: int) -> list[int]:
    """Boundaries ``b[0] = 0 < b[1] < ... < b[parts] = len(sizes)`` of the contiguous split of
    ``sizes`` into ``parts`` non-empty runs whose largest sum is least (exact, not greedy).

    Many splits share that least largest sum (one heavy layer sets it, whatever happens around
    it); among them the one whose run sums are most even (least sum of squares) is returned, and
    of those the one with the earliest cuts, so the answer is deterministic.
    """
    n = len(sizes)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} sizes into {parts} non-empty parts")
    if any(not math.isfinite(s) or s < 0 for s in sizes):
        raise ValueError(f"sizes must be finite and non-negative, got {list(sizes)}")
    prefix = [0, *accumulate(sizes)]

    def run(i: int, j: int) -> float:  # the sum of sizes[i:j]; the same float wherever it is asked
        return prefix[j] - prefix[i]

    bound = _least_largest(run, n, parts)
    # most_even[k][i]: (sum of squares, first cut) of sizes[i:] in k runs, each at most `bound`
    most_even: list[dict[int, tuple[float, int]]] = [{}, {i: (run(i, n) ** 2, n) for i in range(n) if run(i, n) <= bound}]
    for k in range(2, parts + 1):
        level: dict[int, tuple[float, int]] = {}
        for i in range(n - k + 1):
            options = [(run(i, j) ** 2 + most_even[k - 1][j][0], j) for j in range(i + 1, n - k + 2)
                       if run(i, j) <= bound and j in most_even[k - 1]]
            if options:
                level[i] = min(options)
        most_even.append(level)
    cuts, i = [0], 0
    for k in range(parts, 0, -1):
        i = most_even[k][i][1]
        cuts.append(i)
    return cuts


def _least_largest(run: Callable[[int, int], float], n: int, parts: int) -> float:
    """The least largest run sum over all contiguous splits of ``n`` sizes into ``parts`` runs."""
    best = [run(i, n) for i in range(n)]  # one run: everything from i on
    for k in range(2, parts + 1):
        best = [min(max(run(i, j), best[j]) for j in range(i + 1, n - k + 2)) if i <= n - k else math.inf
                for i in range(n)]
    return best[0]
