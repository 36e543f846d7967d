"""labkit.timeline: StageEvent, busy time, bubble."""

from __future__ import annotations

import pytest

from labkit.timeline import StageEvent, bubble_fraction, busy_s


def test_busy_time_per_stage_and_in_all():
    timeline = [StageEvent(0, 1, 0, 0), StageEvent(1, 3, 0, 1), StageEvent(1, 1.5, 1, 0)]
    assert busy_s(timeline, 0) == pytest.approx(3.0)
    assert busy_s(timeline, 1) == pytest.approx(0.5)
    assert busy_s(timeline) == pytest.approx(3.5)
    assert busy_s(timeline, 2) == 0.0 and busy_s([]) == 0.0


def test_events_sort_by_start_then_end():
    a, b = StageEvent(1.0, 2.0, 0, 1), StageEvent(0.0, 3.0, 1, 0)
    assert sorted([a, b]) == [b, a]
    assert (a.start_s, a.end_s, a.stage, a.item) == (1.0, 2.0, 0, 1)


def test_bubble_fraction_on_a_hand_made_timeline():
    # two stages, two items of 1 s each: stage 0 busy 0-2, stage 1 busy 1-3
    timeline = [StageEvent(0, 1, 0, 0), StageEvent(1, 2, 0, 1), StageEvent(1, 2, 1, 0), StageEvent(2, 3, 1, 1)]
    assert bubble_fraction(timeline, 2) == pytest.approx(1 - 4 / 6)
    # the same work one stage at a time (no pipelining): half of the stage-time is idle
    sequential = [StageEvent(0, 1, 0, 0), StageEvent(1, 2, 1, 0), StageEvent(2, 3, 0, 1), StageEvent(3, 4, 1, 1)]
    assert bubble_fraction(sequential, 2) == pytest.approx(0.5)
    # measured from the first start, not from 0
    shifted = [StageEvent(10, 12, 0, 0), StageEvent(12, 13, 1, 0)]
    assert bubble_fraction(shifted, 2) == pytest.approx(1 - 3 / 6)
    # perfect overlap: no bubble
    assert bubble_fraction([StageEvent(0, 2, 0, 0), StageEvent(0, 2, 1, 0)], 2) == pytest.approx(0.0)
    # stages that never ran count as idle
    assert bubble_fraction([StageEvent(0, 1, 0, 0)], 3) == pytest.approx(2 / 3)


def test_bubble_fraction_edge_cases():
    assert bubble_fraction([], 2) == 0.0
    assert bubble_fraction([StageEvent(1, 1, 0, 0), StageEvent(1, 1, 1, 0)], 2) == 0.0  # zero span

