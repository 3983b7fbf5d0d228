"""KeyedLanes with job weights, priorities and any Limiter, on every backend."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import anyio
import pytest

from anyio_keyq import KeyedLanes

from .test_lanes import Gate, assert_balanced

pytestmark = pytest.mark.anyio


class RecordingLimiter:
    """A plain FIFO weighted limiter that implements the Limiter protocol and records.

    Kept minimal on purpose: it checks what the lanes ask of a limiter, not a limiter.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.held: dict[object, int] = {}
        self.waiters: deque[tuple[object, int, anyio.Event]] = deque()
        self.asked: list[tuple[int, float]] = []
        self.released: list[bool] = []

    @property
    def total_tokens(self) -> float:
        return self.total

    def acquire_on_behalf_of_nowait(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        self.asked.append((weight, priority))
        if self.waiters or self.used + weight > self.total:
            raise anyio.WouldBlock
        self.used += weight
        self.held[borrower] = weight

    async def acquire_on_behalf_of(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        try:
            self.acquire_on_behalf_of_nowait(borrower, weight=weight, priority=priority)
        except anyio.WouldBlock:
            pass
        else:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (borrower, weight, event)
        self.waiters.append(entry)
        try:
            await event.wait()
        except BaseException:
            if borrower in self.held:  # granted in the same instant: give it back
                self.release_on_behalf_of(borrower)
            else:
                self.waiters.remove(entry)
            raise

    def release_on_behalf_of(self, borrower: object, /, *, failed: bool = False) -> None:
        self.used -= self.held.pop(borrower)
        self.released.append(failed)
        while self.waiters and self.used + self.waiters[0][1] <= self.total:
            waiter, weight, event = self.waiters.popleft()
            self.used += weight
            self.held[waiter] = weight
            event.set()


async def test_weights_count_against_an_int_limit_in_fifo_order() -> None:
    gate = Gate()
    async with KeyedLanes[str](limit=3) as lanes:
        lanes.submit_nowait("a", gate.job, "a", weight=2)
        lanes.submit_nowait("b", gate.job, "b", weight=2)  # does not fit next to a
        lanes.submit_nowait("c", gate.job, "c")  # fits, but must not overtake b
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["a"]
        gate.open("a")
        await anyio.wait_all_tasks_blocked()
        assert sorted(gate.started) == ["a", "b", "c"]
        assert gate.peak == 2
        gate.open("b")
        gate.open("c")
    assert_balanced(lanes.statistics())


async def test_a_light_job_runs_beside_a_heavy_one_when_it_fits() -> None:
    gate = Gate()
    async with KeyedLanes[str](limit=3) as lanes:
        lanes.submit_nowait("a", gate.job, "a", weight=2)
        lanes.submit_nowait("b", gate.job, "b")
        lanes.submit_nowait("c", gate.job, "c")
        await anyio.wait_all_tasks_blocked()
        assert sorted(gate.started) == ["a", "b"]  # trio starts them in any order
        gate.open("b")
        await anyio.wait_all_tasks_blocked()
        assert gate.started[2:] == ["c"]
        gate.open("a")
        gate.open("c")


async def test_priority_orders_lanes_waiting_for_a_permit() -> None:
    gate = Gate()
    async with KeyedLanes[str](limit=1) as lanes:
        lanes.submit_nowait("busy", gate.job, "busy")
        lanes.submit_nowait("low1", gate.job, "low1", priority=5)
        lanes.submit_nowait("low2", gate.job, "low2", priority=5)
        lanes.submit_nowait("plain", gate.job, "plain")
        lanes.submit_nowait("urgent", gate.job, "urgent", priority=-1)
        await anyio.wait_all_tasks_blocked()
        for tag in ("busy", "urgent", "plain", "low1", "low2"):
            assert gate.started[-1] == tag
            gate.open(tag)
            await anyio.wait_all_tasks_blocked()
    assert gate.started == ["busy", "urgent", "plain", "low1", "low2"]


async def test_priority_never_reorders_the_jobs_of_one_key() -> None:
    gate = Gate()
    async with KeyedLanes[str](limit=1) as lanes:
        lanes.submit_nowait("k", gate.job, 1, priority=9)
        lanes.submit_nowait("k", gate.job, 2, priority=-9)
        lanes.submit_nowait("other", gate.job, 3, priority=0)
        await anyio.wait_all_tasks_blocked()
        for tag in (1, 2):
            gate.open(tag)
            await anyio.wait_all_tasks_blocked()
        gate.open(3)
    assert gate.started.index(1) < gate.started.index(2)


async def test_a_limiter_is_asked_with_weight_and_priority_and_told_outcomes() -> None:
    limiter = RecordingLimiter(2)

    async def fail() -> None:
        raise ValueError("no")

    async def slow() -> None:
        await anyio.sleep_forever()

    async def ok() -> int:
        return 1

    async with KeyedLanes[str](limit=limiter) as lanes:
        assert lanes.limit is limiter
        job = lanes.submit_nowait("a", ok, weight=2, priority=3)
        failing = lanes.submit_nowait("b", fail)
        timing_out = lanes.submit_nowait("c", slow, timeout=0.01)
    assert job.result() == 1
    assert isinstance(failing.exception(), ValueError)
    assert isinstance(timing_out.exception(), TimeoutError)
    assert limiter.asked[0] == (2, 3)
    # The failure and the timeout; a permit the lanes took and did not need goes back
    # as not failed.
    assert limiter.released.count(True) == 2
    assert limiter.used == 0
    assert not limiter.held


async def test_lanes_share_a_limiter_with_outside_users_in_its_order() -> None:
    limiter = RecordingLimiter(1)
    gate = Gate()
    outside = object()
    await limiter.acquire_on_behalf_of(outside)
    async with KeyedLanes[str](limit=limiter) as lanes:
        lanes.submit_nowait("a", gate.job, "a")
        lanes.submit_nowait("b", gate.job, "b")
        await anyio.wait_all_tasks_blocked()
        assert gate.started == []
        assert len(limiter.waiters) == 1  # one task waits for the lanes, not one per job
        limiter.release_on_behalf_of(outside)
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["a"]
        gate.open("a")
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["a", "b"]
        gate.open("b")
    assert limiter.used == 0


async def test_a_waiting_heavy_job_gets_its_whole_weight_from_a_limiter() -> None:
    limiter = RecordingLimiter(3)
    gate = Gate()
    async with KeyedLanes[str](limit=limiter) as lanes:
        lanes.submit_nowait("a", gate.job, "a", weight=2)
        lanes.submit_nowait("b", gate.job, "b", weight=3)
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["a"]
        assert limiter.waiters[0][1] == 3
        gate.open("a")
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["a", "b"]
        assert limiter.used == 3
        gate.open("b")
    assert limiter.used == 0


@pytest.mark.parametrize(
    ("limit", "kwargs", "error", "pattern"),
    [
        (3, {"weight": 0}, ValueError, "weight"),
        (3, {"weight": 1.5}, TypeError, "weight"),
        (3, {"weight": 4}, ValueError, "at most the limit of 3, got 4"),
        (None, {"priority": "high"}, TypeError, "priority must be a number"),
        (None, {"priority": math.nan}, ValueError, "priority must be a number"),
        (None, {"priority": True}, TypeError, "priority"),
    ],
)
async def test_bad_weights_and_priorities_are_refused_at_the_call(
    limit: int | None, kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    async def nothing() -> None:
        pass

    async with KeyedLanes[str](limit=limit) as lanes:
        with pytest.raises(error, match=pattern):
            lanes.submit_nowait("k", nothing, **kwargs)
        with pytest.raises(error, match=pattern):
            await lanes.submit("k", nothing, **kwargs)
        assert len(lanes) == 0  # nothing left behind


async def test_a_capacity_limiter_takes_no_weights() -> None:
    async def nothing() -> None:
        pass

    async with KeyedLanes[str](limit=anyio.CapacityLimiter(4)) as lanes:
        with pytest.raises(ValueError, match="weight must be 1 with a CapacityLimiter"):
            lanes.submit_nowait("k", nothing, weight=2)
        await lanes.run("k", nothing, priority=1)  # a priority alone is fine


async def test_a_scope_borrows_from_a_limiter_and_reports_outcomes() -> None:
    from anyio_keyq import ConcurrencyScope

    limiter = RecordingLimiter(1)
    gate = Gate()

    async def fail() -> None:
        raise ValueError("no")

    async with ConcurrencyScope(limit=limiter, fail_fast=False) as scope:
        first = scope.spawn(gate.job, "first")
        second = scope.spawn(gate.job, "second")
        failing = scope.spawn(fail)
        await anyio.wait_all_tasks_blocked()
        assert gate.started == ["first"]
        assert not second.done()
        gate.open("first")
        await anyio.wait_all_tasks_blocked()
        gate.open("second")
    assert first.result() == "first"
    assert isinstance(failing.exception(), ValueError)
    assert limiter.released.count(True) == 1
    assert limiter.used == 0


async def test_amap_borrows_from_a_limiter_and_reports_outcomes() -> None:
    from anyio_keyq import amap

    limiter = RecordingLimiter(2)
    running = [0, 0]

    async def work(item: int) -> int:
        running[0] += 1
        running[1] = max(running)
        await anyio.lowlevel.checkpoint()
        running[0] -= 1
        if item == 3:
            raise ValueError(item)
        return item * 10

    async with amap(work, range(6), limit=limiter, return_exceptions=True) as results:
        out = [r async for r in results]
    assert [r for r in out if isinstance(r, int)] == [0, 10, 20, 40, 50]
    assert running[1] <= 2
    assert limiter.released.count(True) == 1
    assert limiter.used == 0


async def test_amap_reports_a_cancelled_call_as_not_failed() -> None:
    from anyio_keyq import amap

    limiter = RecordingLimiter(1)
    started = anyio.Event()

    async def hang(item: int) -> int:
        started.set()
        await anyio.sleep_forever()
        return item  # pragma: no cover

    with anyio.CancelScope() as scope:
        async with amap(hang, [1], limit=limiter) as results:
            await started.wait()
            scope.cancel()
            async for _ in results:  # pragma: no cover
                pass
    assert limiter.released == [False]
    assert limiter.used == 0
