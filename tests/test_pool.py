"""Pool: lending, failures, closing, cancellation, timing, a real TCP server, a model."""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_keyq import Pool, PoolClosed, PoolStatistics

from .conftest import _virtual_asyncio, _virtual_trio
from .helpers import assert_cancel_point, assert_schedule_point

pytestmark = pytest.mark.anyio

ZERO = PoolStatistics(
    size=0,
    idle=0,
    borrowed=0,
    creating=0,
    closing=0,
    waiting=0,
    created=0,
    closed=0,
    acquired=0,
    timed_out=0,
    failed=0,
    invalid=0,
    expired=0,
    discarded=0,
)


class Res:
    """A resource that knows whether, and when, it was closed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ok = True
        self.closed_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def aclose(self) -> None:
        await checkpoint()
        assert self.closed_at is None, "closed twice"
        self.closed_at = anyio.current_time()

    def __repr__(self) -> str:
        return f"Res({self.n})"


class Factory:
    """Makes numbered resources; can be told to fail or to wait for a gate."""

    def __init__(self) -> None:
        self.made: list[Res] = []
        self.fail: list[BaseException | None] = []  # outcomes of the next calls
        self.gate: anyio.Event | None = None
        self.started = 0
        self.cancelled = 0

    async def __call__(self) -> Res:
        self.started += 1
        try:
            await checkpoint()
            if self.gate is not None:
                await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        if self.fail:
            error = self.fail.pop(0)
            if error is not None:
                raise error
        res = Res(len(self.made))
        self.made.append(res)
        return res

    @property
    def open(self) -> list[Res]:
        return [r for r in self.made if not r.closed]


def settled(pool: Pool[Any]) -> PoolStatistics:
    """Nobody borrows, waits, creates or closes; every resource left is idle."""
    stats = pool.statistics()
    assert (stats.borrowed, stats.waiting, stats.creating, stats.closing) == (0, 0, 0, 0)
    assert stats.size == stats.idle
    return stats


async def use(pool: Pool[Res]) -> Res:
    async with pool.acquire() as res:
        return res


class TestLending:
    async def test_a_returned_resource_is_lent_again(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=2) as pool:
            async with pool.acquire() as first:
                assert first.n == 0
                stats = pool.statistics()
                assert (stats.size, stats.borrowed, stats.idle) == (1, 1, 0)
            async with pool.acquire() as second:
                assert second is first
            assert settled(pool).idle == 1
        assert first.closed
        assert pool.statistics() == PoolStatistics(
            size=0,
            idle=0,
            borrowed=0,
            creating=0,
            closing=0,
            waiting=0,
            created=1,
            closed=1,
            acquired=2,
            timed_out=0,
            failed=0,
            invalid=0,
            expired=0,
            discarded=0,
        )

    async def test_the_most_recently_returned_first(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=3) as pool:
            async with pool.acquire() as a, pool.acquire() as b:
                assert (a.n, b.n) == (0, 1)
            # b came back first, a last.
            assert (await use(pool)) is a

    async def test_waiters_are_served_first_come_first_served(self) -> None:
        factory = Factory()
        order: list[str] = []
        async with Pool(factory, max_size=1) as pool:

            async def borrower(name: str) -> None:
                async with pool.acquire():
                    order.append(name)
                    await checkpoint()

            lease = pool.acquire()
            await lease.__aenter__()
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(borrower, str(i))
                    await anyio.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 5
                await lease.__aexit__(None, None, None)
                # A newcomer queues behind the waiters, even though the resource
                # came back an instant ago.
                await borrower("late")
            assert order == ["0", "1", "2", "3", "4", "late"]
            assert len(factory.made) == 1
            settled(pool)

    async def test_creates_only_up_to_max_size(self) -> None:
        factory = Factory()
        factory.gate = anyio.Event()
        async with Pool(factory, max_size=2) as pool, anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(use, pool)
            await anyio.wait_all_tasks_blocked()
            stats = pool.statistics()
            assert (stats.size, stats.creating, stats.waiting) == (2, 2, 3)
            factory.gate.set()
        assert len(factory.made) == 2
        assert pool.statistics().acquired == 5

    async def test_an_error_in_the_block_discards_the_resource(self) -> None:
        factory = Factory()
        error = ValueError("broken")
        async with Pool(factory, max_size=1) as pool:
            with pytest.raises(ValueError, match="^broken$") as info:
                async with pool.acquire() as res:
                    raise error
            assert info.value is error
            assert res.closed
            assert (await use(pool)) is not res
            stats = settled(pool)
            assert (stats.discarded, stats.closed, stats.created) == (1, 1, 2)

    async def test_keep_on_error_puts_it_back_and_validates_it(self) -> None:
        factory = Factory()
        checked: list[Res] = []

        def validate(res: Res) -> bool:
            checked.append(res)
            return res.ok

        async with Pool(factory, max_size=1, keep_on_error=True, validate=validate) as pool:
            with pytest.raises(KeyError):
                async with pool.acquire() as res:
                    raise KeyError("k")
            assert not res.closed
            assert checked == []  # a fresh resource is not validated
            assert (await use(pool)) is res
            assert checked == [res]
            # Cancellation discards it all the same: its state is unknown.
            with anyio.CancelScope() as scope:
                async with pool.acquire() as again:
                    scope.cancel()
                    await checkpoint()
            assert again is res
            assert res.closed
            assert settled(pool).discarded == 1

    async def test_a_cancelled_block_discards_the_resource(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1) as pool:
            with anyio.CancelScope() as scope:
                async with pool.acquire() as res:
                    scope.cancel()
                    await anyio.sleep_forever()
            assert res.closed
            assert settled(pool).discarded == 1

    async def test_discard(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=2) as pool:
            async with pool.acquire() as res:
                pool.discard(res)
                pool.discard(res)  # twice: no harm
                with pytest.raises(
                    RuntimeError, match=r"^discard\(\) was given Res\(9\), which is not borrowed"
                ):
                    pool.discard(Res(9))
            assert res.closed
            with pytest.raises(RuntimeError, match="not borrowed from this pool$"):
                pool.discard(res)
            assert settled(pool).discarded == 1

    async def test_factory_failure_frees_its_room(self) -> None:
        factory = Factory()
        factory.fail = [OSError("refused")]
        async with Pool(factory, max_size=1) as pool:
            with pytest.raises(OSError, match="^refused$"):
                await use(pool)
            assert settled(pool) == replace(ZERO, failed=1)
            assert (await use(pool)).n == 0

    async def test_factory_failure_goes_to_its_caller_and_the_next_waiter_creates(
        self,
    ) -> None:
        factory = Factory()
        outcomes: dict[str, object] = {}
        async with Pool(factory, max_size=1, close=lambda res: None) as pool:

            async def waiter(name: str) -> None:
                try:
                    outcomes[name] = await use(pool)
                except OSError as exc:
                    outcomes[name] = exc

            async with anyio.create_task_group() as tg:
                async with pool.acquire() as res:
                    tg.start_soon(waiter, "first")
                    await anyio.wait_all_tasks_blocked()
                    tg.start_soon(waiter, "second")
                    await anyio.wait_all_tasks_blocked()
                    factory.fail = [OSError("down")]
                    pool.discard(res)
            assert isinstance(outcomes["first"], OSError)
            assert outcomes["second"] is factory.made[1]
            stats = settled(pool)
            assert (stats.failed, stats.created, stats.idle) == (1, 2, 1)


class TestValidate:
    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_a_refused_resource_is_closed_and_replaced(self, kind: str) -> None:
        factory = Factory()

        def check(res: Res) -> bool:
            return res.ok

        async def acheck(res: Res) -> bool:
            await checkpoint()
            return res.ok

        validate = check if kind == "sync" else acheck
        async with Pool(factory, max_size=3, validate=validate) as pool:
            async with pool.acquire() as a, pool.acquire() as b:
                pass
            a.ok = b.ok = False
            fresh = await use(pool)
            assert a.closed
            assert b.closed
            assert fresh.n == 2
            stats = settled(pool)
            assert (stats.invalid, stats.created, stats.idle) == (2, 3, 1)

    async def test_a_waiter_handed_a_refused_resource_keeps_its_turn(self) -> None:
        factory = Factory()
        order: list[tuple[str, int]] = []
        async with Pool(factory, max_size=1, validate=lambda res: res.ok) as pool:

            async def borrower(name: str) -> None:
                async with pool.acquire() as res:
                    order.append((name, res.n))
                    await checkpoint()

            async with anyio.create_task_group() as tg:
                async with pool.acquire() as res:
                    tg.start_soon(borrower, "first")
                    await anyio.wait_all_tasks_blocked()
                    tg.start_soon(borrower, "second")
                    await anyio.wait_all_tasks_blocked()
                    res.ok = False
            # The first waiter was handed the refused resource, closed it, and made a
            # new one in its place, ahead of the second waiter.
            assert order == [("first", 1), ("second", 1)]
            assert res.closed
            assert settled(pool).invalid == 1

    async def test_a_raising_validate_refuses(self, caplog: pytest.LogCaptureFixture) -> None:
        factory = Factory()

        def validate(res: Res) -> bool:
            raise ConnectionResetError("gone")

        caplog.set_level(logging.DEBUG, logger="anyio_keyq")
        async with Pool(factory, max_size=1, validate=validate) as pool:
            first = await use(pool)
            second = await use(pool)
            assert first.closed
            assert second is not first
            assert settled(pool).invalid == 1
        assert "validate raised" in caplog.text


class TestClose:
    async def test_default_close_variants(self) -> None:
        events: list[str] = []

        class AsyncClose:
            async def aclose(self) -> None:
                events.append("aclose")

        class SyncClose:
            def close(self) -> None:
                events.append("close")

        class AwaitableClose:
            def close(self) -> Any:
                async def closing() -> None:
                    events.append("awaited close")

                return closing()

        class NoClose:
            pass

        for cls in (AsyncClose, SyncClose, AwaitableClose, NoClose):
            made: type[object] = cls

            async def factory(made: type[object] = made) -> object:
                return made()

            async with Pool(factory, max_size=1) as pool:
                await use(pool)  # type: ignore[arg-type]
            assert pool.statistics().closed == 1
        assert events == ["aclose", "close", "awaited close"]

    @pytest.mark.parametrize("kind", ["sync", "async"])
    async def test_custom_close(self, kind: str) -> None:
        closed: list[Res] = []

        def close(res: Res) -> None:
            closed.append(res)

        async def aclose(res: Res) -> None:
            await checkpoint()
            closed.append(res)

        factory = Factory()
        async with Pool(factory, max_size=1, close=close if kind == "sync" else aclose) as pool:
            res = await use(pool)
        assert closed == [res]
        assert not res.closed  # its own aclose() was not called

    async def test_a_failing_close_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        def close(res: Res) -> None:
            raise OSError("cannot close")

        factory = Factory()
        async with Pool(factory, max_size=1, close=close) as pool:
            async with pool.acquire() as res:
                pool.discard(res)
            assert settled(pool).closed == 1
            assert (await use(pool)).n == 1
        assert "closing Res(0) raised" in caplog.text


class TestClosing:
    async def test_leaving_the_block_closes_the_idle_resources(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=3) as pool:
            async with pool.acquire(), pool.acquire(), pool.acquire():
                pass
            assert len(factory.open) == 3
        assert factory.open == []
        assert pool.closed
        assert pool.statistics().closed == 3
        with pytest.raises(PoolClosed, match="^the pool is closed and hands out no resource$"):
            await use(pool)

    async def test_an_exception_leaves_the_block_unchanged(self) -> None:
        factory = Factory()
        with pytest.raises(ZeroDivisionError):
            async with Pool(factory, max_size=1) as pool:
                await use(pool)
                1 / 0  # noqa: B018
        assert factory.open == []

    async def test_aclose_inside_the_block(self) -> None:
        factory = Factory()
        errors: list[BaseException] = []

        async with Pool(factory, max_size=2) as pool:

            async def waiter() -> None:
                try:
                    await use(pool)
                except PoolClosed as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                async with pool.acquire() as held, pool.acquire() as held2:
                    pass
                async with pool.acquire() as held, pool.acquire() as held2:
                    tg.start_soon(waiter)
                    await anyio.wait_all_tasks_blocked()
                    assert pool.statistics().waiting == 1
                    await pool.aclose()
                    await pool.aclose()  # again: nothing to do
                    await checkpoint()  # the block itself is not cancelled
                    assert not held.closed  # borrowed: closed when returned
                    with pytest.raises(PoolClosed):
                        await use(pool)
                assert held.closed
                assert held2.closed
            assert len(errors) == 1
            stats = settled(pool)
            assert (stats.size, stats.closed, stats.discarded) == (0, 2, 0)

    async def test_a_resource_created_while_closing_is_closed(self) -> None:
        factory = Factory()
        factory.gate = anyio.Event()
        async with Pool(factory, max_size=1) as pool, anyio.create_task_group() as tg:

            async def creator() -> None:
                with pytest.raises(PoolClosed):
                    await use(pool)

            tg.start_soon(creator)
            await anyio.wait_all_tasks_blocked()
            await pool.aclose()
            factory.gate.set()
        assert len(factory.made) == 1
        assert factory.made[0].closed
        assert settled(pool).size == 0

    async def test_aclose_is_a_checkpoint_that_still_closes(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1) as pool:
            await use(pool)
            await assert_cancel_point(pool.aclose)
            assert pool.closed
            assert factory.open == []

    async def test_aclose_before_entering(self) -> None:
        pool = Pool(Factory(), max_size=1)
        await pool.aclose()
        async with pool:
            with pytest.raises(PoolClosed):
                await use(pool)


class TestMinSize:
    async def test_entering_creates_min_size(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=3, min_size=2) as pool:
            assert settled(pool).idle == 2
            async with pool.acquire() as res:
                pool.discard(res)
            await anyio.wait_all_tasks_blocked()
            assert settled(pool).idle == 2  # refilled in the background
            assert len(factory.made) == 3
        assert factory.open == []

    async def test_a_failure_on_entry_closes_what_was_made(self) -> None:
        factory = Factory()
        factory.fail = [None, OSError("refused")]
        pool = Pool(factory, max_size=3, min_size=3)
        with pytest.raises(OSError, match="^refused$"):
            async with pool:
                pytest.fail("entered")  # pragma: no cover
        assert len(factory.made) == 1
        assert factory.open == []
        assert pool.closed

    async def test_a_failing_refill_waits_for_a_working_factory(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        factory = Factory()
        async with Pool(factory, max_size=3, min_size=1) as pool:
            factory.fail = [OSError("down")]
            async with pool.acquire() as res:
                pool.discard(res)
            await anyio.wait_all_tasks_blocked()
            assert "refilling to min_size failed" in caplog.text
            assert settled(pool).size == 0  # not retried in a loop
            assert pool.statistics().failed == 1
            await use(pool)  # the factory works again
            await anyio.wait_all_tasks_blocked()
            assert settled(pool).idle == 1
            assert len(factory.made) == 2


class TestCancellation:
    async def test_cancelled_while_waiting(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1) as pool:
            async with pool.acquire():
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(use, pool)
                        await anyio.wait_all_tasks_blocked()
                        assert pool.statistics().waiting == 1
                        scope.cancel()
                assert pool.statistics().waiting == 0
            assert settled(pool).idle == 1

    @pytest.mark.parametrize("order", ["release, then cancel", "cancel, then release"])
    async def test_a_resource_handed_to_a_cancelled_waiter_is_not_lost(self, order: str) -> None:
        factory = Factory()
        got: list[str] = []
        async with Pool(factory, max_size=1) as pool:
            victim = anyio.CancelScope()

            async def first() -> None:
                with victim:
                    await use(pool)
                    got.append("first")

            async def second() -> None:
                await use(pool)
                got.append("second")

            lease = pool.acquire()
            res = await lease.__aenter__()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(second)
                await anyio.wait_all_tasks_blocked()
                if order == "release, then cancel":
                    await lease.__aexit__(None, None, None)
                    victim.cancel()
                else:
                    victim.cancel()
                    await lease.__aexit__(None, None, None)
            if order == "cancel, then release":
                assert victim.cancelled_caught
            # Released first, the waiter may have the resource before the cancellation
            # reaches it (trio), or not (asyncio); either way, nothing is lost.
            assert got == (["second"] if victim.cancelled_caught else ["first", "second"])
            assert not res.closed
            assert len(factory.made) == 1
            assert settled(pool).idle == 1

    async def test_room_handed_to_a_cancelled_waiter_is_passed_on(self) -> None:
        factory = Factory()
        got: list[Res] = []
        async with Pool(factory, max_size=1, close=lambda res: None) as pool:
            victim = anyio.CancelScope()

            async def first() -> None:
                with victim:
                    await use(pool)

            async def second() -> None:
                got.append(await use(pool))

            lease = pool.acquire()
            res = await lease.__aenter__()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(second)
                await anyio.wait_all_tasks_blocked()
                pool.discard(res)
                await lease.__aexit__(None, None, None)  # closes at once (sync close)
                victim.cancel()
            assert victim.cancelled_caught
            assert got == [factory.made[1]]
            assert len(factory.made) == 2
            assert settled(pool).idle == 1

    async def test_cancelled_during_the_factory(self) -> None:
        factory = Factory()
        factory.gate = anyio.Event()
        async with Pool(factory, max_size=1) as pool:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(use, pool)
                    await anyio.wait_all_tasks_blocked()
                    assert pool.statistics().creating == 1
                    scope.cancel()
            assert factory.cancelled == 1
            assert settled(pool) == ZERO
            factory.gate.set()
            assert (await use(pool)).n == 0

    async def test_a_resource_made_despite_cancellation_joins_the_pool(self) -> None:
        release = anyio.Event()
        made: list[Res] = []

        async def stubborn() -> Res:
            with anyio.CancelScope(shield=True):
                await release.wait()
            made.append(Res(len(made)))
            return made[-1]

        async with Pool(stubborn, max_size=1) as pool:
            scope = anyio.CancelScope()

            async def victim() -> None:
                with scope:
                    await use(pool)

            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                release.set()
            assert scope.cancelled_caught
            stats = settled(pool)
            assert (stats.idle, stats.created, stats.acquired) == (1, 1, 0)
            assert (await use(pool)) is made[0]
        assert made[0].closed

    async def test_cancelled_during_validate_closes_the_resource(self) -> None:
        factory = Factory()
        checking = anyio.Event()

        async def validate(res: Res) -> bool:
            checking.set()
            await anyio.sleep_forever()
            return True  # pragma: no cover

        async with Pool(factory, max_size=1, validate=validate) as pool:
            res = await use(pool)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(use, pool)
                    await checking.wait()
                    scope.cancel()
            assert res.closed
            stats = settled(pool)
            assert (stats.size, stats.discarded) == (0, 1)

    async def test_a_resource_handed_over_while_closing_is_closed(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1) as pool:
            victims = [anyio.CancelScope(), anyio.CancelScope()]

            async def waiter(scope: anyio.CancelScope) -> None:
                with scope:
                    await use(pool)

            lease = pool.acquire()
            res = await lease.__aenter__()
            async with anyio.create_task_group() as tg:
                for scope in victims:
                    tg.start_soon(waiter, scope)
                    await anyio.wait_all_tasks_blocked()
                # In the same instant: both are cancelled, the first is handed the
                # resource, and the pool closes (which wakes the second).
                for scope in victims:
                    scope.cancel()
                await lease.__aexit__(None, None, None)
                await pool.aclose()
            assert all(scope.cancelled_caught for scope in victims)
            assert res.closed
            assert settled(pool).size == 0

    async def test_closed_while_replacing_a_refused_resource(self) -> None:
        factory = Factory()
        gate = anyio.Event()

        async def close(res: Res) -> None:
            await gate.wait()

        async with Pool(factory, max_size=1, validate=lambda res: False, close=close) as pool:
            await use(pool)
            async with anyio.create_task_group() as tg:

                async def borrower() -> None:
                    with pytest.raises(PoolClosed):
                        await use(pool)

                tg.start_soon(borrower)
                await anyio.wait_all_tasks_blocked()
                assert pool.statistics().closing == 1
                await pool.aclose()
                gate.set()
            assert settled(pool) == replace(ZERO, created=1, closed=1, acquired=1, invalid=1)

    async def test_closed_while_validating(self) -> None:
        factory = Factory()
        gate = anyio.Event()

        async def validate(res: Res) -> bool:
            await gate.wait()
            return True

        async with Pool(factory, max_size=1, validate=validate) as pool:
            res = await use(pool)
            async with anyio.create_task_group() as tg:

                async def borrower() -> None:
                    with pytest.raises(PoolClosed):
                        await use(pool)

                tg.start_soon(borrower)
                await anyio.wait_all_tasks_blocked()
                await pool.aclose()
                gate.set()
            assert res.closed
            assert settled(pool).size == 0

    async def test_made_despite_cancellation_while_closing(self) -> None:
        release = anyio.Event()
        made: list[Res] = []

        async def stubborn() -> Res:
            with anyio.CancelScope(shield=True):
                await release.wait()
            made.append(Res(len(made)))
            return made[-1]

        async with Pool(stubborn, max_size=1) as pool:
            scope = anyio.CancelScope()

            async def victim() -> None:
                with scope:
                    await use(pool)

            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await pool.aclose()
                release.set()
            assert scope.cancelled_caught
            assert made[0].closed
            assert settled(pool).size == 0

    async def test_cancelled_at_every_await(self) -> None:
        """Fault injection: cancel the workload at its 1st, 2nd, ... await; no leak."""
        target = 1
        while await cancel_workload_at(target):
            target += 1
        assert target > 20  # the workload had that many awaits to cancel at


async def cancel_workload_at(target: int) -> bool:
    """Run a workload whose *target*-th await cancels it; return whether it did."""
    count = 0
    scope = anyio.CancelScope()
    made: list[Res] = []
    calls = 0

    async def point() -> None:
        nonlocal count
        count += 1
        if count == target:
            scope.cancel()
        await checkpoint()

    async def factory() -> Res:
        nonlocal calls
        calls += 1
        await point()
        if calls % 4 == 0:
            raise OSError("refused")
        await point()
        made.append(Res(len(made)))
        return made[-1]

    async def validate(res: Res) -> bool:
        await point()
        return res.n % 3 != 1

    async def close(res: Res) -> None:
        await point()
        await res.aclose()

    async with Pool(factory, max_size=2, validate=validate, close=close) as pool:

        async def worker(i: int) -> None:
            for j in range(3):
                try:
                    async with pool.acquire() as res:
                        await point()
                        if (i + j) % 2:
                            raise KeyError(res.n)
                except (KeyError, OSError):
                    pass

        with scope:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(worker, i)
        stats = settled(pool)
        assert sorted(r.n for r in made if not r.closed) == sorted(e.resource.n for e in pool._idle)
        assert stats.size <= 2
    assert all(r.closed for r in made)
    return scope.cancel_called


class TestCheckpoints:
    async def test_acquire_is_a_cancel_point(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1) as pool:
            await use(pool)
            await assert_cancel_point(lambda: use(pool))
            stats = settled(pool)
            assert (stats.idle, stats.acquired) == (1, 1)

    async def test_acquire_is_a_schedule_point(self) -> None:
        made = 0

        async def instant() -> int:
            nonlocal made
            made += 1
            return made

        async with Pool(instant, max_size=1) as pool:
            assert await assert_schedule_point(lambda: use(pool)) == 1  # created
            assert await assert_schedule_point(lambda: use(pool)) == 1  # idle

    async def test_entering_is_a_checkpoint(self) -> None:
        pool = Pool(Factory(), max_size=1)
        await assert_cancel_point(pool.__aenter__)


class TestTiming:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_acquire_timeout_on_a_hanging_factory(self) -> None:
        factory = Factory()
        factory.gate = anyio.Event()
        async with Pool(factory, max_size=1, acquire_timeout=0.5) as pool:
            start = anyio.current_time()
            with pytest.raises(
                TimeoutError,
                match=r"^<anyio_keyq.Pool at 0x[0-9a-f]+: open, factory=<.*Factory object"
                r".*> lent no resource within acquire_timeout=0.5 seconds$",
            ):
                await use(pool)
            assert anyio.current_time() == start + 0.5
            assert factory.cancelled == 1
            assert settled(pool) == replace(ZERO, timed_out=1)

    async def test_acquire_timeout_while_waiting(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1, acquire_timeout=0.25) as pool:
            async with pool.acquire():
                start = anyio.current_time()
                with pytest.raises(TimeoutError):
                    await use(pool)
                assert anyio.current_time() == start + 0.25
                assert pool.statistics().waiting == 0
            assert settled(pool).timed_out == 1

    async def test_a_hanging_validate_is_bounded_by_acquire_timeout(self) -> None:
        async def validate(res: Res) -> bool:
            await anyio.sleep_forever()
            return True  # pragma: no cover

        factory = Factory()
        async with Pool(factory, max_size=1, acquire_timeout=2, validate=validate) as pool:
            res = await use(pool)
            with pytest.raises(TimeoutError):
                await use(pool)
            assert res.closed
            assert settled(pool).size == 0

    async def test_a_hanging_close_is_bounded_by_close_timeout(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def hang(res: Res) -> None:
            await anyio.sleep_forever()

        factory = Factory()
        async with Pool(factory, max_size=3, close=hang, close_timeout=0.5) as pool:
            async with pool.acquire() as res:
                pool.discard(res)
                start = anyio.current_time()
            assert anyio.current_time() == start + 0.5
            async with pool.acquire(), pool.acquire(), pool.acquire():
                pass
            start = anyio.current_time()
        assert anyio.current_time() == start + 0.5  # the three at once
        assert pool.statistics().closed == 4
        assert "took longer than close_timeout=0.5 seconds" in caplog.text

    async def test_idle_timeout_closes_on_time_but_keeps_min_size(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=3, min_size=1, idle_timeout=1) as pool:
            start = anyio.current_time()
            async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
                await anyio.sleep(0.5)
            # Returned at start + 0.5, in the order c, b, a: c is the oldest idle.
            await anyio.sleep(2)
            assert c.closed_at == start + 1.5
            assert b.closed_at == start + 1.5
            assert not a.closed
            assert settled(pool).idle == 1
            assert pool.statistics().expired == 2

    async def test_using_a_resource_restarts_its_idle_time(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=1, idle_timeout=1) as pool:
            start = anyio.current_time()
            res = await use(pool)
            await anyio.sleep(0.75)
            assert (await use(pool)) is res
            await anyio.sleep(0.75)
            assert not res.closed
            await anyio.sleep(0.5)
            assert res.closed_at == start + 1.75

    async def test_max_lifetime(self) -> None:
        factory = Factory()
        async with Pool(factory, max_size=2, max_lifetime=2) as pool:
            start = anyio.current_time()
            async with pool.acquire() as held, pool.acquire() as idle:
                pass
            async with pool.acquire() as again:
                assert again is held
                await anyio.sleep(3)
                assert idle.closed_at == start + 2  # idle: closed on time
                assert not held.closed  # borrowed: closed when it comes back
            assert held.closed_at == start + 3
            stats = settled(pool)
            assert (stats.expired, stats.size) == (2, 0)

    async def test_an_expired_resource_is_not_lent(self) -> None:
        """The background task is busy with a slow close when the borrower comes."""
        factory = Factory()

        async def slow_close(res: Res) -> None:
            await anyio.sleep(2)
            await res.aclose()

        async with Pool(
            factory, max_size=3, max_lifetime=1, close=slow_close, close_timeout=10
        ) as pool:
            start = anyio.current_time()
            async with pool.acquire() as a:
                await anyio.sleep(0.5)
                async with pool.acquire() as b:
                    pass
            # Idle: a (expires at +1), b (created at +0.5, expires at +1.5).
            await anyio.sleep(1.5)  # +2: a's close runs until +3; b has expired
            fresh = await use(pool)
            assert fresh.n == 2
            assert b.closed_at == start + 4  # closed by the borrower, slowly
            assert a.closed_at == start + 3
            assert settled(pool).expired == 2


class TestTcp:
    async def test_a_pool_of_tcp_connections(self) -> None:
        """A real resource: connections to an echo server on 127.0.0.1."""
        connected = 0
        closed = 0
        all_closed = anyio.Event()

        async def handle(stream: anyio.abc.SocketStream) -> None:
            nonlocal connected, closed
            connected += 1
            async with stream:
                try:
                    async for data in stream:
                        if data == b"drop":
                            break  # the server drops the connection
                        await stream.send(data)
                except anyio.BrokenResourceError:  # pragma: no cover
                    pass
            closed += 1
            if closed == 4:
                all_closed.set()

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def connect() -> anyio.abc.SocketStream:
            return await anyio.connect_tcp("127.0.0.1", port)

        async def alive(stream: anyio.abc.SocketStream) -> bool:
            try:
                await stream.send(b"ping")
                return await stream.receive() == b"ping"
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return False

        async def request(pool: Pool[anyio.abc.SocketStream], text: bytes) -> bytes:
            async with pool.acquire() as stream:
                await stream.send(text)
                return await stream.receive()

        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, handle)
            async with Pool(connect, max_size=2, validate=alive) as pool:
                answers: list[bytes] = []

                async def client(i: int) -> None:
                    answers.append(await request(pool, b"hello %d" % i))

                async with anyio.create_task_group() as tg:
                    for i in range(6):
                        tg.start_soon(client, i)
                assert sorted(answers) == sorted(b"hello %d" % i for i in range(6))
                assert settled(pool).created == 2
                # The server drops both connections; the pool finds out on borrow.
                async with pool.acquire() as stream, pool.acquire() as stream2:
                    await stream.send(b"drop")
                    await stream2.send(b"drop")
                assert await request(pool, b"again") == b"again"
                stats = settled(pool)
                assert (stats.invalid, stats.created, stats.idle) == (2, 3, 1)
                async with pool.acquire() as stream, pool.acquire() as stream2:
                    await stream.send(b"x")
                    assert await stream.receive() == b"x"
                    await stream2.send(b"y")
                    assert await stream2.receive() == b"y"
                opened = settled(pool).created
            # Leaving the block closed both connections: the server sees them end.
            assert opened == 4
            with anyio.fail_after(10):
                await all_closed.wait()
            assert connected == closed == 4
            server.cancel_scope.cancel()


class TestMisuse:
    @pytest.mark.parametrize(
        ("kwargs", "error", "pattern"),
        [
            ({"max_size": 0}, ValueError, r"^max_size must be >= 1, got 0$"),
            ({"max_size": 1.5}, TypeError, r"^max_size must be an int >= 1, got 1.5$"),
            ({"max_size": True}, TypeError, r"^max_size must be an int >= 1, got True$"),
            (
                {"max_size": 2, "min_size": 3},
                ValueError,
                r"^min_size must be >= 0 and <= max_size \(2\), got 3$",
            ),
            (
                {"max_size": 2, "min_size": -1},
                ValueError,
                r"^min_size must be >= 0 and <= max_size \(2\), got -1$",
            ),
            ({"max_size": 2, "min_size": "1"}, TypeError, r"^min_size must be an int >= 0"),
            (
                {"max_size": 1, "acquire_timeout": 0},
                ValueError,
                r"^acquire_timeout must be > 0 seconds, got 0$",
            ),
            (
                {"max_size": 1, "idle_timeout": -1},
                ValueError,
                r"^idle_timeout must be > 0 seconds, got -1$",
            ),
            (
                {"max_size": 1, "max_lifetime": "1"},
                TypeError,
                r"^max_lifetime must be a number of seconds, got '1'$",
            ),
            (
                {"max_size": 1, "close_timeout": math.nan},
                ValueError,
                r"^close_timeout must be > 0 seconds, got nan$",
            ),
            ({"max_size": 1, "validate": 3}, TypeError, r"^validate must be a function, got 3$"),
            ({"max_size": 1, "close": "x"}, TypeError, r"^close must be a function, got 'x'$"),
        ],
    )
    def test_bad_arguments(
        self, kwargs: dict[str, Any], error: type[Exception], pattern: str
    ) -> None:
        with pytest.raises(error, match=pattern):
            Pool(Factory(), **kwargs)

    def test_bad_factory(self) -> None:
        with pytest.raises(TypeError, match=r"^factory must be a function, got None$"):
            Pool(None, max_size=1)  # type: ignore[arg-type]

    async def test_acquire_outside_the_block(self) -> None:
        pool = Pool(Factory(), max_size=1)
        with pytest.raises(
            RuntimeError, match=r"^Pool.acquire\(\) was called before the pool was entered"
        ):
            await use(pool)
        async with pool:
            lease = pool.acquire()
            async with lease:
                pass
            with pytest.raises(RuntimeError, match=r"can be entered only once$"):
                await lease.__aenter__()
        with pytest.raises(PoolClosed):
            await use(pool)
        with pytest.raises(RuntimeError, match=r"^a Pool instance can be entered only once$"):
            await pool.__aenter__()

    def test_repr_and_statistics_without_a_loop(self) -> None:
        pool = Pool(Factory(), max_size=4, min_size=1)
        assert (pool.max_size, pool.min_size, pool.size, pool.closed) == (4, 1, 0, False)
        assert pool.statistics() == ZERO
        assert re.fullmatch(
            r"<anyio_keyq.Pool at 0x[0-9a-f]+: not entered, factory=<.*Factory object.*>, "
            r"size 0/4, 0 idle, 0 borrowed, 0 waiting>",
            repr(pool),
        )

    async def test_repr_states(self) -> None:
        async with Pool(Factory(), max_size=1) as pool:
            async with pool.acquire():
                assert ": open, " in repr(pool)
                assert "size 1/1, 0 idle, 1 borrowed" in repr(pool)
        assert ": closed, " in repr(pool)


# -- many tasks at once, with random failures ----------------------------------------


async def run_schedule(seed: int, max_size: int, tasks: int) -> None:
    rng = random.Random(seed)
    alive = 0  # factory calls in progress + resources not yet closed
    peak = 0
    made: list[Res] = []

    async def factory() -> Res:
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)
        assert alive <= max_size
        try:
            await anyio.sleep(rng.choice([0, 2**-6, 2**-3]))
            if rng.random() < 0.2:
                raise OSError("connection refused")
        except BaseException:
            alive -= 1
            raise
        made.append(Res(len(made)))
        return made[-1]

    def validate(res: Res) -> bool:
        return rng.random() > 0.1

    async def close(res: Res) -> None:
        nonlocal alive
        alive -= 1
        await res.aclose()

    async def worker(pool: Pool[Res]) -> None:
        for _ in range(4):
            with anyio.move_on_after(rng.choice([2**-4, 1, 100])):
                try:
                    async with pool.acquire() as res:
                        assert not res.closed
                        await anyio.sleep(rng.choice([0, 2**-5, 2**-2]))
                        if rng.random() < 0.2:
                            raise KeyError("bad request")
                        if rng.random() < 0.1:
                            pool.discard(res)
                except (OSError, KeyError):
                    pass

    async with Pool(
        factory, max_size=max_size, validate=validate, close=close, idle_timeout=0.5
    ) as pool:
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker, pool)
        # The background task may be closing an expired resource at this very instant.
        await anyio.wait_all_tasks_blocked()
        stats = settled(pool)
        assert stats.size == alive
        assert stats.created == len(made)
    assert alive == 0
    assert all(r.closed for r in made)
    assert peak <= max_size


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), max_size=st.integers(1, 4), tasks=st.integers(1, 12))
def test_max_size_holds_under_a_random_schedule(
    backend: str, seed: int, max_size: int, tasks: int
) -> None:
    name, options = _virtual_asyncio() if backend == "asyncio" else _virtual_trio()
    anyio.run(run_schedule, seed, max_size, tasks, backend=name, backend_options=options)


# -- against a sequential model --------------------------------------------------------

IDLE_TIMEOUT = 0.75
MAX_LIFETIME = 2.25
MAX_SIZE = 3

MODEL_OPS = st.lists(
    st.one_of(
        st.just(("acquire", 0)),
        st.tuples(st.sampled_from(["release", "fail_block", "discard"]), st.integers(0, 5)),
        st.just(("break", 0)),
        st.just(("factory_fails", 0)),
        st.just(("sleep", 0)),
    ),
    max_size=40,
)


async def run_model(ops: list[tuple[str, int]]) -> None:
    """One operation at a time, on a virtual clock; the pool must follow a plain model.

    Time moves in steps of 0.5 s; the timeouts end at odd quarters, so the background
    task has always closed what expired before an operation looks.
    """
    factory = Factory()
    start = anyio.current_time()
    now = 0.0
    idle: list[tuple[int, float, float]] = []  # (resource, created, returned)
    held: list[tuple[Any, Res, float]] = []  # (lease, resource, created)
    expected = replace(ZERO)
    fail_next = False

    def count(**changes: int) -> None:
        nonlocal expected
        expected = replace(
            expected, **{name: getattr(expected, name) + n for name, n in changes.items()}
        )

    async with Pool(
        factory,
        max_size=MAX_SIZE,
        idle_timeout=IDLE_TIMEOUT,
        max_lifetime=MAX_LIFETIME,
        validate=lambda res: res.ok,
    ) as pool:
        for op, index in ops:
            if op == "acquire" and (idle or len(idle) + len(held) < MAX_SIZE):
                lease = pool.acquire()
                while idle and not factory.made[idle[-1][0]].ok:
                    idle.pop()
                    count(closed=1, invalid=1)
                if idle:
                    n, created, _ = idle.pop()
                elif fail_next:
                    fail_next = False
                    count(failed=1)
                    with pytest.raises(OSError, match="^no$"):
                        await lease.__aenter__()
                    continue
                else:
                    n, created = len(factory.made), now
                    count(created=1)
                res = await lease.__aenter__()
                assert res.n == n
                held.append((lease, res, created))
                count(acquired=1)
            elif op in ("release", "fail_block", "discard") and held:
                lease, res, created = held.pop(index % len(held))
                if op == "release":
                    await lease.__aexit__(None, None, None)
                    if now - created >= MAX_LIFETIME:
                        count(closed=1, expired=1)
                    else:
                        idle.append((res.n, created, now))
                elif op == "fail_block":
                    error = KeyError("bad")
                    await lease.__aexit__(KeyError, error, None)
                    count(closed=1, discarded=1)
                else:
                    pool.discard(res)
                    await lease.__aexit__(None, None, None)
                    count(closed=1, discarded=1)
            elif op == "break" and idle:
                factory.made[idle[-1][0]].ok = False
            elif op == "factory_fails":
                fail_next = True
                factory.fail = [OSError("no")]
            elif op == "sleep":
                await anyio.sleep(0.5)
                now += 0.5
                assert anyio.current_time() == start + now
                for item in list(idle):
                    n, created, returned = item
                    if now - created >= MAX_LIFETIME or now - returned >= IDLE_TIMEOUT:
                        idle.remove(item)
                        count(closed=1, expired=1)
            stats = pool.statistics()
            assert stats == replace(
                expected, size=len(idle) + len(held), idle=len(idle), borrowed=len(held)
            )
            assert [e.resource.n for e in pool._idle] == [n for n, _, _ in idle]
        for lease, _, _ in held:
            await lease.__aexit__(None, None, None)
    assert factory.open == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=MODEL_OPS)
def test_sequential_use_matches_a_model(backend: str, ops: list[tuple[str, int]]) -> None:
    name, options = _virtual_asyncio() if backend == "asyncio" else _virtual_trio()
    anyio.run(run_model, ops, backend=name, backend_options=options)
