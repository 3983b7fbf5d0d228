"""KeyedLanes behaviour in time, on virtual clocks: exact instants, no real sleeping."""

from __future__ import annotations

import math

import anyio
import pytest

from anyio_keyq import KeyedLanes

from .conftest import virtual_backend as anyio_backend  # noqa: F401
from .helpers import echo

pytestmark = pytest.mark.anyio


class TestIdleTimeout:
    async def test_idle_lane_lingers_then_goes(self) -> None:
        async with KeyedLanes[str](idle_timeout=5) as lanes:
            start = anyio.current_time()
            await lanes.run("k", echo, 1)
            assert "k" in lanes
            await anyio.sleep(4.5)
            await lanes.run("k", echo, 2)  # revived: the clock starts again
            await anyio.sleep(4.5)
            assert "k" in lanes
            await anyio.sleep(1)
            assert "k" not in lanes
            assert anyio.current_time() - start == 10
            await lanes.run("k", echo, 3)
            exit_at = anyio.current_time()
        # leaving the block does not wait for idle_timeout
        assert anyio.current_time() == exit_at
        assert len(lanes) == 0

    async def test_a_timed_jobs_lane_lingers_too(self) -> None:
        async with KeyedLanes[str](idle_timeout=5) as lanes:
            start = anyio.current_time()
            assert await lanes.run("k", echo, 1, timeout=10) == 1
            await anyio.sleep(4.5)
            assert "k" in lanes
            await anyio.sleep(1)
            assert "k" not in lanes
            assert anyio.current_time() - start == 5.5


class TestTimeouts:
    async def test_job_over_its_limit_times_out_and_lane_goes_on(self) -> None:
        async with KeyedLanes[str](timeout=2) as lanes:
            t0 = anyio.current_time()
            with pytest.raises(TimeoutError, match="time limit of 2.0 s"):
                await lanes.run("k", anyio.sleep, 10)
            assert anyio.current_time() - t0 == 2
            assert await lanes.run("k", echo, "next") == "next"
            # A per-job timeout overrides the default, and counts from the start.
            first = lanes.submit_nowait("k", anyio.sleep, 3, timeout=math.inf)
            second = lanes.submit_nowait("k", anyio.sleep, 1.5, timeout=1)
            await first
            t1 = anyio.current_time()
            with pytest.raises(TimeoutError):
                await second
            assert anyio.current_time() - t1 == 1
        stats = lanes.statistics()
        assert (stats.timed_out, stats.failed, stats.completed) == (2, 0, 2)

    async def test_timeout_does_not_leak_into_the_next_job(self) -> None:
        async with KeyedLanes[str](limit=1) as lanes:
            lanes.submit_nowait("a", echo, 1, timeout=1)
            slow = lanes.submit_nowait("b", anyio.sleep, 5)
            await slow
        assert lanes.statistics().timed_out == 0

    async def test_a_timed_job_handed_on_by_an_untimed_one_keeps_its_limit(self) -> None:
        # One permit: each job's worker hands it straight to the next ready job, in
        # the cancel scope it already has; the timed job still gets its own deadline.
        async with KeyedLanes[str](limit=1) as lanes:
            t0 = anyio.current_time()
            first = lanes.submit_nowait("a", anyio.sleep, 1)
            timed = lanes.submit_nowait("b", anyio.sleep, 10, timeout=2)
            last = lanes.submit_nowait("c", anyio.sleep, 1)
            await first
            with pytest.raises(TimeoutError):
                await timed
            assert anyio.current_time() - t0 == 3
            await last
            assert anyio.current_time() - t0 == 4
        stats = lanes.statistics()
        assert (stats.timed_out, stats.completed) == (1, 2)
