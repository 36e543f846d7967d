"""labkit.partition.balanced_cuts: exact, contiguous, non-empty, deterministic."""

from __future__ import annotations

import itertools
import random

import pytest

from labkit.partition import balanced_cuts


def largest(sizes, cuts) -> float:
    return max(sum(sizes[a:b]) for a, b in itertools.pairwise(cuts))


def every_split(n: int, parts: int):
    for inner in itertools.combinations(range(1, n), parts - 1):
        yield [0, *inner, n]


def test_boundaries_are_contiguous_non_empty_and_complete():
    cuts = balanced_cuts([3, 1, 4, 1, 5, 9, 2, 6], 3)
    assert cuts[0] == 0 and cuts[-1] == 8 and len(cuts) == 4
    assert all(a < b for a, b in itertools.pairwise(cuts))


def test_least_largest_part_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        sizes = [rng.choice([0, 1, 2, 5, 10, 100]) * rng.random() for _ in range(n)]
        for parts in range(1, n + 1):
            cuts = balanced_cuts(sizes, parts)
            assert len(cuts) == parts + 1
            assert largest(sizes, cuts) == min(largest(sizes, c) for c in every_split(n, parts))


def test_equal_sizes_split_evenly():
    for parts, width in [(1, 8), (2, 4), (4, 2), (8, 1)]:
        assert balanced_cuts([7] * 8, parts) == list(range(0, 9, width))


def test_a_heavy_item_closes_its_part_and_the_rest_stay_even():
    # the first part closes right after the heavy item (the greedy split it replaces did too)
    assert balanced_cuts([3, 10101, 3, 3], 2) == [0, 2, 4]
    # 100 sets the largest part wherever the other cuts go: the light items are shared evenly
    assert balanced_cuts([1, 1, 1, 1, 100], 3) == [0, 2, 4, 5]
    assert balanced_cuts([100, 1, 1, 1, 1], 3) == [0, 1, 3, 5]


@pytest.mark.parametrize("parts", [0, -1, 4])
def test_bad_part_counts_raise(parts):
    with pytest.raises(ValueError, match="cannot cut"):
        balanced_cuts([1, 2, 3], parts)


def test_empty_and_bad_sizes_raise():
    with pytest.raises(ValueError):
        balanced_cuts([], 1)
    with pytest.raises(ValueError, match="finite"):
        balanced_cuts([1.0, float("nan")], 1)
    with pytest.raises(ValueError, match="non-negative"):
        balanced_cuts([1, -2], 2)
