"""The largest batch that fits, found in a handful of trials over any ``trial(n) -> Trial``.

The guide binary-searches from an arbitrary start, one forward pass per step (`labkit.guide`).
Memory at inference grows almost linearly with the batch (weights are fixed, activations scale
with it), so a probe and a scout predict the answer, and each further trial refits where it is
measured, until n fits and n + 1 provably does not.

Every constant below was set on the curves recorded on an H200
(bench/results/2026-11-27-h200-memory-curve.json, replayed by
tests/test_memory.py::test_search_on_a_recorded_gpu_curve_is_exact_and_short) and on fuzzed
curves (tests/test_memory.py::test_search_is_exact_and_never_much_worse_than_binary_search).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from labkit.memory.checks import whole_number

__all__ = ["Trial", "MaxBatch", "search_max_batch"]


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


# A fit whose peak is this close to the budget was measured under the allocator's pressure: it
# has given back its cache and packs tighter than the line through looser fits says (in the
# recorded curves reserved/allocated falls to about 1.2 at the cap), so the guess rounds up.
PRESSED = 0.97
# The scout runs at 1/SCOUT_DIVISOR of the batch the probe's bytes per input would fill: below
# the cap even where the allocator reserves far more than the tensors (the recorded float16
# curve), so it fits and gives the line its second point.
SCOUT_DIVISOR = 2
# Predicted steps in a row that make little progress before the next step is forced: one slow
# step is the line's usual last correction near the cap, two mean it misreads the curve.
SLOW_STEPS = 2
# A closed bracket's predicted step is slow when it keeps more than this share of the bracket
# (bisection keeps half); an open one's when it grows the largest fit by less than 1/OPEN_SLOW of
# itself, or by fewer than MIN_GROWTH inputs.
CLOSED_SLOW = 0.75
OPEN_SLOW = 8
MIN_GROWTH = 2
# A forced step while nothing has failed grows the largest fit at most this many times over
# (doubling: a curve the line misreads costs at most a binary search's steps to bracket).
GROWTH = 2


class _Search:
    """One search's state: the bracket (``lo`` fits, ``hi`` does not) and what trials measured.

    The steps, in order: `probe` (n = 1) sets the scale; `scout` sets the line; `predict` aims
    at the budget from the line (or from a secant across it); when predictions keep making little
    progress (`pace`), `force` takes the next step: `bisect` a closed bracket, or `grow` an open
    one to where the tensors alone would fill the budget.
    """

    def __init__(self, trial: Callable[[int], Trial], budget_bytes: int, limit: int, base_bytes: int) -> None:
        self.trial, self.budget, self.limit, self.base = trial, budget_bytes, limit, base_bytes
        self.result = MaxBatch(0, budget_bytes=budget_bytes, limit=limit)
        self.fitted: dict[int, tuple[int, int]] = {}  # n -> (peak, allocated), for fits that measured a peak
        self.over: dict[int, int] = {}  # n -> peak, for trials over budget that still measured one
        self.lo, self.hi = 0, limit + 1  # lo fits (0: nothing yet); hi does not (limit + 1: nothing failed yet)
        self.slow = 0  # predicted steps in a row that made little progress
        self.unbounded = 0  # predicted steps taken while nothing has failed

    def run(self) -> MaxBatch:
        self.attempt(self.probe())
        if self.lo not in (0, self.limit):  # something fits, and the limit is above 1
            self.attempt(self.scout())
            while self.hi - self.lo > 1:
                self.step()
        self.result.batch = self.lo
        return self.result

    @property
    def closed(self) -> bool:
        """Something has failed: the answer lies below ``hi``."""
        return self.hi <= self.limit

    def attempt(self, n: int) -> None:
        t = self.trial(n)
        self.result.trials.append(t)
        if t.fits:
            self.lo = max(self.lo, n)
            if t.peak_bytes:
                self.fitted[n] = (t.peak_bytes, t.allocated_bytes if t.allocated_bytes is not None else t.peak_bytes)
        else:
            self.hi = min(self.hi, n)
            if t.peak_bytes is not None:
                self.over[n] = t.peak_bytes

    def probe(self) -> int:
        """One input: it fits if anything does, and its bytes set the scout's scale."""
        return 1

    def scout(self) -> int:
        """Half the batch the probe's bytes per input would fill (base bytes are not the input's;
        a probe that measured nothing counts its fixed costs as the input's)."""
        per_input = max(1, self.fitted[1][1] - self.base) if 1 in self.fitted else 1
        return min(self.limit, max(2, (self.budget - self.base) // per_input // SCOUT_DIVISOR))

    def step(self) -> None:
        width, start = self.hi - self.lo, self.lo
        # more predicted steps with nothing failed than doubling would take to reach the limit: force
        forced = self.slow >= SLOW_STEPS or self.unbounded > self.limit.bit_length()
        guess = None if forced else self.predict()
        self.attempt(self.force() if guess is None else self.follow(guess))
        self.pace(guess, width, start)

    def line(self) -> tuple[int, int, int, float] | None:
        """The largest fit (batch, peak, allocated) and the allocated bytes per input through the
        two largest fits; None while there are fewer than two or that slope is not positive."""
        if len(self.fitted) < 2:
            return None
        b, (peak, alloc) = max(self.fitted.items())
        a = max(n for n in self.fitted if n < b)
        slope = (alloc - self.fitted[a][1]) / (b - a)
        return (b, peak, alloc, slope) if slope > 0 and alloc > 0 else None

    def tensor_bound(self, fit: tuple[int, int, int, float]) -> float:
        """Where the allocated bytes alone would reach the budget: past it nothing fits."""
        b, _, alloc, slope = fit
        return b + (self.budget - alloc) / slope

    def predict(self) -> float | None:
        """Where the budget is reached, by the reserved/allocated ratio of the largest fit; None
        without a line through the largest fit (the next step is then forced)."""
        if self.lo not in self.fitted or len(self.fitted) < 2:
            return None
        b, (peak, _) = max(self.fitted.items())
        hi = self.hi
        if hi in self.over and self.over[hi] > peak:  # a peak on each side of the budget: the secant
            return b + (self.budget - peak) * (hi - b) / (self.over[hi] - peak)
        if (fit := self.line()) is None:
            return None
        b, peak, alloc, slope = fit
        at_ratio = b + (self.budget * alloc / peak - alloc) / slope
        last = self.result.trials[-1]
        if last.fits and last.batch == b and len(self.result.trials) > 2 and peak < PRESSED * self.budget:
            return (at_ratio + self.tensor_bound(fit)) / 2  # measured far from the cap and still fits: aim higher
        return at_ratio

    def follow(self, guess: float) -> int:
        """The batch a prediction names, kept inside the bracket."""
        if guess >= self.hi:  # a failure contradicts the line; past the limit means: try the limit
            return self.bisect() if self.closed else self.limit
        # Near the cap the allocator packs tighter than the line says: round up there
        pressed = self.fitted[self.lo][0] >= PRESSED * self.budget
        return min(max(math.ceil(guess) if pressed else math.floor(guess), self.lo + 1), self.hi - 1)

    def force(self) -> int:
        """The step taken without a prediction, or when predictions keep making little progress."""
        return self.bisect() if self.closed else self.grow()

    def bisect(self) -> int:
        """Halfway across a closed bracket: what the line cannot do, halving can."""
        return (self.lo + self.hi) // 2

    def grow(self) -> int:
        """Nothing failed yet: up to where the tensors alone would fill the budget, at most
        `GROWTH` times the largest fit."""
        fit = self.line()
        most = GROWTH * self.lo
        return min(self.limit, max(self.lo + 1, min(most, math.floor(self.tensor_bound(fit)) if fit else most)))

    def pace(self, guess: float | None, width: int, start: int) -> None:
        """Count slow predicted steps; after a forced step, the next slow prediction forces another."""
        if guess is None:
            self.slow = min(self.slow, 1)
        elif self.closed:
            self.slow = self.slow + 1 if self.hi - self.lo > CLOSED_SLOW * width else 0
        else:
            self.unbounded += 1
            self.slow = self.slow + 1 if self.lo - start < max(MIN_GROWTH, start // OPEN_SLOW) else 0


def search_max_batch(trial: Callable[[int], Trial], budget_bytes: float, *, limit: float = 1 << 16,
                     base_bytes: float = 0) -> MaxBatch:
    """The largest n ≤ ``limit`` with ``trial(n).fits``, assuming fitting is monotone in n.

    Tensor bytes grow linearly with the batch, but what the budget bounds on a GPU is what the
    caching allocator *reserves*, and that is not linear (bench/results/2026-11-27-h200-memory-curve.json:
    far from the cap it keeps freed blocks cached, close to it it releases them and packs
    tighter). So the search fits its line to the allocated bytes and predicts with the
    reserved/allocated ratio of its largest fit (`_Search` names the steps). Out of memory
    leaves no peak, so the next guess falls back to the line; a simulated trial that overflows
    keeps its peak, and the secant across the budget is used. The answer is exact whatever the
    curve; a curve the line misreads costs more trials (at most about four binary searches).
    ``base_bytes``: what is held before any input (the weights), so that the scout is sized by
    what one input adds. Budgets may be floats (rounded down to whole bytes); ``limit`` must be
    a whole number of at least 1.
    """
    budget = whole_number(budget_bytes, "budget_bytes", minimum=0, round_down=True)
    base = whole_number(base_bytes, "base_bytes", minimum=0, round_down=True)
    return _Search(trial, budget, whole_number(limit, "limit", minimum=1), base).run()
