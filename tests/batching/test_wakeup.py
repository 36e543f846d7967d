"""The scheduler's alarm (`labkit.batching.wakeup.Wakeup`) on its own."""

from __future__ import annotations

import asyncio

import pytest

from labkit.batching.wakeup import Wakeup

from .conftest import run


def test_set_wakes_the_sleeper_and_a_set_with_nobody_asleep_is_dropped():
    async def main():
        loop = asyncio.get_running_loop()
        wake = Wakeup(loop)
        wake.set()  # nobody asleep: dropped, so the next sleep really sleeps
        sleeping = wake.sleep()
        await asyncio.sleep(0.01)
        slept = not sleeping.done()
        wake.set()
        await asyncio.wait_for(sleeping, 1)
        return slept

    assert run(main())


def test_sleep_until_a_deadline_ends_on_time_and_its_timer_is_dropped_when_woken_first():
    async def main():
        loop = asyncio.get_running_loop()
        wake = Wakeup(loop)
        t0 = loop.time()
        await wake.sleep(t0 + 0.05)
        timed = loop.time() - t0
        early = wake.sleep(loop.time() + 10)
        wake.set()
        await early
        return timed, wake._timer

    timed, timer = run(main())
    assert 0.045 <= timed < 0.5
    assert timer is None


def test_a_sleeper_cancelled_mid_sleep_leaves_the_next_sleep_working():
    async def main():
        loop = asyncio.get_running_loop()
        wake = Wakeup(loop)
        first = wake.sleep(loop.time() + 10)
        first.cancel()
        second = wake.sleep()
        wake.set()
        await asyncio.wait_for(second, 1)
        with pytest.raises(asyncio.CancelledError):
            await first

    run(main())
