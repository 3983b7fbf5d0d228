"""KeyedLanes semantics, each on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import gc
import logging
import math
import re
import weakref
from collections import defaultdict
from contextvars import ContextVar
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from anyio_keyq import (
    Job,
    JobCancelled,
    JobStatus,
    KeyedLanes,
    LaneDeadlock,
    LaneFull,
    LanesClosed,
    LanesStatistics,
)

from .helpers import assert_cancel_point, assert_schedule_point, boom, echo

pytestmark = pytest.mark.anyio


class Gate:
    """Jobs that wait until the test opens their gate, recording what happened."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.events: dict[Any, anyio.Event] = defaultdict(anyio.Event)
        self.running = 0
        self.peak = 0

    async def job(self, tag: Any) -> Any:
        self.started.append(tag)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.events[tag].wait()
        finally:
            self.running -= 1
        self.finished.append(tag)
        return tag

    def open(self, tag: Any) -> None:
        self.events[tag].set()


def assert_balanced(stats: LanesStatistics) -> None:
    assert stats.submitted == (
        stats.queued
        + stats.running
        + stats.completed
        + stats.failed
        + stats.timed_out
        + stats.cancelled
    )


class TestOrderAndParallelism:
    async def test_jobs_of_one_key_run_in_order_one_at_a_time(self) -> None:
        log: list[tuple[str, int]] = []
        active = 0

        async def job(i: int) -> None:
            nonlocal active
            active += 1
            assert active == 1
            log.append(("start", i))
            await checkpoint()
            await checkpoint()
            log.append(("end", i))
            active -= 1

        async with KeyedLanes[str]() as lanes:
            for i in range(20):
                lanes.submit_nowait("k", job, i)
        assert log == [(what, i) for i in range(20) for what in ("start", "end")]

    async def test_different_keys_run_in_parallel(self) -> None:
        gate = Gate()
        async with KeyedLanes[int](limit=None) as lanes:
            jobs = [lanes.submit_nowait(k, gate.job, k) for k in range(5)]
            await anyio.wait_all_tasks_blocked()
            assert sorted(gate.started) == [0, 1, 2, 3, 4]
            assert lanes.statistics().running == 5
            for k in range(5):
                gate.open(k)
        assert [j.result() for j in jobs] == [0, 1, 2, 3, 4]

    async def test_global_limit_is_reached_and_never_exceeded(self) -> None:
        gate = Gate()
        async with KeyedLanes[int](limit=3) as lanes:
            for k in range(10):
                lanes.submit_nowait(k, gate.job, k)
            await anyio.wait_all_tasks_blocked()
            assert gate.running == 3
            stats = lanes.statistics()
            assert (stats.running, stats.queued) == (3, 7)
            for k in range(10):
                gate.open(k)
                await anyio.wait_all_tasks_blocked()
                assert gate.running <= 3
        assert gate.peak == 3
        assert lanes.statistics().peak_running == 3

    async def test_shared_capacity_limiter_is_honoured(self) -> None:
        limiter = anyio.CapacityLimiter(2)
        gate = Gate()
        async with KeyedLanes[int](limit=limiter) as lanes:
            for k in range(6):
                lanes.submit_nowait(k, gate.job, k)
            await anyio.wait_all_tasks_blocked()
            assert gate.running == 2
            assert limiter.borrowed_tokens == 2

            async def outsider() -> None:
                async with limiter:  # an outside user of the same limiter
                    gate.started.append("outsider")
                    assert limiter.borrowed_tokens <= 2

            async with anyio.create_task_group() as tg:
                tg.start_soon(outsider)
                await anyio.wait_all_tasks_blocked()
                for k in range(6):
                    gate.open(k)
                    await anyio.wait_all_tasks_blocked()
        assert gate.peak == 2
        # the lanes queued for a token before the outsider, which comes next in FIFO order
        assert gate.started.index("outsider") == 3
        assert limiter.borrowed_tokens == 0

    async def test_shared_limiter_freed_from_outside_wakes_lanes(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        async with KeyedLanes[str](limit=limiter) as lanes:
            job = lanes.submit_nowait("a", echo, 1)
            await anyio.wait_all_tasks_blocked()
            assert job.status is JobStatus.QUEUED
            limiter.release()
            assert await job == 1
        assert limiter.borrowed_tokens == 0

    async def test_fair_turns_between_a_busy_key_and_a_light_one(self) -> None:
        order: list[str] = []

        async def job(key: str) -> None:
            order.append(key)
            await checkpoint()

        async with KeyedLanes[str](limit=1) as lanes:
            for _ in range(1000):
                lanes.submit_nowait("busy", job, "busy")
            lanes.submit_nowait("light", job, "light")
        # The light key waits for at most one busy job, not for a thousand.
        assert order.index("light") <= 2

    @pytest.mark.parametrize("per_key", [2, 3])
    async def test_per_key_allows_overlap_but_keeps_start_order(self, per_key: int) -> None:
        gate = Gate()
        async with KeyedLanes[str](per_key=per_key) as lanes:
            for i in range(8):
                lanes.submit_nowait("k", gate.job, i)
            await anyio.wait_all_tasks_blocked()
            assert gate.running == per_key
            for i in reversed(range(8)):
                gate.open(i)
                await anyio.wait_all_tasks_blocked()
                assert gate.running <= per_key
        assert gate.started == list(range(8))
        assert gate.peak == per_key


class TestFailureIsolation:
    async def test_exception_goes_to_the_awaiter_and_the_lane_goes_on(self) -> None:
        async with KeyedLanes[str]() as lanes:
            with pytest.raises(ValueError, match="^first$"):
                await lanes.run("k", boom, "first")
            assert await lanes.run("k", echo, 2) == 2
            failed = lanes.submit_nowait("k", boom, "second")
            after = lanes.submit_nowait("k", echo, 3)
            with pytest.raises(ValueError, match="^second$"):
                await failed
            assert await after == 3
        stats = lanes.statistics()
        assert (stats.completed, stats.failed) == (2, 2)

    async def test_unretrieved_exception_is_logged_when_handle_is_collected(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with KeyedLanes[str]() as lanes:
            lanes.submit_nowait("k", boom, "nobody looked")
            retrieved = lanes.submit_nowait("k", boom, "seen")
        with pytest.raises(ValueError, match="seen"):
            await retrieved
        del retrieved
        gc.collect()
        errors = [r for r in caplog.records if r.name == "anyio_keyq"]
        assert len(errors) == 1
        assert errors[0].levelno == logging.ERROR
        assert "never retrieved" in errors[0].getMessage()
        assert errors[0].exc_info is not None
        assert str(errors[0].exc_info[1]) == "nobody looked"

    async def test_exception_retrieved_late_is_not_reported(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("k", boom, "late")
        assert isinstance(job.exception(), ValueError)
        del job
        gc.collect()
        assert not [r for r in caplog.records if r.name == "anyio_keyq"]

    async def test_cancellations_are_never_reported(self, caplog: pytest.LogCaptureFixture) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            running = lanes.submit_nowait("k", gate.job, 1)
            queued = lanes.submit_nowait("k", gate.job, 2)
            await anyio.wait_all_tasks_blocked()
            running.cancel()
            queued.cancel()
        del running, queued
        gc.collect()
        assert not [r for r in caplog.records if r.name == "anyio_keyq"]

    async def test_sync_function_gives_a_clear_job_error(self) -> None:
        def not_async(x: int) -> int:
            return x

        async with KeyedLanes[str]() as lanes:
            with pytest.raises(TypeError, match="must be an async function.*not_async"):
                await lanes.run("k", not_async, 1)  # type: ignore[arg-type]


class TestBackpressure:
    async def test_submit_nowait_raises_lane_full(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](max_pending=2) as lanes:
            lanes.submit_nowait("k", gate.job, 0)  # running: not pending
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)
            lanes.submit_nowait("k", gate.job, 2)
            with pytest.raises(
                LaneFull,
                match=r"^the lane of key 'k' is full \(max_pending=2\); use 'await submit\(\)'",
            ) as info:
                lanes.submit_nowait("k", gate.job, 3)
            assert isinstance(info.value, anyio.WouldBlock)
            assert info.value.key == "k"
            lanes.submit_nowait("other", gate.job, "o")  # other lanes are unaffected
            assert lanes.pending("k") == 3
            for tag in (0, 1, 2, "o"):
                gate.open(tag)
        assert lanes.statistics().submitted == 4

    async def test_submit_waits_for_room_in_fifo_order(self) -> None:
        gate = Gate()
        accepted: list[int] = []
        async with KeyedLanes[str](max_pending=1) as lanes:
            lanes.submit_nowait("k", gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)

            async def producer(i: int) -> None:
                await lanes.submit("k", gate.job, i)
                accepted.append(i)

            async with anyio.create_task_group() as tg:
                for i in (2, 3, 4):
                    tg.start_soon(producer, i)
                    await anyio.wait_all_tasks_blocked()
                assert accepted == []
                assert lanes.statistics().waiting_for_room == 3
                assert lanes.pending("k") == 2
                with pytest.raises(LaneFull):  # waiters go first
                    lanes.submit_nowait("k", gate.job, 99)
                for i in range(5):
                    gate.open(i)
                    await anyio.wait_all_tasks_blocked()
        assert accepted == [2, 3, 4]
        assert gate.started == [0, 1, 2, 3, 4]

    async def test_run_waits_for_room(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](max_pending=1) as lanes:
            lanes.submit_nowait("k", gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)
            result: list[int] = []

            async def runner() -> None:
                result.append(await lanes.run("k", echo, 2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(runner)
                await anyio.wait_all_tasks_blocked()
                assert lanes.statistics().waiting_for_room == 1
                gate.open(0)
                gate.open(1)
        assert result == [2]

    async def test_cancelled_room_waiter_leaves_no_trace(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](max_pending=1) as lanes:
            lanes.submit_nowait("k", gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)
            with anyio.move_on_after(0.01):
                await lanes.submit("k", gate.job, 2)
            stats = lanes.statistics()
            assert (stats.waiting_for_room, stats.submitted) == (0, 2)
            gate.open(0)
            gate.open(1)
        assert gate.started == [0, 1]

    async def test_waiter_cancelled_as_it_is_admitted_loses_nothing(self) -> None:
        gate = Gate()
        scope = anyio.CancelScope()
        outcome: list[Job[Any]] = []

        async def first() -> None:
            await gate.events[0].wait()
            scope.cancel()  # the waiter is admitted right after this job ends

        async with KeyedLanes[str](max_pending=1) as lanes:
            lanes.submit_nowait("k", first)
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)

            async def waiter() -> None:
                with scope:
                    outcome.append(await lanes.submit("k", gate.job, 2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                gate.open(0)
            gate.open(1)
            gate.open(2)
        stats = lanes.statistics()
        assert_balanced(stats)
        assert (stats.submitted, stats.waiting_for_room) == (3, 0)
        if outcome:  # the admission won: the caller has the handle and the job ran
            assert outcome[0].result() == 2
            assert gate.started == [1, 2]
        else:  # the cancellation won: the job was withdrawn before it could start
            assert stats.cancelled == 1
            assert gate.started == [1]

    async def test_close_rejects_room_waiters(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](max_pending=1) as lanes:
            lanes.submit_nowait("k", gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            lanes.submit_nowait("k", gate.job, 1)
            errors: list[BaseException] = []

            async def waiter() -> None:
                try:
                    await lanes.submit("k", gate.job, 2)
                except LanesClosed as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                lanes.close()
            assert len(errors) == 1
            gate.open(0)
            gate.open(1)
        assert gate.finished == [0, 1]


class TestIdleTeardown:
    async def test_finished_lanes_leave_nothing_behind(self) -> None:
        async with KeyedLanes[int]() as lanes:
            for k in range(1000):
                lanes.submit_nowait(k, echo, k)
            assert len(lanes) == 1000
            await lanes.wait_idle()
            assert len(lanes) == 0
            assert lanes.keys() == ()
            assert 5 not in lanes
            assert lanes.pending(5) == 0
            assert lanes.statistics().lanes == 0

    @pytest.mark.parametrize(
        "options",
        [{}, {"timeout": 60}, {"idle_timeout": 0.01}],
        ids=["default", "general-path", "lingering"],
    )
    async def test_finished_jobs_need_no_cyclic_collector(self, options: dict[str, Any]) -> None:
        # The job that opens a lane carries the lane: once the lane is dropped, it must
        # hold no reference cycle, or every job of a new key would wait for a full
        # collection to be freed.
        gc.collect()
        gc.disable()
        try:
            options = dict(options)  # the parameter is shared between runs
            timeout = options.pop("timeout", None)
            async with KeyedLanes[str](**options) as lanes:
                first = lanes.submit_nowait("a", echo, 1, timeout=timeout)
                second = lanes.submit_nowait("a", echo, 2, timeout=timeout)
                other = lanes.submit_nowait("b", echo, 3, timeout=timeout)
                assert (await first, await second, await other) == (1, 2, 3)
                await lanes.wait_idle()
                refs = [weakref.ref(job) for job in (first, second, other)]
                del first, second, other
            # Lingering lanes are dropped when the lanes close.
            assert [ref() for ref in refs] == [None, None, None]
        finally:
            gc.enable()

    @pytest.mark.parametrize("own_context", [False, True], ids=["home", "own-context"])
    async def test_a_parked_worker_keeps_no_job_alive(self, own_context: bool) -> None:
        var: ContextVar[int] = ContextVar("var", default=0)
        async with KeyedLanes[str]() as lanes:
            if own_context:
                var.set(1)  # the job's context differs from the workers': it runs apart
            job = lanes.submit_nowait("k", echo, object())
            await job
            await anyio.wait_all_tasks_blocked()
            assert lanes.statistics().idle_workers == 1
            ref = weakref.ref(job)
            del job
            assert ref() is None

    async def test_live_lane_introspection(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            lanes.submit_nowait("a", gate.job, 1)
            lanes.submit_nowait("a", gate.job, 2)
            lanes.submit_nowait("b", gate.job, 3)
            await anyio.wait_all_tasks_blocked()
            assert "a" in lanes
            assert len(lanes) == 2
            assert set(lanes.keys()) == {"a", "b"}
            assert lanes.pending("a") == 2
            assert re.match(
                r"^<anyio_keyq.KeyedLanes at 0x[0-9a-f]+: open, 2 lanes, 2 running, 1 queued, "
                r"limit=100>$",
                repr(lanes),
            )
            for tag in (1, 2, 3):
                gate.open(tag)

    async def test_submission_racing_teardown_is_kept_in_order(self) -> None:
        order: list[int] = []

        async def job(i: int) -> None:
            order.append(i)
            await checkpoint()

        async with KeyedLanes[str]() as lanes:
            for i in range(100):
                job_ = lanes.submit_nowait("k", job, i)
                if i % 7 == 0:
                    await job_  # lane goes idle, torn down, and is rebuilt
        assert order == list(range(100))


class TestCancellation:
    async def test_queued_jobs_cancelled_while_their_lanes_wait_are_passed_over(self) -> None:
        # With one permit, every lane below waits in line; cancelling a lane's only
        # job, or the first of two, leaves the lane there for the next pick to skip.
        gate = Gate()
        async with KeyedLanes[str](limit=1) as lanes:
            lanes.submit_nowait("a", gate.job, "a")
            only = lanes.submit_nowait("b", gate.job, "b")
            first = lanes.submit_nowait("c", gate.job, "c1")
            lanes.submit_nowait("c", gate.job, "c2")
            lanes.submit_nowait("d", gate.job, "d")
            await anyio.wait_all_tasks_blocked()
            only.cancel()
            first.cancel()
            for tag in ("a", "c2", "d"):
                gate.open(tag)
        assert gate.started == ["a", "c2", "d"]
        assert only.status is first.status is JobStatus.CANCELLED
        stats = lanes.statistics()
        assert (stats.completed, stats.cancelled) == (3, 2)

    async def test_cancelled_run_caller_never_starts_queued_job(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            lanes.submit_nowait("k", gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:

                async def cancel_soon() -> None:
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_soon)
                    await lanes.run("k", gate.job, 1)
            assert scope.cancelled_caught
            gate.open(0)
        assert gate.started == [0]
        assert lanes.statistics().cancelled == 1

    async def test_cancelled_run_caller_cancels_running_job_and_waits(self) -> None:
        cleaned = False

        async def job() -> None:
            nonlocal cleaned
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await checkpoint()
                cleaned = True

        async with KeyedLanes[str]() as lanes:
            with anyio.move_on_after(0.01):
                await lanes.run("k", job)
            assert cleaned  # run() returned only after the job settled
            assert lanes.statistics().cancelled == 1
            assert await lanes.run("k", echo, 1) == 1

    async def test_job_cancel_queued_and_running(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            running = lanes.submit_nowait("k", gate.job, 0)
            queued = lanes.submit_nowait("k", gate.job, 1)
            last = lanes.submit_nowait("k", echo, 2)
            await anyio.wait_all_tasks_blocked()
            assert running.status is JobStatus.RUNNING
            queued.cancel()
            assert queued.status is JobStatus.CANCELLED
            assert lanes.pending("k") == 2
            running.cancel()
            running.cancel()  # twice is harmless
            with pytest.raises(JobCancelled, match="^the job of key 'k' was cancelled$"):
                await running
            with pytest.raises(JobCancelled):
                await queued
            assert await last == 2
            last.cancel()  # settled: nothing happens
            assert last.status is JobStatus.FINISHED
        assert gate.started == [0]
        assert lanes.statistics().cancelled == 2

    async def test_job_that_swallows_cancel_keeps_its_value(self) -> None:
        async def stubborn() -> str:
            with anyio.CancelScope() as inner:
                inner.cancel()
                await anyio.sleep_forever()
            return "kept"

        started = anyio.Event()

        async def waits() -> str:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return "swallowed"
            raise AssertionError  # pragma: no cover

        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("k", waits)
            await started.wait()
            job.cancel()
            assert await job == "swallowed"
            assert await lanes.run("k", stubborn) == "kept"

    async def test_cancelling_the_host_settles_every_handle_as_cancelled(self) -> None:
        gate = Gate()
        jobs: list[Job[Any]] = []
        with anyio.CancelScope() as outer:
            async with KeyedLanes[int](limit=2) as lanes:
                for k in range(3):
                    for i in range(3):
                        jobs.append(lanes.submit_nowait(k, gate.job, (k, i)))
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert all(job.status is JobStatus.CANCELLED for job in jobs)
        stats = lanes.statistics()
        assert stats.cancelled == 9
        assert_balanced(stats)
        assert gate.finished == []

    async def test_body_exception_cancels_jobs_and_propagates_bare(self) -> None:
        gate = Gate()
        jobs: list[Job[Any]] = []
        with pytest.raises(KeyError, match="body"):
            async with KeyedLanes[int]() as lanes:
                jobs = [lanes.submit_nowait(k % 2, gate.job, k) for k in range(4)]
                await anyio.wait_all_tasks_blocked()
                raise KeyError("body")
        assert all(job.status is JobStatus.CANCELLED for job in jobs)
        with pytest.raises(LanesClosed):
            lanes.submit_nowait(0, echo, 1)

    async def test_hosted_lanes_settle_as_cancelled_when_nursery_is_cancelled(self) -> None:
        gate = Gate()
        async with anyio.create_task_group() as tg:
            lanes = KeyedLanes[int](limit=1, task_group=tg)
            jobs = [lanes.submit_nowait(k, gate.job, k) for k in range(3)]
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert [job.status for job in jobs] == [JobStatus.CANCELLED] * 3
        with pytest.raises(LanesClosed, match="cancelled"):
            lanes.submit_nowait(0, echo, 1)

    async def test_every_handle_settles_exactly_once(self) -> None:
        gate = Gate()
        async with KeyedLanes[int](limit=2) as lanes:
            jobs = [lanes.submit_nowait(k % 3, gate.job, k) for k in range(9)]
            await anyio.wait_all_tasks_blocked()
            jobs[0].cancel()
            jobs[4].cancel()
            for k in range(9):
                gate.open(k)
        statuses = [job.status for job in jobs]
        assert statuses.count(JobStatus.CANCELLED) == 2
        assert statuses.count(JobStatus.FINISHED) == 7
        assert_balanced(lanes.statistics())


class TestClosing:
    async def test_close_refuses_new_jobs_but_runs_accepted_ones(self) -> None:
        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("k", echo, 1)
            lanes.close()
            lanes.close()
            assert lanes.closed
            with pytest.raises(LanesClosed, match="^the lanes are closed and accept no new jobs$"):
                lanes.submit_nowait("k", echo, 2)
            with pytest.raises(LanesClosed):
                await lanes.run("k", echo, 2)
            with pytest.raises(LanesClosed):
                await lanes.submit("k", echo, 2)
            assert isinstance(LanesClosed(), anyio.ClosedResourceError)
        assert await job == 1

    async def test_leaving_the_block_waits_for_every_accepted_job(self) -> None:
        done: list[int] = []

        async def slow(i: int) -> None:
            for _ in range(5):
                await checkpoint()
            done.append(i)

        async with KeyedLanes[int](limit=2) as lanes:
            for i in range(10):
                lanes.submit_nowait(i % 3, slow, i)
        assert sorted(done) == list(range(10))
        assert lanes.statistics().workers == 0

    async def test_hosted_lanes_aclose_drains(self) -> None:
        async with anyio.create_task_group() as tg:
            lanes = KeyedLanes[str](task_group=tg)
            jobs = [lanes.submit_nowait("k", echo, i) for i in range(5)]
            await lanes.aclose()
            assert [job.result() for job in jobs] == list(range(5))
            with pytest.raises(LanesClosed):
                lanes.submit_nowait("k", echo, 1)

    async def test_lanes_closed_before_they_start_refuse_jobs(self) -> None:
        lanes = KeyedLanes[str]()
        lanes.close()
        async with lanes:
            with pytest.raises(LanesClosed):
                lanes.submit_nowait("k", echo, 1)
            with pytest.raises(LanesClosed):
                await lanes.run("k", echo, 1)
        assert lanes.statistics().submitted == 0

    async def test_misuse_of_the_lifecycle(self) -> None:
        lanes = KeyedLanes[str]()
        with pytest.raises(RuntimeError, match="not running"):
            lanes.submit_nowait("k", echo, 1)
        async with lanes:
            pass
        with pytest.raises(RuntimeError, match="only once"):
            async with lanes:
                pass  # pragma: no cover
        async with anyio.create_task_group() as tg:
            hosted = KeyedLanes[str](task_group=tg)
            with pytest.raises(RuntimeError, match="aclose"):
                async with hosted:
                    pass  # pragma: no cover

    async def test_drain_cancelled_from_outside_cancels_jobs(self) -> None:
        gate = Gate()
        with anyio.move_on_after(0.01) as scope:
            async with KeyedLanes[str]() as lanes:
                job = lanes.submit_nowait("k", gate.job, 0)
        assert scope.cancelled_caught
        assert job.status is JobStatus.CANCELLED


class TestNestedCalls:
    async def test_awaiting_same_key_from_inside_raises_deadlock(self) -> None:
        async with KeyedLanes[str]() as lanes:

            async def inner() -> str:
                return "inner"

            async def outer(how: str) -> None:
                with pytest.raises(LaneDeadlock, match=r"key 'k'.*would wait forever"):
                    if how == "run":
                        await lanes.run("k", inner)
                    elif how == "submit":
                        await lanes.submit("k", inner)
                    elif how == "handle":
                        await lanes.submit_nowait("k", inner)
                    else:
                        await lanes.wait_idle("k")

            for how in ("run", "submit", "handle", "wait_idle"):
                await lanes.run("k", outer, how)
            assert lanes.statistics().failed == 0

    async def test_submit_nowait_from_inside_is_allowed(self) -> None:
        order: list[str] = []

        async def follow_up() -> None:
            order.append("follow-up")

        async with KeyedLanes[str]() as lanes:

            async def first() -> None:
                lanes.submit_nowait("k", follow_up)
                await checkpoint()
                order.append("first")

            await lanes.run("k", first)
        assert order == ["first", "follow-up"]

    async def test_cycle_across_keys_is_detected(self) -> None:
        async with KeyedLanes[str]() as lanes:

            async def on_b() -> None:
                await lanes.run("a", echo, 1)

            async def on_a() -> None:
                await lanes.run("b", on_b)

            with pytest.raises(LaneDeadlock, match="key 'a'"):
                await lanes.run("a", on_a)

    async def test_cycle_through_an_awaited_handle_is_detected(self) -> None:
        async with KeyedLanes[str]() as lanes:

            async def on_b() -> None:
                await checkpoint()
                await lanes.run("a", echo, 1)

            async def on_a() -> None:
                await lanes.submit_nowait("b", on_b)

            with pytest.raises(LaneDeadlock):
                await lanes.run("a", on_a)

    async def test_cycle_between_independent_jobs_is_detected(self) -> None:
        both_running = anyio.Event()
        arrived = 0
        outcomes: dict[str, str] = {}

        async def transfer(source: str, target: str) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == 2:
                both_running.set()
            await both_running.wait()
            try:
                await lanes.run(target, echo, source)
            except LaneDeadlock:
                outcomes[source] = "deadlock"
            else:
                outcomes[source] = "done"

        async with KeyedLanes[str]() as lanes:
            with anyio.fail_after(5):
                first = lanes.submit_nowait("A", transfer, "A", "B")
                second = lanes.submit_nowait("B", transfer, "B", "A")
                await first
                await second
        # exactly one side sees the cycle; the other then completes
        assert sorted(outcomes.values()) == ["deadlock", "done"]

    async def test_global_wait_idle_from_a_job_raises(self) -> None:
        async with KeyedLanes[str]() as lanes:

            async def job() -> None:
                await lanes.wait_idle()

            with pytest.raises(LaneDeadlock):
                await lanes.run("k", job)

    @pytest.mark.parametrize("limit", [1, 4])
    async def test_nested_calls_borrow_the_permit_of_their_caller(self, limit: int) -> None:
        async with KeyedLanes[str](limit=limit) as lanes:

            async def leaf(i: int) -> int:
                await checkpoint()
                return i

            async def middle(i: int) -> int:
                return await lanes.run(f"leaf{i % 2}", leaf, i)

            async def top(i: int) -> int:
                return await lanes.run(f"mid{i}", middle, i)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    results: list[int] = []

                    async def caller(i: int) -> None:
                        results.append(await lanes.run(f"top{i}", top, i))

                    for i in range(limit * 2):
                        tg.start_soon(caller, i)
            assert sorted(results) == list(range(limit * 2))

    async def test_lent_permit_serves_jobs_queued_ahead(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](limit=1) as lanes:

            async def parent() -> int:
                # "other" is queued behind a job that needs a permit too
                return await lanes.run("other", echo, 7)

            first = lanes.submit_nowait("x", parent)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                assert await first == 7
            del gate

    async def test_awaiting_a_handle_lends_the_permit(self) -> None:
        async with KeyedLanes[str](limit=1) as lanes:

            async def parent() -> int:
                job = lanes.submit_nowait("child", echo, 3)
                return await job

            with anyio.fail_after(5):
                assert await lanes.run("p", parent) == 3

    async def test_lending_with_a_shared_limiter(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        async with KeyedLanes[str](limit=limiter) as lanes:

            async def parent() -> int:
                return await lanes.run("child", echo, 5)

            with anyio.fail_after(5):
                assert await lanes.run("p", parent) == 5
        assert limiter.borrowed_tokens == 0


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "error", "pattern"),
        [
            ({"limit": 0}, ValueError, r"^limit must be >= 1, got 0$"),
            ({"limit": -3}, ValueError, r"^limit must be >= 1, got -3$"),
            ({"limit": 2.5}, TypeError, r"^limit must be an int >= 1, got 2.5$"),
            ({"limit": True}, TypeError, r"^limit must be an int >= 1, got True$"),
            ({"per_key": 0}, ValueError, r"^per_key must be >= 1, got 0$"),
            ({"max_pending": -1}, ValueError, r"^max_pending must be >= 1, got -1$"),
            ({"max_pending": 0}, ValueError, r"^max_pending must be >= 1, got 0$"),
            ({"idle_timeout": -1}, ValueError, r"^idle_timeout must be >= 0 seconds, got -1$"),
            ({"idle_timeout": "1"}, TypeError, r"^idle_timeout must be a number of seconds"),
            ({"timeout": 0}, ValueError, r"^timeout must be > 0 seconds, got 0$"),
            ({"timeout": -2.5}, ValueError, r"^timeout must be > 0 seconds, got -2.5$"),
            ({"timeout": math.nan}, ValueError, r"^timeout must be > 0 seconds, got nan$"),
            ({"task_group": object()}, TypeError, r"^task_group must be an anyio task group"),
        ],
    )
    def test_bad_constructor_arguments(
        self, kwargs: dict[str, Any], error: type[Exception], pattern: str
    ) -> None:
        with pytest.raises(error, match=pattern):
            KeyedLanes(**kwargs)

    async def test_bad_submissions_raise_at_the_call_site(self) -> None:
        async with KeyedLanes[Any]() as lanes:
            accepted = lanes.submit_nowait("k", echo, "kept")
            with pytest.raises(TypeError, match=r"^key must be hashable, got \[1\] of type list"):
                lanes.submit_nowait([1], echo, 1)
            with pytest.raises(TypeError, match=r"^fn must be an async function, got 42$"):
                lanes.submit_nowait("k", 42)  # type: ignore[call-overload]
            coro = echo(1)
            with pytest.raises(TypeError, match=r"pass the function and its arguments"):
                await lanes.run("k", coro)  # type: ignore[call-overload]
            with pytest.raises(ValueError, match=r"^timeout must be > 0 seconds, got 0$"):
                await lanes.submit("k", echo, 1, timeout=0)
            with pytest.raises(TypeError, match=r"^key must be hashable"):
                await lanes.run({}, echo, 1)
            assert await accepted == "kept"
            assert lanes.statistics().submitted == 1


class TestCheckpoints:
    async def test_async_methods_are_cancel_points(self) -> None:
        async with KeyedLanes[str]() as lanes:
            await assert_cancel_point(lambda: lanes.run("k", echo, 1))
            await assert_cancel_point(lambda: lanes.submit("k", echo, 1))
            await assert_cancel_point(lanes.wait_idle)
            await assert_cancel_point(lambda: lanes.wait_idle("k"))
            job = lanes.submit_nowait("k", echo, 1)
            await job
            await assert_cancel_point(lambda: job)
            await assert_cancel_point(job.wait)
        stats = lanes.statistics()
        assert stats.queued == stats.running == 0

    async def test_async_methods_are_schedule_points(self) -> None:
        async with KeyedLanes[str]() as lanes:
            await assert_schedule_point(lambda: lanes.run("k", echo, 1))
            await assert_schedule_point(lambda: lanes.submit("k", echo, 1))
            await assert_schedule_point(lanes.wait_idle)
            await assert_schedule_point(lambda: lanes.wait_idle("k"))
            job = lanes.submit_nowait("k", echo, 1)
            await job
            await assert_schedule_point(lambda: job)

    async def test_wait_idle_for_a_key_waits_only_for_that_key(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            lanes.submit_nowait("a", gate.job, "a")
            lanes.submit_nowait("b", gate.job, "b")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lanes.wait_idle, "a")
                await anyio.wait_all_tasks_blocked()
                gate.open("a")
            assert lanes.pending("b") == 1
            gate.open("b")


class TestHandle:
    async def test_result_and_exception_accessors(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("k", gate.job, 1)
            assert not job.done()
            assert job.key == "k"
            assert job.timeout is None
            with pytest.raises(RuntimeError, match="has not settled yet"):
                job.result()
            with pytest.raises(RuntimeError, match="has not settled yet"):
                job.exception()
            assert re.match(r"^<anyio_keyq.Job key='k' fn=Gate.job status=running>$", repr(job))
            gate.open(1)
            await job.wait()
            assert job.done()
            assert job.result() == 1
            assert job.exception() is None
            failing = lanes.submit_nowait("k", boom, "x")
            cancelled = lanes.submit_nowait("k", echo, 1)
            cancelled.cancel()
        assert isinstance(failing.exception(), ValueError)
        with pytest.raises(ValueError, match="x"):
            failing.result()
        with pytest.raises(JobCancelled):
            cancelled.exception()
        assert isinstance(JobCancelled("k"), Exception)

    async def test_awaiter_cancelled_does_not_cancel_the_job(self) -> None:
        gate = Gate()
        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("k", gate.job, 1)
            with anyio.move_on_after(0.01):
                await job
            assert job.status is JobStatus.RUNNING
            gate.open(1)
            assert await job == 1


class TestHandleFields:
    async def test_a_lanes_first_job_sets_every_field_a_job_sets(self) -> None:
        # Lane.__init__() inlines Job.__init__(): a field added to one must be in both.
        from anyio_keyq._job import Job as JobClass

        fields = [name for name in JobClass.__slots__ if name != "__weakref__"]
        gate = Gate()
        async with KeyedLanes[str](limit=1) as lanes:
            lanes.submit_nowait("busy", gate.job, 0)  # holds the permit
            first = lanes.submit_nowait("k", gate.job, 1)
            second = lanes.submit_nowait("k", gate.job, 2)
            # Both are queued: only their constructors have set anything yet.
            for job in (first, second):
                assert job.status is JobStatus.QUEUED
                assert [name for name in fields if not hasattr(job, name)] == []
            assert type(first) is not type(second)  # the first one carries the lane
            for tag in (0, 1, 2):
                gate.open(tag)
        assert gate.finished == [0, 1, 2]


class TestContext:
    async def test_job_runs_in_a_copy_of_the_submitters_context(self) -> None:
        var: ContextVar[str] = ContextVar("var", default="unset")
        seen: list[str] = []

        async def job(set_to: str | None) -> None:
            seen.append(var.get())
            if set_to is not None:
                var.set(set_to)
            await checkpoint()

        async with KeyedLanes[int](limit=1) as lanes:
            var.set("submitter")
            lanes.submit_nowait(1, job, "leaked?")
            var.set("later")
            lanes.submit_nowait(2, job, None)
        assert seen == ["submitter", "later"]
        assert var.get() == "later"

    async def test_a_job_that_sets_a_variable_does_not_leak_it(self) -> None:
        var: ContextVar[str] = ContextVar("var", default="unset")
        seen: list[str] = []

        async def job(set_to: str | None) -> None:
            seen.append(var.get())
            if set_to is not None:
                var.set(set_to)
            await checkpoint()

        # submitted from the lanes' own context: jobs run in the worker directly
        async with KeyedLanes[int](limit=1) as lanes:
            for i in range(4):
                lanes.submit_nowait(i, job, f"set by {i}")
            await lanes.wait_idle()
            retired = lanes.statistics().workers
        assert seen == ["unset"] * 4
        assert retired == 0


class Incomparable:
    """A value whose ``==`` raises, as an array's truth value does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of an Incomparable is ambiguous")

    __hash__ = object.__hash__


class TestIncomparableContextValues:
    async def test_submitting_with_a_value_whose_eq_raises(self) -> None:
        var: ContextVar[Incomparable] = ContextVar("var")
        seen: list[str] = []

        async def job() -> None:
            seen.append(var.get().name)
            await checkpoint()

        var.set(Incomparable("home"))
        async with KeyedLanes[int](limit=1) as lanes:
            var.set(Incomparable("submitter"))
            lanes.submit_nowait(1, job)
            await lanes.submit(2, job)
            await lanes.run(3, job)
        assert seen == ["submitter"] * 3

    async def test_a_job_that_sets_a_value_whose_eq_raises(self) -> None:
        var: ContextVar[Incomparable] = ContextVar("var")
        seen: list[str] = []

        async def job(i: int) -> int:
            seen.append(var.get().name)
            var.set(Incomparable(f"set by {i}"))
            await checkpoint()
            return i

        var.set(Incomparable("home"))
        async with KeyedLanes[int](limit=1) as lanes:
            jobs = [lanes.submit_nowait(i, job, i) for i in range(3)]
        assert [job.result() for job in jobs] == [0, 1, 2]
        assert seen == ["home"] * 3  # each job's value was retired with its worker


class TestStatistics:
    async def test_statistics_snapshot_is_frozen_and_consistent(self) -> None:
        gate = Gate()
        async with KeyedLanes[str](limit=1) as lanes:
            lanes.submit_nowait("a", gate.job, 1)
            lanes.submit_nowait("b", gate.job, 2)
            await anyio.wait_all_tasks_blocked()
            stats = lanes.statistics()
            assert (stats.lanes, stats.running, stats.queued, stats.limit) == (2, 1, 1, 1)
            assert stats.workers == 1
            with pytest.raises(AttributeError):
                stats.running = 5  # type: ignore[misc]
            assert_balanced(stats)
            gate.open(1)
            gate.open(2)
        final = lanes.statistics()
        assert final == LanesStatistics(
            lanes=0,
            running=0,
            queued=0,
            submitted=2,
            completed=2,
            failed=0,
            timed_out=0,
            cancelled=0,
            waiting_for_room=0,
            workers=0,
            idle_workers=0,
            peak_running=1,
            limit=1,
        )
        assert lanes.limit == 1
        assert KeyedLanes[str](limit=None).statistics().limit == math.inf


class TestHostEdgeCases:
    async def test_host_cancelled_while_waiting_on_a_shared_limiter(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()  # held from outside: the lanes must wait for it
        try:
            async with anyio.create_task_group() as tg:
                lanes = KeyedLanes[str](limit=limiter, task_group=tg)
                jobs = [lanes.submit_nowait(k, echo, k) for k in "abc"]
                await anyio.wait_all_tasks_blocked()
                assert lanes.statistics().queued == 3
                tg.cancel_scope.cancel()
            assert [job.status for job in jobs] == [JobStatus.CANCELLED] * 3
        finally:
            limiter.release()
        assert limiter.borrowed_tokens == 0

    async def test_closing_with_a_pending_limiter_wait_stops_it(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        async with KeyedLanes[str](limit=limiter) as lanes:
            job = lanes.submit_nowait("k", echo, 1)
            await anyio.wait_all_tasks_blocked()
            job.cancel()  # nothing left to run, but a task still waits on the limiter
        assert lanes.statistics().workers == 0
        limiter.release()
        assert limiter.borrowed_tokens == 0

    async def test_host_cancelled_while_lanes_linger(self) -> None:
        async with anyio.create_task_group() as tg:
            lanes = KeyedLanes[str](idle_timeout=3600, task_group=tg)
            await lanes.run("k", echo, 1)
            assert "k" in lanes
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        with pytest.raises(LanesClosed):
            lanes.submit_nowait("k", echo, 1)

    async def test_hosted_lanes_aclose_does_not_wait_for_lingering_lanes(self) -> None:
        async with anyio.create_task_group() as tg:
            lanes = KeyedLanes[str](idle_timeout=3600, task_group=tg)
            await lanes.run("k", echo, 1)
            with anyio.fail_after(5):
                await lanes.aclose()
            assert len(lanes) == 0
