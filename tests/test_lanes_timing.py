"""KeyedLanes behaviour in time, on virtual clocks: exact instants, no real sleeping."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

from anyio_keyq import JobStatus, KeyedLanes

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


class TestParkedWorkers:
    """A worker parks in the cancel scope it ran its last job in, unless that scope was
    spent by a cancel or a deadline: entering and leaving a scope costs 5 to 12 µs."""

    @staticmethod
    def count_scopes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
        # Counts every scope made through ``anyio.CancelScope``: in these tests, with
        # default options, only the workers make any.
        made = [0]
        real = anyio.CancelScope

        def counting(*args: Any, **kwargs: Any) -> anyio.CancelScope:
            made[0] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(anyio, "CancelScope", counting)
        return made

    async def test_a_worker_wakes_in_the_scope_it_parked_in(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with KeyedLanes[int]() as lanes:
            made = self.count_scopes(monkeypatch)
            for key in range(5):
                assert await lanes.submit_nowait(key, echo, key) == key
                await anyio.wait_all_tasks_blocked()
                assert lanes.statistics().idle_workers == 1  # parked between jobs
            assert made == [1]
            monkeypatch.undo()

    async def test_a_worker_parks_in_its_scope_after_a_timed_job(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The job's deadline is lifted before the worker parks: the next job, started
        # long after it, runs to its end.
        async with KeyedLanes[str]() as lanes:
            made = self.count_scopes(monkeypatch)
            assert await lanes.run("a", echo, 1, timeout=2) == 1
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(10)
            t0 = anyio.current_time()
            await lanes.run("b", anyio.sleep, 5)
            assert anyio.current_time() - t0 == 5
            assert made == [1]
            monkeypatch.undo()
        assert lanes.statistics().timed_out == 0

    @pytest.mark.parametrize("how", ["timeout", "cancel"])
    async def test_a_spent_scope_is_left_before_parking(
        self, monkeypatch: pytest.MonkeyPatch, how: str
    ) -> None:
        async with KeyedLanes[str]() as lanes:
            made = self.count_scopes(monkeypatch)
            job = lanes.submit_nowait("a", anyio.sleep, 10, timeout=2 if how == "timeout" else None)
            await anyio.wait_all_tasks_blocked()
            if how == "cancel":
                job.cancel()
            await job.wait()
            if how == "timeout":
                assert isinstance(job.exception(), TimeoutError)
                assert lanes.statistics().timed_out == 1
            else:
                assert job.status is JobStatus.CANCELLED
            await anyio.wait_all_tasks_blocked()
            assert lanes.statistics().idle_workers == 1
            assert made == [2]  # the job's, then a fresh one to park in
            t0 = anyio.current_time()
            await lanes.run("b", anyio.sleep, 5)  # not cut short by the spent scope
            assert anyio.current_time() - t0 == 5
            assert made == [2]
            monkeypatch.undo()

    async def test_a_job_cancelled_before_it_starts_leaves_the_scope_unspent(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with KeyedLanes[str]() as lanes:
            made = self.count_scopes(monkeypatch)
            assert await lanes.run("a", echo, 1) == 1
            await anyio.wait_all_tasks_blocked()
            job = lanes.submit_nowait("b", anyio.sleep, 10)  # handed to the parked worker
            job.cancel()  # before the worker wakes: its function is never called
            await job.wait()
            assert (job.status, job.attempts) == (JobStatus.CANCELLED, 0)
            await anyio.wait_all_tasks_blocked()
            assert lanes.statistics().idle_workers == 1
            t0 = anyio.current_time()
            await lanes.run("c", anyio.sleep, 5)
            assert anyio.current_time() - t0 == 5
            assert made == [1]  # nothing cancelled the scope: the worker kept it
            monkeypatch.undo()

    async def test_a_job_that_swallows_its_cancel_leaves_a_spent_scope(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def stubborn() -> str:
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                return "kept going"
            return "slept"

        async with KeyedLanes[str]() as lanes:
            made = self.count_scopes(monkeypatch)
            job = lanes.submit_nowait("a", stubborn)
            await anyio.wait_all_tasks_blocked()
            job.cancel()
            assert await job == "kept going"  # its outcome is kept
            await anyio.wait_all_tasks_blocked()
            assert lanes.statistics().idle_workers == 1
            t0 = anyio.current_time()
            assert await lanes.run("b", stubborn) == "slept"  # not cancelled at once
            assert anyio.current_time() - t0 == 10
            assert made == [2]
            monkeypatch.undo()
