"""ConcurrencyScope semantics, each on asyncio, asyncio+uvloop and trio.

Timing tests run on virtual clocks (``virtual_backend``) and assert exact instants; the
others order events with ``wait_all_tasks_blocked()`` and events, never with sleeps.
"""

from __future__ import annotations

import gc
import logging
import math
import re
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import anyio
import pytest
import sniffio
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_keyq import (
    ConcurrencyScope,
    Job,
    JobCancelled,
    JobStatus,
    KeyedLanes,
    LaneDeadlock,
    ScopeStatistics,
)

from .helpers import assert_cancel_point, assert_schedule_point, boom, echo

pytestmark = pytest.mark.anyio

QUEUED = JobStatus.QUEUED
RUNNING = JobStatus.RUNNING
FINISHED = JobStatus.FINISHED
FAILED = JobStatus.FAILED
CANCELLED = JobStatus.CANCELLED


class Gate:
    """Children that wait until the test opens their gate, recording what happened."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[Any] = []
        self.events: dict[Any, anyio.Event] = defaultdict(anyio.Event)
        self.running = 0
        self.peak = 0

    async def job(self, tag: Any) -> Any:
        self.started.append(tag)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.events[tag].wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(tag)
            raise
        finally:
            self.running -= 1
        self.finished.append(tag)
        return tag

    async def fail(self, tag: Any) -> None:
        await self.job(tag)
        raise ValueError(tag)

    def open(self, tag: Any) -> None:
        self.events[tag].set()


class Fatal(BaseException):
    """A BaseException that is not a cancellation, like KeyboardInterrupt."""


def assert_balanced(stats: ScopeStatistics) -> None:
    assert stats.spawned == (
        stats.queued + stats.running + stats.completed + stats.failed + stats.cancelled
    )


class TestSpawning:
    async def test_children_run_at_once_and_keep_their_results(self) -> None:
        gate = Gate()
        async with ConcurrencyScope() as scope:
            jobs = [scope.spawn(gate.job, i) for i in range(3)]
            assert [job.status for job in jobs] == [RUNNING] * 3
            await anyio.wait_all_tasks_blocked()
            assert sorted(gate.started) == [0, 1, 2]
            assert scope.statistics().running == 3
            for i in (2, 0, 1):
                gate.open(i)
        assert [job.result() for job in jobs] == [0, 1, 2]
        assert scope.jobs == tuple(jobs)
        assert gate.peak == 3

    async def test_handles_can_be_awaited_inside_the_block(self) -> None:
        async with ConcurrencyScope() as scope:
            job = scope.spawn(echo, "value")
            assert await job == "value"
            assert job.done()

    async def test_spawn_returns_before_the_child_runs(self) -> None:
        gate = Gate()
        async with ConcurrencyScope() as scope:
            job = scope.spawn(gate.job, "x")
            assert gate.started == []  # spawn() did not yield to the child
            await anyio.wait_all_tasks_blocked()
            assert gate.started == ["x"]
            gate.open("x")
        assert job.result() == "x"

    async def test_names_default_to_the_function_and_name_the_task(self) -> None:
        names: list[str] = []

        async def record() -> None:
            names.append(str(anyio.get_current_task().name))

        async with ConcurrencyScope() as scope:
            default = scope.spawn(echo, 1)
            named = scope.spawn(record, name="fetch user")
        assert default.key == "echo"
        assert named.key == "fetch user"
        assert names == ["fetch user"]
        assert repr(named) == "<anyio_keyq.Job key='fetch user' fn=" + (
            "TestSpawning.test_names_default_to_the_function_and_name_the_task.<locals>.record"
            " status=finished>"
        )

    async def test_children_can_spawn_siblings_also_while_the_block_exits(self) -> None:
        order: list[str] = []

        async def parent(scope: ConcurrencyScope) -> Job[Any]:
            await checkpoint()  # by now the body has finished
            order.append("parent")
            return scope.spawn(child)

        async def child() -> str:
            await checkpoint()
            order.append("child")
            return "grandchild value"

        async with ConcurrencyScope() as scope:
            first = scope.spawn(parent, scope)
        assert order == ["parent", "child"]
        assert first.result().result() == "grandchild value"
        assert len(scope.jobs) == 2

    async def test_each_child_runs_in_a_copy_of_the_spawners_context(self) -> None:
        var: ContextVar[str] = ContextVar("var", default="unset")
        seen: list[str] = []

        async def child() -> None:
            seen.append(var.get())
            var.set("set by the child")
            await checkpoint()
            seen.append(var.get())

        async with ConcurrencyScope() as scope:
            var.set("first")
            scope.spawn(child)
            var.set("second")
            scope.spawn(child)
            await scope.wait_settled()
            assert var.get() == "second"
        assert sorted(seen) == ["first", "second", "set by the child", "set by the child"]

    async def test_a_sync_function_fails_its_child_with_a_clear_error(self) -> None:
        def not_async() -> int:
            return 1

        with pytest.raises(TypeError, match=r"^fn must be an async function, but .*not_async"):
            async with ConcurrencyScope() as scope:
                scope.spawn(not_async)  # type: ignore[arg-type]


class TestFailFast:
    async def test_a_single_failure_is_raised_bare_and_cancels_the_rest(self) -> None:
        gate = Gate()
        reached = False
        with pytest.raises(ValueError, match="^bad$") as info:
            async with ConcurrencyScope() as scope:
                siblings = [scope.spawn(gate.job, i) for i in range(3)]
                failing = scope.spawn(gate.fail, "bad")
                await anyio.wait_all_tasks_blocked()
                gate.open("bad")
                await anyio.sleep_forever()
                reached = True  # pragma: no cover
        assert type(info.value) is ValueError
        assert not reached
        assert [job.status for job in siblings] == [CANCELLED] * 3
        assert failing.status is FAILED
        assert failing.exception() is info.value
        assert sorted(gate.cancelled) == [0, 1, 2]
        stats = scope.statistics()
        assert (stats.failed, stats.cancelled, stats.completed) == (1, 3, 0)
        assert_balanced(stats)

    async def test_except_star_catches_the_bare_exception(self) -> None:
        caught: list[BaseException] = []
        try:
            async with ConcurrencyScope() as scope:
                scope.spawn(boom, "star")
        except* ValueError as group:
            caught.extend(group.exceptions)
        assert [str(exc) for exc in caught] == ["star"]

    async def test_independent_failures_are_raised_as_a_group(self) -> None:
        go = anyio.Event()

        async def fail_when_told(tag: str) -> None:
            await go.wait()
            raise ValueError(tag)  # both wake in the same instant: both fail

        with pytest.raises(ExceptionGroup) as info:
            async with ConcurrencyScope() as scope:
                first = scope.spawn(fail_when_told, "a")
                second = scope.spawn(fail_when_told, "b")
                await anyio.wait_all_tasks_blocked()
                go.set()
        assert sorted(str(exc) for exc in info.value.exceptions) == ["a", "b"]
        assert {first.status, second.status} == {FAILED}
        assert isinstance(info.value, ExceptionGroup)

    async def test_a_sibling_failing_while_cancelled_joins_the_group(self) -> None:
        gate = Gate()

        async def fails_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup failed")

        with pytest.raises(ExceptionGroup) as info:
            async with ConcurrencyScope() as scope:
                scope.spawn(fails_on_cancel)
                scope.spawn(gate.fail, "first")
                await anyio.wait_all_tasks_blocked()
                gate.open("first")
        assert [type(exc) for exc in info.value.exceptions] == [ValueError, RuntimeError]

    async def test_a_sibling_that_swallows_the_cancellation_keeps_its_value(self) -> None:
        async def stubborn() -> str:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return "kept"
            return "unreachable"  # pragma: no cover

        with pytest.raises(ValueError, match="^x$"):
            async with ConcurrencyScope() as scope:
                kept = scope.spawn(stubborn)
                await anyio.wait_all_tasks_blocked()
                scope.spawn(boom, "x")
        assert kept.result() == "kept"

    async def test_queued_children_never_start_after_a_failure(self) -> None:
        gate = Gate()
        with pytest.raises(ValueError, match="^0$"):
            async with ConcurrencyScope(limit=1) as scope:
                jobs = [scope.spawn(gate.fail, 0), *(scope.spawn(gate.job, i) for i in (1, 2))]
                await anyio.wait_all_tasks_blocked()
                assert [job.status for job in jobs] == [RUNNING, QUEUED, QUEUED]
                gate.open(0)
        assert gate.started == [0]
        assert [job.status for job in jobs] == [FAILED, CANCELLED, CANCELLED]

    async def test_spawning_into_a_cancelled_scope_returns_a_cancelled_handle(self) -> None:
        gate = Gate()
        late: list[Job[Any]] = []
        with pytest.raises(ValueError, match="^x$"):
            async with ConcurrencyScope() as scope:
                try:
                    scope.spawn(boom, "x")
                    await anyio.sleep_forever()
                finally:
                    assert scope.cancel_called
                    late.append(scope.spawn(gate.job, "late"))
        assert late[0].status is CANCELLED
        assert gate.started == []
        with pytest.raises(JobCancelled):
            late[0].result()

    async def test_a_base_exception_is_raised_in_either_mode(self) -> None:
        async def fatal() -> None:
            await checkpoint()
            raise Fatal("stop")

        gate = Gate()
        for fail_fast in (True, False):
            with pytest.raises(Fatal, match="^stop$"):
                async with ConcurrencyScope(fail_fast=fail_fast) as scope:
                    other = scope.spawn(gate.job, fail_fast)
                    scope.spawn(fatal)
                    await anyio.sleep_forever()
            assert other.status is CANCELLED


class TestSettle:
    async def test_failures_stay_in_their_handles_and_nothing_is_raised(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(fail_fast=False) as scope:
            failing = scope.spawn(gate.fail, "bad")
            ok = scope.spawn(gate.job, "ok")
            dropped = scope.spawn(gate.job, "dropped")
            await anyio.wait_all_tasks_blocked()
            gate.open("bad")
            await anyio.wait_all_tasks_blocked()
            # the failure cancelled nothing: the siblings and the body go on
            assert (ok.status, dropped.status) == (RUNNING, RUNNING)
            dropped.cancel()
            gate.open("ok")
        assert isinstance(failing.exception(), ValueError)
        assert ok.result() == "ok"
        assert dropped.status is CANCELLED
        stats = scope.statistics()
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 1)
        assert not scope.cancel_called

    async def test_wait_settled_returns_every_handle_in_spawn_order(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(fail_fast=False) as scope:
            first = scope.spawn(gate.job, 0)
            second = scope.spawn(gate.fail, 1)
            async with anyio.create_task_group() as tg:
                waiter_done = anyio.Event()

                async def waiter() -> None:
                    assert await scope.wait_settled() == (first, second, third)
                    waiter_done.set()

                tg.start_soon(waiter)
                tg.start_soon(scope.wait_settled)  # a second waiter shares the wait
                await anyio.wait_all_tasks_blocked()
                third = scope.spawn(gate.job, 2)  # spawned while waiting: waited for too
                gate.open(0)
                gate.open(1)
                await anyio.wait_all_tasks_blocked()
                assert not waiter_done.is_set()
                gate.open(2)
            outcomes = [job.status for job in await scope.wait_settled()]
            assert outcomes == [FINISHED, FAILED, FINISHED]
        assert await scope.wait_settled() == (first, second, third)

    async def test_the_body_exception_still_propagates_bare(self) -> None:
        gate = Gate()
        with pytest.raises(KeyError, match="body"):
            async with ConcurrencyScope(fail_fast=False) as scope:
                job = scope.spawn(gate.job, 0)
                scope.spawn(boom, "kept")
                await anyio.wait_all_tasks_blocked()
                raise KeyError("body")
        assert job.status is CANCELLED


class TestUnretrieved:
    @pytest.mark.parametrize("fail_fast", [True, False])
    async def test_scope_failures_are_never_reported(
        self, caplog: pytest.LogCaptureFixture, fail_fast: bool
    ) -> None:
        try:
            async with ConcurrencyScope(fail_fast=fail_fast) as scope:
                scope.spawn(boom, "retrieved by the block or by choice")
                scope.spawn(anyio.sleep_forever)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        except ValueError:
            pass
        del scope
        gc.collect()
        assert not [r for r in caplog.records if r.name == "anyio_keyq"]

    async def test_lanes_handles_still_report_unretrieved_failures(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # The same Job class, owned by KeyedLanes: the scope changed nothing there.
        async with KeyedLanes[str]() as lanes:
            lanes.submit_nowait("k", boom, "lost")
        del lanes
        gc.collect()
        assert [r.getMessage() for r in caplog.records if r.name == "anyio_keyq"] == [
            "Exception of <anyio_keyq.Job key='k' fn=boom status=failed> was never retrieved"
        ]
        assert caplog.records[0].levelno == logging.ERROR


class TestBodyException:
    async def test_body_exception_cancels_the_children_and_propagates_bare(self) -> None:
        gate = Gate()
        error = KeyError("body")
        with pytest.raises(KeyError) as info:
            async with ConcurrencyScope(limit=1) as scope:
                jobs = [scope.spawn(gate.job, i) for i in range(2)]
                await anyio.wait_all_tasks_blocked()
                raise error
        assert info.value is error
        assert [job.status for job in jobs] == [CANCELLED, CANCELLED]
        assert gate.started == [0]

    async def test_body_exception_and_a_child_failure_are_raised_together(self) -> None:
        async def fails_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup")

        with pytest.raises(ExceptionGroup) as info:
            async with ConcurrencyScope() as scope:
                scope.spawn(fails_on_cancel)
                await anyio.wait_all_tasks_blocked()
                raise KeyError("body")
        assert [type(exc) for exc in info.value.exceptions] == [KeyError, RuntimeError]


class TestCancel:
    async def test_cancel_from_inside_exits_without_raising(self) -> None:
        gate = Gate()
        reached = False
        async with ConcurrencyScope(limit=2) as scope:
            jobs = [scope.spawn(gate.job, i) for i in range(3)]
            await anyio.wait_all_tasks_blocked()
            scope.cancel("enough")
            assert jobs[2].status is CANCELLED  # queued: settled at once, never started
            assert scope.cancel_called
            await anyio.sleep_forever()
            reached = True  # pragma: no cover
        assert not reached
        assert [job.status for job in jobs] == [CANCELLED] * 3
        assert sorted(gate.started) == [0, 1]
        assert scope.statistics().cancelled == 3

    async def test_cancel_from_another_task(self) -> None:
        gate = Gate()

        async def host(scope: ConcurrencyScope, done: anyio.Event) -> None:
            async with scope:
                scope.spawn(gate.job, 0)
                await anyio.sleep_forever()
            done.set()

        scope = ConcurrencyScope()
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(host, scope, done)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await done.wait()
        assert scope.jobs[0].status is CANCELLED

    async def test_cancel_before_entry_cancels_the_body_at_its_first_checkpoint(self) -> None:
        scope = ConcurrencyScope()
        scope.cancel()
        assert scope.cancel_called
        async with scope:
            early = scope.spawn(echo, 1)
            await checkpoint()
            pytest.fail("not cancelled")  # pragma: no cover
        assert early.status is CANCELLED

    async def test_cancel_after_exit_does_nothing(self) -> None:
        async with ConcurrencyScope() as scope:
            job = scope.spawn(echo, 1)
        scope.cancel()
        assert not scope.cancel_called
        assert job.result() == 1

    async def test_cancelling_handles_running_and_queued(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(limit=1) as scope:
            running = scope.spawn(gate.job, "running")
            queued = scope.spawn(gate.job, "queued")
            last = scope.spawn(gate.job, "last")
            await anyio.wait_all_tasks_blocked()
            queued.cancel()
            assert queued.status is CANCELLED  # at once
            assert scope.statistics().queued == 1
            running.cancel()
            await anyio.wait_all_tasks_blocked()
            assert running.status is CANCELLED
            assert last.status is RUNNING
            gate.open("last")
        assert gate.started == ["running", "last"]
        assert last.result() == "last"
        with pytest.raises(JobCancelled, match=r"^the job of key 'Gate.job' was cancelled$"):
            await queued

    async def test_child_cancelled_before_its_task_begins_never_runs(self) -> None:
        gate = Gate()
        async with ConcurrencyScope() as scope:
            job = scope.spawn(gate.job, 0)
            assert job.status is RUNNING  # it holds its place, its task is not yet running
            job.cancel()
        assert job.status is CANCELLED
        assert gate.started == []

    async def test_child_that_swallows_its_cancel_keeps_its_value(self) -> None:
        async def stubborn() -> str:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return "swallowed"
            return "unreachable"  # pragma: no cover

        async with ConcurrencyScope() as scope:
            job = scope.spawn(stubborn)
            await anyio.wait_all_tasks_blocked()
            job.cancel()
            job.cancel()  # twice: nothing more
            assert await job == "swallowed"

    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_native_asyncio_cancellation_ends_only_its_child(self) -> None:
        import asyncio

        async def cancels_itself() -> None:
            await checkpoint()
            raise asyncio.CancelledError

        gate = Gate()
        async with ConcurrencyScope() as scope:
            job = scope.spawn(cancels_itself)
            other = scope.spawn(gate.job, 0)
            await anyio.wait_all_tasks_blocked()
            assert job.status is CANCELLED
            assert other.status is RUNNING
            gate.open(0)
        assert other.result() == 0
        assert not scope.cancel_called


class TestEnclosingScopes:
    async def test_outer_cancellation_wins_and_settles_everything(self) -> None:
        gate = Gate()
        with anyio.CancelScope() as outer:
            async with ConcurrencyScope(limit=2, timeout=3600) as scope:
                jobs = [scope.spawn(gate.job, i) for i in range(4)]
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert [job.status for job in jobs] == [CANCELLED] * 4
        assert sorted(gate.started) == [0, 1]  # the queued ones never started
        stats = scope.statistics()
        assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 4)

    async def test_outer_cancellation_while_the_block_exits(self) -> None:
        gate = Gate()

        async def cancel_later() -> None:
            await anyio.wait_all_tasks_blocked()  # the host is waiting in __aexit__
            outer.cancel()

        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_later)
                async with ConcurrencyScope(limit=1) as scope:
                    jobs = [scope.spawn(gate.job, i) for i in range(3)]
        assert outer.cancelled_caught
        assert [job.status for job in jobs] == [CANCELLED] * 3
        assert gate.started == [0]

    async def test_a_failure_wins_over_an_outer_cancellation(self) -> None:
        async def fails_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup")

        with anyio.CancelScope() as outer, pytest.raises(RuntimeError, match="^cleanup$"):
            async with ConcurrencyScope() as scope:
                scope.spawn(fails_on_cancel)
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()

    async def test_settle_mode_lets_the_outer_cancellation_through(self) -> None:
        async def fails_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup")

        with anyio.CancelScope() as outer:
            async with ConcurrencyScope(fail_fast=False) as scope:
                job = scope.spawn(fails_on_cancel)
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert isinstance(job.exception(), RuntimeError)

    async def test_a_shielded_scope_around_it_is_respected(self) -> None:
        gate = Gate()
        with anyio.CancelScope() as outer:
            with anyio.CancelScope(shield=True):
                async with ConcurrencyScope() as scope:
                    jobs = [scope.spawn(gate.job, i) for i in range(2)]
                    await anyio.wait_all_tasks_blocked()
                    outer.cancel()
                    await anyio.wait_all_tasks_blocked()
                    gate.open(0)
                    gate.open(1)
            await checkpoint()
            pytest.fail("not cancelled")  # pragma: no cover
        assert [job.result() for job in jobs] == [0, 1]

    async def test_a_shielded_section_of_a_child_finishes_before_the_exit(self) -> None:
        release = anyio.Event()
        steps: list[str] = []

        async def careful() -> None:
            with anyio.CancelScope(shield=True):
                await release.wait()
                steps.append("shielded part done")
            await anyio.sleep_forever()

        async with ConcurrencyScope() as scope:
            job = scope.spawn(careful)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            assert job.status is RUNNING
            release.set()
        assert steps == ["shielded part done"]
        assert job.status is CANCELLED

    async def test_nested_scopes_and_task_groups(self) -> None:
        gate = Gate()
        with pytest.raises(ExceptionGroup) as info:
            async with ConcurrencyScope() as outer:
                outer_job = outer.spawn(gate.job, "outer")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(gate.job, "task")
                    async with ConcurrencyScope() as inner:
                        inner.spawn(boom, "inner")
                        await anyio.sleep_forever()
        # the inner scope raised the failure bare; the task group wrapped it, as task
        # groups do; the outer scope let the group through as it was
        assert [str(exc) for exc in info.value.exceptions] == ["inner"]
        assert outer_job.status is CANCELLED
        assert sorted(gate.cancelled) == ["outer", "task"]

    async def test_cancelled_task_group_around_it(self) -> None:
        gate = Gate()
        async with anyio.create_task_group() as tg:
            async with ConcurrencyScope() as scope:
                job = scope.spawn(gate.job, 0)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        assert job.status is CANCELLED

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_inside_a_trio_nursery(self) -> None:
        import trio
        import trio.testing

        events: list[str] = []

        async def worker(tag: str) -> str:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                events.append(f"{tag} cancelled")
                raise
            return tag  # pragma: no cover

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "sibling task")
            async with ConcurrencyScope(limit=1) as scope:
                first = scope.spawn(worker, "first")
                queued = scope.spawn(worker, "queued")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
                await trio.sleep_forever()
        assert sorted(events) == ["first cancelled", "sibling task cancelled"]
        assert (first.status, queued.status) == (CANCELLED, CANCELLED)

        # and a trio failure inside: raised bare to the nursery, which groups it
        with pytest.raises(ExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                async with ConcurrencyScope() as scope:
                    scope.spawn(boom, "trio")
        assert [str(exc) for exc in info.value.exceptions] == ["trio"]

    async def test_lanes_see_through_a_scope_for_waits_that_can_never_end(self) -> None:
        async def child(lanes: KeyedLanes[str]) -> int:
            # the lane of "k" runs the job that is waiting for this scope
            result: int = await lanes.run("k", echo, 1)
            return result  # pragma: no cover

        async def job(lanes: KeyedLanes[str]) -> None:
            async with ConcurrencyScope() as scope:
                scope.spawn(child, lanes)

        async with KeyedLanes[str]() as lanes:
            handle = lanes.submit_nowait("k", job, lanes)
            with pytest.raises(LaneDeadlock):
                await handle

    async def test_a_child_cannot_wait_for_its_own_scope(self) -> None:
        async def child(scope: ConcurrencyScope) -> None:
            await scope.wait_settled()

        with pytest.raises(RuntimeError, match="cannot wait for the whole scope"):
            async with ConcurrencyScope() as scope:
                scope.spawn(child, scope)


class TestLimit:
    async def test_int_limit_starts_children_in_fifo_order(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(limit=2) as scope:
            jobs = [scope.spawn(gate.job, i) for i in range(5)]
            assert [job.status for job in jobs] == [RUNNING] * 2 + [QUEUED] * 3
            await anyio.wait_all_tasks_blocked()
            for i in (1, 0, 3, 2, 4):
                gate.open(i)
                await anyio.wait_all_tasks_blocked()
                assert gate.running <= 2
        # 0 and 1 start together (in any order on trio), then one by one, in order
        assert sorted(gate.started[:2]) == [0, 1]
        assert gate.started[2:] == [2, 3, 4]
        assert gate.peak == 2
        assert scope.statistics().peak_running == 2

    async def test_queued_children_hold_no_task(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(limit=1) as scope:
            for i in range(50):
                scope.spawn(gate.job, i)
            await anyio.wait_all_tasks_blocked()
            tasks = len(anyio.get_running_tasks())
            assert scope.statistics().queued == 49
            scope.cancel()
        async with ConcurrencyScope(limit=1) as scope:
            scope.spawn(gate.job, "alone")
            await anyio.wait_all_tasks_blocked()
            assert len(anyio.get_running_tasks()) == tasks
            scope.cancel()

    async def test_shared_capacity_limiter_in_fifo_order_with_others(self) -> None:
        limiter = anyio.CapacityLimiter(2)
        gate = Gate()

        async def outsider() -> None:
            async with limiter:
                gate.started.append("outsider")

        async with ConcurrencyScope(limit=limiter) as scope:
            jobs = [scope.spawn(gate.job, i) for i in range(4)]
            await anyio.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 2
            assert [job.status for job in jobs] == [RUNNING] * 2 + [QUEUED] * 2
            async with anyio.create_task_group() as tg:
                tg.start_soon(outsider)
                await anyio.wait_all_tasks_blocked()
                for i in range(4):
                    gate.open(i)
                    await anyio.wait_all_tasks_blocked()
        # the scope holds one place in the limiter's line at a time, the next queued
        # child's: the outsider, who came later, goes between two of them
        assert sorted(gate.started[:2]) == [0, 1]
        assert gate.started[2:] == [2, "outsider", 3]
        assert gate.peak == 2
        assert scope.statistics().limit == 2
        assert limiter.borrowed_tokens == 0

    async def test_cancelling_the_last_queued_child_leaves_the_limiters_line(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()  # held by someone else for the whole test
        async with ConcurrencyScope(limit=limiter) as scope:
            job = scope.spawn(echo, 1)
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 1
            job.cancel()
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 0
            # a child spawned right after gets a place in line again
            again = scope.spawn(echo, 2)
            await anyio.wait_all_tasks_blocked()
            assert again.status is QUEUED
            limiter.release()
        assert again.result() == 2
        assert job.status is CANCELLED
        assert limiter.borrowed_tokens == 0

    async def test_respawn_in_the_same_instant_the_limiter_wait_is_cancelled(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        async with ConcurrencyScope(limit=limiter) as scope:
            first = scope.spawn(echo, 1)
            await anyio.wait_all_tasks_blocked()
            first.cancel()
            second = scope.spawn(echo, 2)  # before the old wait has seen its cancel
            limiter.release()
        assert second.result() == 2
        assert limiter.borrowed_tokens == 0

    async def test_token_handed_over_as_the_last_queued_child_is_cancelled(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        async with ConcurrencyScope(limit=limiter) as scope:
            job = scope.spawn(echo, 1)
            await anyio.wait_all_tasks_blocked()
            limiter.release()  # wakes the scope's wait with the token...
            job.cancel()  # ...which now finds nothing to start, and gives it back
        assert job.status is CANCELLED
        assert limiter.borrowed_tokens == 0

    async def test_outer_cancellation_while_waiting_on_a_shared_limiter(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        with anyio.CancelScope() as outer:
            async with ConcurrencyScope(limit=limiter) as scope:
                jobs = [scope.spawn(echo, i) for i in range(2)]
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
        assert [job.status for job in jobs] == [CANCELLED] * 2
        limiter.release()
        assert limiter.borrowed_tokens == 0
        assert limiter.statistics().tasks_waiting == 0

    @pytest.mark.parametrize("shared", [False, True])
    async def test_a_child_waiting_for_a_queued_sibling_lends_it_its_permit(
        self, shared: bool
    ) -> None:
        limiter = anyio.CapacityLimiter(1) if shared else None

        async def needs(later: list[Job[str]]) -> str:
            await checkpoint()
            return "got " + await later[0]

        later: list[Job[str]] = []
        async with ConcurrencyScope(limit=limiter or 1) as scope:
            waiter = scope.spawn(needs, later)
            other = scope.spawn(echo, "other")
            later.append(scope.spawn(echo, "later"))
            assert later[0].status is QUEUED
        assert waiter.result() == "got later"
        assert other.result() == "other"
        assert scope.statistics().peak_running == 2  # the lent permit ran one more
        if limiter is not None:
            assert limiter.borrowed_tokens == 0

    async def test_waits_of_outsiders_and_on_running_siblings_lend_nothing(self) -> None:
        gate = Gate()

        async def await_it(job: Job[Any]) -> Any:
            return await job

        async with ConcurrencyScope(limit=1) as scope:
            running = scope.spawn(gate.job, 0)
            queued = scope.spawn(echo, 1)
            async with KeyedLanes[str]() as lanes:
                from_lanes = lanes.submit_nowait("k", await_it, queued)
                await anyio.wait_all_tasks_blocked()
                assert queued.status is QUEUED  # a lanes job has no permit here
                waiter = scope.spawn(await_it, running)  # queued too
                gate.open(0)
        assert await from_lanes == 1
        assert waiter.result() == 0
        assert scope.statistics().peak_running == 1
        async with ConcurrencyScope() as scope:
            running = scope.spawn(gate.job, 1)
            waiter = scope.spawn(await_it, running)  # a running sibling needs no permit
            await anyio.wait_all_tasks_blocked()
            gate.open(1)
        assert waiter.result() == 1


class TestDeadline:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_timeout_cancels_everything_and_raises_timeout_error(self) -> None:
        start = anyio.current_time()
        with pytest.raises(
            TimeoutError, match=r"^the ConcurrencyScope ran past its timeout of 5.0 s$"
        ):
            async with ConcurrencyScope(timeout=5, limit=2) as scope:
                assert scope.deadline == start + 5
                jobs = [scope.spawn(anyio.sleep, 10) for _ in range(3)]
                await anyio.sleep_forever()
        assert anyio.current_time() == start + 5
        assert [job.status for job in jobs] == [CANCELLED] * 3

    async def test_the_timeout_counts_from_entry(self) -> None:
        scope = ConcurrencyScope(timeout=2)
        assert scope.deadline == math.inf
        await anyio.sleep(3)
        entered = anyio.current_time()
        with pytest.raises(TimeoutError):
            async with scope:
                assert scope.deadline == entered + 2
                scope.spawn(anyio.sleep, 5)
        assert anyio.current_time() == entered + 2

    async def test_extending_the_deadline(self) -> None:
        start = anyio.current_time()
        async with ConcurrencyScope(timeout=5) as scope:
            job = scope.spawn(anyio.sleep, 8)
            await anyio.sleep(4)
            scope.deadline += 10
            assert scope.deadline == start + 15
        assert anyio.current_time() == start + 8
        assert job.status is FINISHED

    async def test_shortening_the_deadline(self) -> None:
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            async with ConcurrencyScope() as scope:
                assert scope.deadline == math.inf
                scope.spawn(anyio.sleep, 8)
                await anyio.sleep(1)
                scope.deadline = anyio.current_time() + 2
                await anyio.sleep_forever()
        assert anyio.current_time() == start + 3

    async def test_deadline_set_before_entry_replaces_the_timeout(self) -> None:
        start = anyio.current_time()
        scope = ConcurrencyScope(timeout=100)
        scope.deadline = start + 7
        assert scope.deadline == start + 7
        with pytest.raises(TimeoutError, match=r"^the ConcurrencyScope ran past its deadline$"):
            async with scope:
                scope.spawn(anyio.sleep_forever)
        assert anyio.current_time() == start + 7

    async def test_a_deadline_in_the_past_cancels_at_once(self) -> None:
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            async with ConcurrencyScope() as scope:
                job = scope.spawn(anyio.sleep, 1)
                scope.deadline = start - 1
                await checkpoint()
        assert job.status is CANCELLED
        assert anyio.current_time() == start

    async def test_finishing_in_time_raises_nothing(self) -> None:
        start = anyio.current_time()
        async with ConcurrencyScope(timeout=5) as scope:
            job = scope.spawn(anyio.sleep, 5 - 1e-3)
        assert job.status is FINISHED
        assert anyio.current_time() == start + 5 - 1e-3

    async def test_settle_mode_keeps_failures_and_raises_only_the_timeout(self) -> None:
        async def fail_at(seconds: float) -> None:
            await anyio.sleep(seconds)
            raise ValueError(seconds)

        with pytest.raises(TimeoutError):
            async with ConcurrencyScope(timeout=3, fail_fast=False) as scope:
                failed = scope.spawn(fail_at, 1)
                slow = scope.spawn(anyio.sleep, 10)
        assert isinstance(failed.exception(), ValueError)
        assert slow.status is CANCELLED

    async def test_a_failure_during_the_timeout_is_raised_with_it(self) -> None:
        async def fails_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise RuntimeError("cleanup")

        with pytest.raises(ExceptionGroup) as info:
            async with ConcurrencyScope(timeout=1) as scope:
                scope.spawn(fails_on_cancel)
        assert [type(exc) for exc in info.value.exceptions] == [TimeoutError, RuntimeError]

    async def test_cancel_before_the_deadline_is_not_a_timeout(self) -> None:
        start = anyio.current_time()
        async with ConcurrencyScope(timeout=5) as scope:
            scope.spawn(anyio.sleep_forever)
            await anyio.sleep(2)
            scope.cancel()
        assert anyio.current_time() == start + 2

    async def test_timeout_infinity_means_none(self) -> None:
        scope = ConcurrencyScope(timeout=math.inf)
        assert scope.timeout is None
        async with scope:
            assert scope.deadline == math.inf


class TestMisuse:
    async def test_spawn_before_entry_and_after_exit(self) -> None:
        scope = ConcurrencyScope()
        with pytest.raises(RuntimeError, match=r"^this ConcurrencyScope has not been entered"):
            scope.spawn(echo, 1)
        async with scope:
            pass
        with pytest.raises(RuntimeError, match=r"^this ConcurrencyScope has exited"):
            scope.spawn(echo, 1)
        assert scope.statistics().spawned == 0

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    @pytest.mark.parametrize("limit", ["none", "int", "free limiter", "taken limiter"])
    async def test_spawn_as_trio_closes_the_nursery_is_refused_cleanly(self, limit: str) -> None:
        # trio closes a nursery as its last child ends, an instant before the block
        # exits. A trio instrument runs right then, as another task might.
        import trio

        limiter = anyio.CapacityLimiter(1)
        options: dict[str, int | anyio.CapacityLimiter | None] = {
            "none": None,
            "int": 1,
            "free limiter": limiter,
            "taken limiter": limiter,
        }
        scope = ConcurrencyScope(limit=options[limit])
        outcome: list[str] = []

        class SpawnAsTheLastChildEnds(trio.abc.Instrument):
            def task_exited(self, task: trio.lowlevel.Task) -> None:
                if task.name == "last child":
                    try:
                        scope.spawn(echo, "too late")
                    except RuntimeError as exc:
                        outcome.append(str(exc))

        async def outsider() -> None:
            async with limiter:  # takes the token as the child gives it back
                pass

        hook = SpawnAsTheLastChildEnds()
        trio.lowlevel.add_instrument(hook)
        try:
            async with anyio.create_task_group() as tg:
                async with scope:
                    scope.spawn(echo, 0, name="last child")
                    if limit == "taken limiter":
                        tg.start_soon(outsider)
        finally:
            trio.lowlevel.remove_instrument(hook)
        assert len(outcome) == 1
        assert outcome[0].startswith("this ConcurrencyScope has exited")
        stats = scope.statistics()
        assert (stats.spawned, stats.completed, stats.running, stats.queued) == (1, 1, 0, 0)
        assert limiter.borrowed_tokens == 0
        assert limiter.statistics().tasks_waiting == 0

    async def test_entering_twice(self) -> None:
        scope = ConcurrencyScope()
        async with scope:
            with pytest.raises(
                RuntimeError, match=r"^a ConcurrencyScope can be entered only once$"
            ):
                await scope.__aenter__()
        with pytest.raises(RuntimeError, match=r"entered only once"):
            async with scope:
                pass  # pragma: no cover

    @pytest.mark.parametrize(
        ("kwargs", "error", "pattern"),
        [
            ({"timeout": 0}, ValueError, r"^timeout must be > 0 seconds, got 0$"),
            ({"timeout": -1.5}, ValueError, r"^timeout must be > 0 seconds, got -1.5$"),
            ({"timeout": math.nan}, ValueError, r"^timeout must be > 0 seconds, got nan$"),
            ({"timeout": "1"}, TypeError, r"^timeout must be a number of seconds, got '1'$"),
            ({"limit": 0}, ValueError, r"^limit must be >= 1, got 0$"),
            ({"limit": -2}, ValueError, r"^limit must be >= 1, got -2$"),
            (
                {"limit": 2.5},
                TypeError,
                r"^limit must be an int >= 1, an anyio.CapacityLimiter, a Limiter or None, "
                r"got 2.5$",
            ),
            ({"limit": True}, TypeError, r"^limit must be an int >= 1, .* got True$"),
            ({"fail_fast": 1}, TypeError, r"^fail_fast must be a bool, got 1$"),
            ({"fail_fast": None}, TypeError, r"^fail_fast must be a bool, got None$"),
        ],
    )
    def test_bad_constructor_arguments(
        self, kwargs: dict[str, Any], error: type[Exception], pattern: str
    ) -> None:
        with pytest.raises(error, match=pattern):
            ConcurrencyScope(**kwargs)

    async def test_bad_spawns_raise_at_the_call_site(self) -> None:
        async with ConcurrencyScope() as scope:
            with pytest.raises(TypeError, match=r"^fn must be an async function, got 42$"):
                scope.spawn(42)  # type: ignore[arg-type]
            coro = echo(1)
            with pytest.raises(TypeError, match=r"pass the function and its arguments"):
                scope.spawn(coro)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"^name must be a str or None, got 3$"):
                scope.spawn(echo, 1, name=3)  # type: ignore[arg-type]
        assert scope.statistics().spawned == 0

    async def test_bad_deadlines(self) -> None:
        scope = ConcurrencyScope()
        with pytest.raises(TypeError, match=r"^deadline must be a clock time in seconds, got 'x'$"):
            scope.deadline = "x"  # type: ignore[assignment]
        with pytest.raises(ValueError, match=r"^deadline must not be NaN, got nan$"):
            scope.deadline = math.nan
        async with scope:
            with pytest.raises(ValueError, match=r"NaN"):
                scope.deadline = math.nan
            assert scope.deadline == math.inf


class TestCheckpoints:
    async def test_entry_and_wait_settled_are_cancel_points(self) -> None:
        scope = ConcurrencyScope()

        async def enter() -> None:
            async with scope:
                pytest.fail("entered")  # pragma: no cover

        await assert_cancel_point(enter)
        async with scope:  # the cancelled entry left it unentered
            await assert_cancel_point(scope.wait_settled)
            scope.spawn(anyio.sleep_forever)
            await assert_cancel_point(scope.wait_settled)
            scope.cancel()

    async def test_entry_and_wait_settled_are_schedule_points(self) -> None:
        scope = ConcurrencyScope()
        ran = False

        async def sibling() -> None:
            nonlocal ran
            ran = True

        async with anyio.create_task_group() as tg:  # the scope is entered and left inside
            tg.start_soon(sibling)
            if sniffio.current_async_library() == "trio":
                import trio.testing

                with trio.testing.assert_checkpoints():
                    await scope.__aenter__()
            else:
                await scope.__aenter__()
                assert ran
            try:
                await assert_schedule_point(scope.wait_settled)
            finally:
                await scope.__aexit__(None, None, None)


class TestIntrospection:
    async def test_statistics_is_a_frozen_balanced_snapshot(self) -> None:
        gate = Gate()
        async with ConcurrencyScope(limit=2, fail_fast=False) as scope:
            jobs = [scope.spawn(gate.job, i) for i in range(4)]
            jobs.append(scope.spawn(gate.fail, "bad"))
            await anyio.wait_all_tasks_blocked()
            stats = scope.statistics()
            assert stats == ScopeStatistics(
                running=2,
                queued=3,
                spawned=5,
                completed=0,
                failed=0,
                cancelled=0,
                peak_running=2,
                limit=2,
            )
            with pytest.raises(FrozenInstanceError):
                stats.running = 0  # type: ignore[misc]
            jobs[3].cancel()
            for tag in (0, 1, 2, "bad"):
                gate.open(tag)
                await anyio.wait_all_tasks_blocked()
                assert_balanced(scope.statistics())
        stats = scope.statistics()
        assert (stats.completed, stats.failed, stats.cancelled) == (3, 1, 1)
        assert (stats.running, stats.queued) == (0, 0)
        assert_balanced(stats)
        assert ConcurrencyScope().statistics().limit == math.inf

    async def test_repr_follows_the_life_of_the_scope(self) -> None:
        scope = ConcurrencyScope(limit=1)
        pattern = (
            r"<anyio_keyq.ConcurrencyScope at 0x[0-9a-f]+: {}, {} running, {} queued, "
            r"{} spawned, limit=1, fail_fast=True>"
        )
        assert re.fullmatch(pattern.format("not entered", 0, 0, 0), repr(scope))
        async with scope:
            scope.spawn(echo, 1)
            scope.spawn(echo, 2)
            assert re.fullmatch(pattern.format("active", 1, 1, 2), repr(scope))
        assert re.fullmatch(pattern.format("exited", 0, 0, 2), repr(scope))

    def test_properties_and_repr_need_no_event_loop(self) -> None:
        limiter_free = ConcurrencyScope(timeout=2.5, limit=3, fail_fast=False)
        assert limiter_free.timeout == 2.5
        assert limiter_free.limit == 3
        assert limiter_free.fail_fast is False
        assert limiter_free.cancel_called is False
        assert limiter_free.deadline == math.inf
        assert limiter_free.jobs == ()
        assert "not entered" in repr(limiter_free)

    async def test_every_handle_settles_exactly_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settled: dict[int, int] = defaultdict(int)
        original = Job._settle

        def counting(
            self: Job[Any], status: JobStatus, value: Any = None, exc: BaseException | None = None
        ) -> None:
            settled[id(self)] += 1
            original(self, status, value, exc)

        monkeypatch.setattr(Job, "_settle", counting)
        gate = Gate()
        with pytest.raises(ValueError, match="^bad$"):
            async with ConcurrencyScope(limit=3) as scope:
                jobs = [scope.spawn(gate.job, i) for i in range(6)]
                jobs.append(scope.spawn(gate.fail, "bad"))
                await anyio.wait_all_tasks_blocked()
                jobs[1].cancel()
                jobs[4].cancel()
                jobs[4].cancel()
                gate.open(0)
                await anyio.wait_all_tasks_blocked()
                gate.open("bad")
                await anyio.wait_all_tasks_blocked()
                gate.open(2)
                await anyio.sleep_forever()
        assert [settled[id(job)] for job in jobs] == [1] * 7
        assert all(job.done() for job in jobs)
        assert_balanced(scope.statistics())


# -- against a sequential model, driven by Hypothesis ------------------------------------


@dataclass
class Scenario:
    outcomes: list[str]  # per child: "return", "raise" or "hang"
    limit: int | None
    shared: bool  # the limit as a shared CapacityLimiter
    fail_fast: bool
    steps: list[tuple[str, int]]  # ("open" | "cancel", child)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 6))
    outcomes = draw(st.lists(st.sampled_from(["return", "raise", "hang"]), min_size=n, max_size=n))
    limit = draw(st.sampled_from([None, 1, 2, 3]))
    shared = limit is not None and draw(st.booleans())
    steps = draw(
        st.lists(st.tuples(st.sampled_from(["open", "cancel"]), st.integers(0, n - 1)), max_size=12)
    )
    return Scenario(outcomes, limit, shared, draw(st.booleans()), steps)


@dataclass
class Model:
    """What the scope must do, computed one step at a time with no concurrency at all."""

    outcomes: list[str]
    limit: int | None
    fail_fast: bool
    state: list[str] = field(default_factory=list)  # queued running finished failed cancelled
    gate: list[bool] = field(default_factory=list)
    started: set[int] = field(default_factory=set)
    raised: int | None = None

    def __post_init__(self) -> None:
        self.state = ["queued"] * len(self.outcomes)
        self.gate = [False] * len(self.outcomes)
        self.stabilise()

    @property
    def over(self) -> bool:
        return self.raised is not None

    def count(self, state: str) -> int:
        return self.state.count(state)

    def stabilise(self) -> None:
        """Start queued children while permits are free, and settle those let through."""
        while not self.over:
            for i, state in enumerate(self.state):
                if state == "running" and self.gate[i] and self.outcomes[i] != "hang":
                    self.settle(i)
                    break
            else:
                if "queued" in self.state and (
                    self.limit is None or self.count("running") < self.limit
                ):
                    i = self.state.index("queued")
                    self.state[i] = "running"
                    self.started.add(i)
                    continue
                return

    def settle(self, i: int) -> None:
        if self.outcomes[i] == "return":
            self.state[i] = "finished"
            return
        self.state[i] = "failed"
        if self.fail_fast:
            self.raised = i
            self.cancel_all()

    def cancel_all(self) -> None:
        self.state = ["cancelled" if s in ("queued", "running") else s for s in self.state]

    def open(self, i: int) -> None:
        self.gate[i] = True
        self.stabilise()

    def cancel(self, i: int) -> None:
        if self.state[i] in ("queued", "running"):
            self.state[i] = "cancelled"
        self.stabilise()


STATUS_OF = {
    "queued": QUEUED,
    "running": RUNNING,
    "finished": FINISHED,
    "failed": FAILED,
    "cancelled": CANCELLED,
}


async def run_scenario(sc: Scenario) -> None:
    model = Model(sc.outcomes, sc.limit, sc.fail_fast)
    gates = [anyio.Event() for _ in sc.outcomes]
    began: list[int] = []

    async def child(i: int) -> int:
        began.append(i)
        await gates[i].wait()
        if sc.outcomes[i] == "hang":
            await anyio.sleep_forever()
        if sc.outcomes[i] == "raise":
            raise ValueError(i)
        return i

    def check(scope: ConcurrencyScope, handles: list[Job[int]]) -> None:
        assert [h.status for h in handles] == [STATUS_OF[s] for s in model.state]
        stats = scope.statistics()
        assert stats.running == model.count("running")
        assert stats.queued == model.count("queued")
        assert stats.completed == model.count("finished")
        assert stats.failed == model.count("failed")
        assert stats.cancelled == model.count("cancelled")
        assert_balanced(stats)
        assert set(began) == model.started

    limit: int | anyio.CapacityLimiter | None = sc.limit
    if sc.shared and sc.limit is not None:
        limit = anyio.CapacityLimiter(sc.limit)
    raised: ValueError | None = None
    handles: list[Job[int]] = []
    try:
        async with ConcurrencyScope(limit=limit, fail_fast=sc.fail_fast) as scope:
            handles.extend(scope.spawn(child, i) for i in range(len(sc.outcomes)))
            await anyio.wait_all_tasks_blocked()
            check(scope, handles)
            for op, i in sc.steps:
                if op == "open":
                    gates[i].set()
                    model.open(i)
                else:
                    handles[i].cancel()
                    model.cancel(i)
                await anyio.wait_all_tasks_blocked()
                check(scope, handles)
            for i, state in enumerate(model.state):
                if state in ("queued", "running") and not model.gate[i]:
                    gates[i].set()
                    model.open(i)
                    await anyio.wait_all_tasks_blocked()
                    check(scope, handles)
            if "queued" in model.state or "running" in model.state:
                scope.cancel()
                model.cancel_all()
    except ValueError as exc:
        raised = exc
    if model.raised is None:
        assert raised is None
    else:
        assert type(raised) is ValueError
        assert raised.args == (model.raised,)
    check(scope, handles)
    assert sorted(began) == sorted(set(began))  # no child began twice
    for i, handle in enumerate(handles):
        if model.state[i] == "finished":
            assert handle.result() == i
        elif model.state[i] == "failed":
            error = handle.exception()
            assert isinstance(error, ValueError)
            assert error.args == (i,)
    if isinstance(limit, anyio.CapacityLimiter):
        assert limit.borrowed_tokens == 0


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_scope_against_a_sequential_model(
    backend: tuple[str, dict[str, Any]], sc: Scenario
) -> None:
    anyio.run(run_scenario, sc, backend=backend[0], backend_options=backend[1])
