"""Limiters: a contract every limiter keeps, then the rules of each one.

The contract (:class:`TestLimiterContract`) runs against every factory of
:data:`LIMITERS`. A factory takes ``total`` and returns a limiter with the
:class:`~anyio_keyq.Limiter` protocol, plus ``acquire(weight=1)`` (an async context
manager), ``acquire_nowait(weight=1)`` (a context manager, raising ``WouldBlock`` at the
call) and ``statistics()`` with the fields ``borrowed_tokens``, ``borrowers`` and
``waiting``. To run the contract against another limiter, add one line to the list.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from anyio_keyq import (
    AdaptiveLimiter,
    Limiter,
    PriorityLimiter,
    PriorityLimiterStatistics,
    WeightedLimiter,
    WeightedLimiterStatistics,
    _limiters,
)

from .helpers import assert_cancel_point, assert_schedule_point

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup, TaskStatus

pytestmark = pytest.mark.anyio


def pinned_adaptive_limiter(total: int) -> AdaptiveLimiter:
    """An AdaptiveLimiter whose limit stays at *total*: outcomes don't move it."""
    return AdaptiveLimiter(total, min=total, max=total)


#: Every limiter the contract holds for: ``factory(total) -> limiter``.
LIMITERS: list[Any] = [
    pytest.param(WeightedLimiter, id="WeightedLimiter"),
    pytest.param(PriorityLimiter, id="PriorityLimiter"),
    pytest.param(functools.partial(PriorityLimiter, aging=60.0), id="PriorityLimiter-aging"),
    pytest.param(pinned_adaptive_limiter, id="AdaptiveLimiter"),
]

#: The limiters of this module, for their shared constructor and statistics rules.
OWN_LIMITERS = [WeightedLimiter, PriorityLimiter]


class Waiter:
    """A task waiting for a permit on behalf of *name*; the permit stays held by *name*.

    Started with ``await tg.start(waiter.run)``, it is in the limiter's queue (or holds
    its permit) when ``start()`` returns: nothing yields between ``started()`` and the
    moment the request is queued.
    """

    def __init__(self, limiter: Any, name: str, weight: int = 1, priority: float = 0) -> None:
        self.limiter = limiter
        self.name = name
        self.weight = weight
        self.priority = priority
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        self.outcome: str | None = None  # "granted" or "cancelled"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                task_status.started()
                await self.limiter.acquire_on_behalf_of(
                    self.name, weight=self.weight, priority=self.priority
                )
                self.outcome = "granted"
        finally:
            if self.outcome is None:
                self.outcome = "cancelled"
            self.finished.set()


async def start_waiter(
    tg: TaskGroup, limiter: Any, name: str, weight: int = 1, priority: float = 0
) -> Waiter:
    waiter = Waiter(limiter, name, weight, priority)
    await tg.start(waiter.run)
    return waiter


class Holder:
    """A task in ``async with limiter.acquire(...)``, holding the permit until told."""

    def __init__(self, limiter: Any, weight: int = 1, **kwargs: Any) -> None:
        self.limiter = limiter
        self.weight = weight
        self.kwargs = kwargs
        self.scope = anyio.CancelScope()
        self.entered = False
        self.let_go = anyio.Event()
        self.finished = anyio.Event()
        self.task: anyio.TaskInfo | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.task = anyio.get_current_task()
        try:
            with self.scope:
                task_status.started()
                async with self.limiter.acquire(self.weight, **self.kwargs):
                    self.entered = True
                    await self.let_go.wait()
        finally:
            self.finished.set()


async def start_holder(tg: TaskGroup, limiter: Any, weight: int = 1, **kwargs: Any) -> Holder:
    holder = Holder(limiter, weight, **kwargs)
    await tg.start(holder.run)
    return holder


def holders(limiter: Any) -> list[object]:
    """The borrowers holding a permit, in the order they got it."""
    return list(limiter.statistics().borrowers)


def drain(limiter: Any) -> None:
    """Release the holders one by one, oldest first, until the limiter is idle."""
    while borrowers := holders(limiter):
        limiter.release_on_behalf_of(borrowers[0])
    assert_idle(limiter)


def assert_idle(limiter: Any) -> None:
    stats = limiter.statistics()
    assert stats.borrowed_tokens == 0
    assert stats.borrowers == ()
    assert stats.waiting == 0


# -- the contract -----------------------------------------------------------------------


@pytest.fixture(params=LIMITERS)
def make(request: pytest.FixtureRequest) -> Callable[[int], Any]:
    return request.param  # type: ignore[no-any-return]


class TestLimiterContract:
    async def test_is_a_limiter(self, make: Callable[[int], Any]) -> None:
        assert isinstance(make(1), Limiter)

    async def test_acquire_holds_a_permit_for_the_block(self, make: Callable[[int], Any]) -> None:
        limiter = make(2)
        async with limiter.acquire():
            stats = limiter.statistics()
            assert stats.borrowed_tokens == 1
            assert stats.borrowers == (anyio.get_current_task(),)
        assert_idle(limiter)

    async def test_waits_when_full_then_gets_the_permit(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            holder = await start_holder(tg, limiter)
            await anyio.wait_all_tasks_blocked()
            assert not holder.entered
            assert limiter.statistics().waiting == 1
            limiter.release_on_behalf_of("first")
            assert holders(limiter) == [holder.task]
            assert limiter.statistics().waiting == 0
            await anyio.wait_all_tasks_blocked()
            assert holder.entered
            holder.let_go.set()
        assert_idle(limiter)

    async def test_on_behalf_of_round_trip(self, make: Callable[[int], Any]) -> None:
        limiter = make(3)
        await limiter.acquire_on_behalf_of("a", weight=2)
        limiter.acquire_on_behalf_of_nowait("b", weight=1, priority=0)
        assert holders(limiter) == ["a", "b"]
        assert limiter.statistics().borrowed_tokens == 3
        limiter.release_on_behalf_of("a")
        limiter.release_on_behalf_of("b", failed=True)
        assert_idle(limiter)

    async def test_nowait_raises_would_block_when_full(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("second")
        assert holders(limiter) == ["first"]
        assert limiter.statistics().waiting == 0
        limiter.release_on_behalf_of("first")
        with limiter.acquire_nowait():
            assert holders(limiter) == [anyio.get_current_task()]
        assert_idle(limiter)

    async def test_nowait_never_jumps_the_queue(self, make: Callable[[int], Any]) -> None:
        limiter = make(2)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            heavy = await start_waiter(tg, limiter, "heavy", weight=2)
            # one token is free, but "heavy" came first
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("light")
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_nowait()
            limiter.release_on_behalf_of("first")
            await heavy.finished.wait()
        assert holders(limiter) == ["heavy"]
        limiter.release_on_behalf_of("heavy")
        assert_idle(limiter)

    async def test_cancel_while_waiting_leaves_no_trace(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            waiter = await start_waiter(tg, limiter, "waiter")
            holder = await start_holder(tg, limiter)
            assert limiter.statistics().waiting == 2
            waiter.scope.cancel()
            holder.scope.cancel()
            await waiter.finished.wait()
            await holder.finished.wait()
        assert waiter.outcome == "cancelled"
        assert not holder.entered
        stats = limiter.statistics()
        assert stats.waiting == 0
        assert stats.borrowers == ("first",)
        limiter.release_on_behalf_of("first")
        assert_idle(limiter)
        limiter.acquire_on_behalf_of_nowait("again")  # the permit was not lost
        limiter.release_on_behalf_of("again")

    @pytest.mark.parametrize("order", ["grant_then_cancel", "cancel_then_grant"])
    async def test_cancel_in_the_instant_of_the_grant(
        self, make: Callable[[int], Any], order: str
    ) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            waiter = await start_waiter(tg, limiter, "waiter")
            behind = await start_waiter(tg, limiter, "behind")
            await anyio.wait_all_tasks_blocked()
            # no checkpoint between the two: the grant and the cancellation are one instant
            if order == "grant_then_cancel":
                limiter.release_on_behalf_of("first")
                waiter.scope.cancel()
            else:
                waiter.scope.cancel()
                limiter.release_on_behalf_of("first")
            await waiter.finished.wait()
            if order == "grant_then_cancel":
                # it was resumed with the permit before the cancellation reached it: the
                # acquire succeeded, and the permit is its own
                assert waiter.outcome == "granted"
                assert holders(limiter) == ["waiter"]
                assert limiter.statistics().waiting == 1
                limiter.release_on_behalf_of("waiter")
            else:
                # granted while its cancellation was pending: the acquire raised, and the
                # permit passed on to the next waiter
                assert waiter.outcome == "cancelled"
                assert holders(limiter) == ["behind"]
            await behind.finished.wait()
        assert behind.outcome == "granted"
        limiter.release_on_behalf_of("behind")
        assert_idle(limiter)

    @pytest.mark.parametrize("order", ["grant_then_cancel", "cancel_then_grant"])
    async def test_cancel_of_acquire_in_the_instant_of_the_grant(
        self, make: Callable[[int], Any], order: str
    ) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            holder = await start_holder(tg, limiter)
            behind = await start_waiter(tg, limiter, "behind")
            await anyio.wait_all_tasks_blocked()
            if order == "grant_then_cancel":
                limiter.release_on_behalf_of("first")
                holder.scope.cancel()
            else:
                holder.scope.cancel()
                limiter.release_on_behalf_of("first")
            await holder.finished.wait()
            await behind.finished.wait()
        # granted first, it entered the block and was cancelled inside it
        assert holder.entered == (order == "grant_then_cancel")
        assert holders(limiter) == ["behind"]
        limiter.release_on_behalf_of("behind")
        assert_idle(limiter)

    async def test_reentrant_acquire_raises_instead_of_deadlocking(
        self, make: Callable[[int], Any]
    ) -> None:
        limiter = make(5)
        async with limiter.acquire():
            with pytest.raises(RuntimeError, match=r"already holds a permit"):
                async with limiter.acquire():
                    pytest.fail("acquired twice")  # pragma: no cover
            with pytest.raises(RuntimeError, match=r"already holds a permit"):
                limiter.acquire_nowait()
            assert limiter.statistics().borrowed_tokens == 1
        await limiter.acquire_on_behalf_of("b")
        with pytest.raises(RuntimeError, match=r"already holds a permit"):
            await limiter.acquire_on_behalf_of("b")
        with pytest.raises(RuntimeError, match=r"already holds a permit"):
            limiter.acquire_on_behalf_of_nowait("b")
        limiter.release_on_behalf_of("b")
        assert_idle(limiter)

    async def test_a_borrower_waits_only_once(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            waiter = await start_waiter(tg, limiter, "w")
            with pytest.raises(RuntimeError, match=r"already waiting for a permit"):
                await limiter.acquire_on_behalf_of("w")
            with pytest.raises(RuntimeError, match=r"already waiting for a permit"):
                limiter.acquire_on_behalf_of_nowait("w")
            assert limiter.statistics().waiting == 1
            waiter.scope.cancel()
        limiter.release_on_behalf_of("first")
        assert_idle(limiter)

    async def test_release_without_a_permit_raises(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        with pytest.raises(RuntimeError, match=r"holds no permit"):
            limiter.release_on_behalf_of("nobody")
        limiter.acquire_on_behalf_of_nowait("a")
        limiter.release_on_behalf_of("a")
        with pytest.raises(RuntimeError, match=r"holds no permit"):
            limiter.release_on_behalf_of("a")
        assert_idle(limiter)

    async def test_acquire_is_a_cancel_point(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        await assert_cancel_point(lambda: limiter.acquire_on_behalf_of("a"))
        await assert_cancel_point(lambda: limiter.acquire().__aenter__())
        assert_idle(limiter)

    async def test_acquire_is_a_schedule_point(self, make: Callable[[int], Any]) -> None:
        limiter = make(1)
        await assert_schedule_point(lambda: limiter.acquire_on_behalf_of("a"))
        limiter.release_on_behalf_of("a")

        async def enter_and_leave() -> None:
            async with limiter.acquire():
                pass

        await assert_schedule_point(enter_and_leave)
        assert_idle(limiter)

    @pytest.mark.parametrize(
        ("weight", "error", "message"),
        [
            (0, ValueError, "weight must be >= 1, got 0"),
            (-2, ValueError, "weight must be >= 1, got -2"),
            (3, ValueError, "weight must be <= total_tokens (2), got 3"),
            (1.0, TypeError, "weight must be an int >= 1, got 1.0"),
            (True, TypeError, "weight must be an int >= 1, got True"),
            ("1", TypeError, "weight must be an int >= 1, got '1'"),
        ],
    )
    async def test_bad_weight(
        self, make: Callable[[int], Any], weight: Any, error: type[Exception], message: str
    ) -> None:
        limiter = make(2)
        pattern = f"^{re.escape(message)}"
        with pytest.raises(error, match=pattern):
            limiter.acquire_on_behalf_of_nowait("a", weight=weight)
        with pytest.raises(error, match=pattern):
            await limiter.acquire_on_behalf_of("a", weight=weight)
        with pytest.raises(error, match=pattern):
            async with limiter.acquire(weight):
                pass  # pragma: no cover
        with pytest.raises(error, match=pattern):
            limiter.acquire_nowait(weight)
        assert_idle(limiter)

    async def test_statistics_back_to_zero_after_a_crowd(self, make: Callable[[int], Any]) -> None:
        limiter = make(3)
        crowd: list[Waiter | Holder] = []
        async with anyio.create_task_group() as tg:
            limiter.acquire_on_behalf_of_nowait("first", weight=3)
            for i in range(12):
                weight = 1 + i % 3
                if i % 2:
                    crowd.append(await start_holder(tg, limiter, weight))
                else:
                    crowd.append(await start_waiter(tg, limiter, f"w{i}", weight))
            assert limiter.statistics().waiting == 12
            for member in crowd[::3]:
                member.scope.cancel()
            limiter.release_on_behalf_of("first")
            while not all(member.finished.is_set() for member in crowd):
                await anyio.wait_all_tasks_blocked()
                assert limiter.statistics().borrowed_tokens <= 3
                for member in crowd:
                    if isinstance(member, Holder):
                        member.let_go.set()
                    elif member.outcome == "granted" and member.name in holders(limiter):
                        limiter.release_on_behalf_of(member.name)
        assert_idle(limiter)

    def test_created_without_an_event_loop(self, make: Callable[[int], Any]) -> None:
        limiter = make(2)
        limiter.acquire_on_behalf_of_nowait("a")
        assert type(limiter).__name__ in repr(limiter)
        limiter.release_on_behalf_of("a")
        assert_idle(limiter)


# -- what the two limiters of this package share -----------------------------------------


@pytest.mark.parametrize("cls", OWN_LIMITERS)
class TestOwnLimiters:
    @pytest.mark.parametrize(
        ("total", "error", "message"),
        [
            (0, ValueError, "total must be >= 1, got 0"),
            (-1, ValueError, "total must be >= 1, got -1"),
            (2.0, TypeError, "total must be an int >= 1, got 2.0"),
            (math.inf, TypeError, "total must be an int >= 1, got inf"),
            (None, TypeError, "total must be an int >= 1, got None"),
            (True, TypeError, "total must be an int >= 1, got True"),
        ],
    )
    def test_bad_total(
        self, cls: type[Any], total: Any, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            cls(total)
        limiter = cls(3)
        with pytest.raises(error, match=f"^{re.escape(message.replace('total', 'total_tokens'))}$"):
            limiter.total_tokens = total
        assert limiter.total_tokens == 3

    @pytest.mark.parametrize(
        ("priority", "error", "message"),
        [
            ("high", TypeError, "priority must be a number, got 'high'"),
            (None, TypeError, "priority must be a number, got None"),
            (False, TypeError, "priority must be a number, got False"),
            (math.nan, ValueError, "priority must not be NaN, got nan"),
        ],
    )
    async def test_bad_priority(
        self, cls: type[Any], priority: Any, error: type[Exception], message: str
    ) -> None:
        limiter = cls(2)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            limiter.acquire_on_behalf_of_nowait("a", priority=priority)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            await limiter.acquire_on_behalf_of("a", priority=priority)
        assert_idle(limiter)

    async def test_error_messages(self, cls: type[Any]) -> None:
        limiter = cls(2)
        name = cls.__name__
        limiter.acquire_on_behalf_of_nowait("a")
        with pytest.raises(
            RuntimeError,
            match=(
                rf"^'a' already holds a permit of this {name}: release it before acquiring "
                r"again \(acquiring one limiter twice in one task, as with nested "
                r"'async with limiter\.acquire\(\)', would deadlock\)$"
            ),
        ):
            limiter.acquire_on_behalf_of_nowait("a")
        with pytest.raises(
            RuntimeError,
            match=(
                rf"^'b' holds no permit of this {name}: release only what was acquired, "
                r"once, with the same borrower$"
            ),
        ):
            limiter.release_on_behalf_of("b")
        limiter.acquire_on_behalf_of_nowait("b")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "c")
            with pytest.raises(
                RuntimeError,
                match=(
                    rf"^'c' is already waiting for a permit of this {name}: use one borrower "
                    r"object per holder$"
                ),
            ):
                limiter.acquire_on_behalf_of_nowait("c")
            with pytest.raises(
                ValueError,
                match=(
                    r"^weight must be <= total_tokens \(2\), got 3: such a permit could "
                    r"never be granted$"
                ),
            ):
                limiter.acquire_on_behalf_of_nowait("d", weight=3)
            limiter.release_on_behalf_of("a")
        limiter.release_on_behalf_of("b")
        limiter.release_on_behalf_of("c")
        assert_idle(limiter)

    async def test_statistics(self, cls: type[Any]) -> None:
        limiter = cls(5)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        limiter.acquire_on_behalf_of_nowait("b", weight=3)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "c", weight=4)
            await start_waiter(tg, limiter, "d", weight=1)
            stats = limiter.statistics()
            assert stats.total_tokens == 5
            assert stats.borrowed_tokens == 5
            assert stats.borrowers == ("a", "b")
            assert stats.waiting == 2
            assert stats.waiting_weight == 5
            assert limiter.borrowed_tokens == 5
            assert limiter.available_tokens == 0
            limiter.release_on_behalf_of("b")
            assert limiter.available_tokens == 3  # "c" needs 4, "d" waits behind it
            assert limiter.statistics().waiting_weight == 5
            limiter.release_on_behalf_of("a")
            stats = limiter.statistics()
            assert stats.borrowers == ("c", "d")
            assert stats.waiting == stats.waiting_weight == 0
        limiter.release_on_behalf_of("d")
        limiter.release_on_behalf_of("c")
        assert_idle(limiter)
        if cls is WeightedLimiter:
            assert isinstance(stats, WeightedLimiterStatistics)
        else:
            assert isinstance(stats, PriorityLimiterStatistics)
        with pytest.raises(AttributeError):
            stats.waiting = 3  # frozen

    async def test_repr(self, cls: type[Any]) -> None:
        limiter = cls(4)
        limiter.acquire_on_behalf_of_nowait("a", weight=3)
        async with anyio.create_task_group() as tg:
            waiter = await start_waiter(tg, limiter, "b", weight=2)
            assert re.fullmatch(
                rf"<anyio_keyq\.{cls.__name__} at 0x[0-9a-f]+: 3/4 tokens borrowed by 1, "
                r"1 waiting>",
                repr(limiter),
            )
            waiter.scope.cancel()
        limiter.release_on_behalf_of("a")

    async def test_acquire_nowait_takes_the_permit_at_the_call(self, cls: type[Any]) -> None:
        limiter = cls(3)
        held = limiter.acquire_nowait(2)
        assert limiter.statistics().borrowed_tokens == 2  # before the block
        with held:
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("b", weight=2)
        assert_idle(limiter)

    async def test_an_error_at_the_final_checkpoint_gives_the_permit_back(
        self, cls: type[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limiter = cls(1)

        async def interrupted() -> None:
            raise KeyboardInterrupt

        # what trio does on Ctrl+C, in the checkpoint after a permit was taken at once
        monkeypatch.setattr(_limiters, "cancel_shielded_checkpoint", interrupted)
        with pytest.raises(KeyboardInterrupt):
            await limiter.acquire_on_behalf_of("a")
        assert_idle(limiter)

    async def test_a_cancelled_waiter_whose_permit_was_released_for_it(
        self, cls: type[Any]
    ) -> None:
        limiter = cls(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            waiter = await start_waiter(tg, limiter, "waiter")
            behind = await start_waiter(tg, limiter, "behind")
            waiter.scope.cancel()
            limiter.release_on_behalf_of("first")  # granted to "waiter", not yet resumed
            limiter.release_on_behalf_of("waiter")  # and released on its behalf at once
            assert holders(limiter) == ["behind"]
            await waiter.finished.wait()
        assert waiter.outcome == "cancelled"
        assert behind.outcome == "granted"
        assert holders(limiter) == ["behind"]  # nothing given back twice
        drain(limiter)

    async def test_an_acquire_context_manager_is_used_by_one_block_at_a_time(
        self, cls: type[Any]
    ) -> None:
        limiter = cls(2)
        acquire = limiter.acquire()
        async with acquire:
            with pytest.raises(
                RuntimeError,
                match=(
                    r"^this limiter\.acquire\(\) context manager is already in use: call "
                    r"limiter\.acquire\(\) for each 'async with'$"
                ),
            ):
                async with acquire:
                    pass  # pragma: no cover
        async with acquire:  # reusable once left
            assert limiter.statistics().borrowed_tokens == 1
        assert_idle(limiter)

    async def test_acquire_releases_on_error(self, cls: type[Any]) -> None:
        limiter = cls(1)
        with pytest.raises(ZeroDivisionError):
            async with limiter.acquire():
                1 / 0  # noqa: B018
        with pytest.raises(KeyError):
            with limiter.acquire_nowait():
                raise KeyError("x")
        assert_idle(limiter)

    async def test_cancelling_the_head_lets_lighter_waiters_start(self, cls: type[Any]) -> None:
        limiter = cls(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            heavy = await start_waiter(tg, limiter, "heavy", weight=3)
            light = await start_waiter(tg, limiter, "light", weight=1)
            assert holders(limiter) == ["a"]  # "light" fits, but waits behind "heavy"
            heavy.scope.cancel()
            await light.finished.wait()
        assert heavy.outcome == "cancelled"
        assert holders(limiter) == ["a", "light"]
        limiter.release_on_behalf_of("a")
        limiter.release_on_behalf_of("light")
        assert_idle(limiter)

    async def test_one_release_grants_every_waiter_that_fits(self, cls: type[Any]) -> None:
        limiter = cls(3)
        limiter.acquire_on_behalf_of_nowait("big", weight=3)
        async with anyio.create_task_group() as tg:
            for name in "abcd":
                await start_waiter(tg, limiter, name)
            limiter.release_on_behalf_of("big")
            assert holders(limiter) == ["a", "b", "c"]
            assert limiter.statistics().waiting == 1
            limiter.release_on_behalf_of("b")
        assert holders(limiter) == ["a", "c", "d"]
        for name in "acd":
            limiter.release_on_behalf_of(name)
        assert_idle(limiter)

    async def test_raising_total_grants_waiters_that_now_fit(self, cls: type[Any]) -> None:
        limiter = cls(2)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            for name, weight in [("b", 2), ("c", 1), ("d", 1)]:
                await start_waiter(tg, limiter, name, weight)
            limiter.total_tokens = 4
            assert holders(limiter) == ["a", "b"]
            limiter.total_tokens = 6
        assert holders(limiter) == ["a", "b", "c", "d"]
        assert limiter.statistics().borrowed_tokens == 6
        for name in "abcd":
            limiter.release_on_behalf_of(name)
        assert_idle(limiter)

    async def test_lowering_total_keeps_holders_and_holds_back_newcomers(
        self, cls: type[Any]
    ) -> None:
        limiter = cls(4)
        for name in "abcd":
            limiter.acquire_on_behalf_of_nowait(name)
        limiter.total_tokens = 2
        stats = limiter.statistics()
        assert stats.borrowed_tokens == 4  # nobody loses a permit
        assert stats.total_tokens == 2
        assert limiter.available_tokens == 0
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "e")
            limiter.release_on_behalf_of("a")
            limiter.release_on_behalf_of("b")
            assert holders(limiter) == ["c", "d"]  # 2 held: "e" must wait for the new total
            limiter.release_on_behalf_of("c")
        assert holders(limiter) == ["d", "e"]
        with pytest.raises(ValueError, match=r"^weight must be <= total_tokens \(2\), got 3"):
            limiter.acquire_on_behalf_of_nowait("f", weight=3)
        limiter.release_on_behalf_of("d")
        limiter.release_on_behalf_of("e")
        assert_idle(limiter)

    async def test_a_waiter_heavier_than_a_lowered_total_waits_for_it_to_rise(
        self, cls: type[Any]
    ) -> None:
        limiter = cls(3)
        limiter.acquire_on_behalf_of_nowait("a")
        async with anyio.create_task_group() as tg:
            heavy = await start_waiter(tg, limiter, "heavy", weight=3)
            await start_waiter(tg, limiter, "light")
            limiter.total_tokens = 2
            limiter.release_on_behalf_of("a")
            assert holders(limiter) == []  # "heavy" keeps its place, and blocks "light"
            assert limiter.statistics().waiting == 2
            limiter.total_tokens = 3
            await heavy.finished.wait()
            assert holders(limiter) == ["heavy"]
            limiter.release_on_behalf_of("heavy")
        assert holders(limiter) == ["light"]
        limiter.release_on_behalf_of("light")
        assert_idle(limiter)


def test_limiters_are_final() -> None:
    for cls in (*OWN_LIMITERS, WeightedLimiterStatistics, PriorityLimiterStatistics):
        with pytest.raises(TypeError, match="does not support subclassing"):
            type("Sub", (cls,), {})


# -- WeightedLimiter --------------------------------------------------------------------


class TestWeightedLimiter:
    async def test_first_come_first_served_with_weights(self) -> None:
        limiter = WeightedLimiter(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=3)
            for name in ("l1", "l2", "l3"):
                await start_waiter(tg, limiter, name, weight=1)
            # "l1" would fit in the free token, but never overtakes "heavy"
            assert holders(limiter) == ["a"]
            limiter.release_on_behalf_of("a")
            assert holders(limiter) == ["heavy"]
            limiter.release_on_behalf_of("heavy")
            assert holders(limiter) == ["l1", "l2", "l3"]
        for name in ("l1", "l2", "l3"):
            limiter.release_on_behalf_of(name)
        assert_idle(limiter)

    async def test_a_heavy_waiter_is_not_starved_by_a_stream_of_light_ones(self) -> None:
        limiter = WeightedLimiter(4)
        for name in ("l0", "l1", "l2"):
            limiter.acquire_on_behalf_of_nowait(name)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=4)
            for i in range(3, 6):
                # a light request arrives before each light holder leaves: if it could
                # take the free token, "heavy" would never see all four free
                with pytest.raises(anyio.WouldBlock):
                    limiter.acquire_on_behalf_of_nowait(f"l{i}")
                await start_waiter(tg, limiter, f"l{i}")
                limiter.release_on_behalf_of(f"l{i - 3}")
            assert holders(limiter) == ["heavy"]
            limiter.release_on_behalf_of("heavy")
        assert holders(limiter) == ["l3", "l4", "l5"]
        drain(limiter)

    async def test_priority_is_ignored(self) -> None:
        limiter = WeightedLimiter(1)
        limiter.acquire_on_behalf_of_nowait("a")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "b", priority=5)
            await start_waiter(tg, limiter, "c", priority=-5)
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("d", priority=-math.inf)
            limiter.release_on_behalf_of("a")
            assert holders(limiter) == ["b"]
            limiter.release_on_behalf_of("b")
        assert holders(limiter) == ["c"]
        limiter.release_on_behalf_of("c")


# -- PriorityLimiter --------------------------------------------------------------------


class TestPriorityLimiter:
    async def test_lower_priority_first_then_first_come(self) -> None:
        limiter = PriorityLimiter(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            for name, priority in [("p3", 3), ("p1a", 1), ("p2", 2.5), ("p1b", 1), ("n", -1)]:
                await start_waiter(tg, limiter, name, priority=priority)
            assert limiter.statistics().waiting_by_priority == ((-1, 1), (1, 2), (2.5, 1), (3, 1))
            served = []
            for _ in range(6):
                (holder,) = holders(limiter)
                served.append(holder)
                limiter.release_on_behalf_of(holder)
        assert served == ["first", "n", "p1a", "p1b", "p2", "p3"]
        assert_idle(limiter)

    async def test_the_best_waiter_blocks_the_others_until_it_fits(self) -> None:
        limiter = PriorityLimiter(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "urgent", weight=3, priority=0)
            await start_waiter(tg, limiter, "worse", weight=1, priority=5)
            assert holders(limiter) == ["a"]  # "worse" fits, but "urgent" goes first
            limiter.release_on_behalf_of("a")
            assert holders(limiter) == ["urgent"]
            limiter.release_on_behalf_of("urgent")
        assert holders(limiter) == ["worse"]
        limiter.release_on_behalf_of("worse")
        assert_idle(limiter)

    async def test_a_newcomer_better_than_every_waiter_starts_at_once(self) -> None:
        limiter = PriorityLimiter(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=3, priority=1)
            # equal priority: behind "heavy"
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("same", priority=1)
            # better priority: it would be served first, and it fits
            limiter.acquire_on_behalf_of_nowait("better", priority=0)
            assert holders(limiter) == ["a", "better"]
            best = await start_waiter(tg, limiter, "best", priority=-math.inf)
            limiter.release_on_behalf_of("better")
            await best.finished.wait()
            assert holders(limiter) == ["a", "best"]
            limiter.release_on_behalf_of("a")
            limiter.release_on_behalf_of("best")
        assert holders(limiter) == ["heavy"]
        drain(limiter)

    async def test_a_better_newcomer_starts_at_once_through_acquire(self) -> None:
        limiter = PriorityLimiter(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=3, priority=1)
            async with limiter.acquire(priority=0.5):
                assert holders(limiter) == ["a", anyio.get_current_task()]
            limiter.release_on_behalf_of("a")
        assert holders(limiter) == ["heavy"]
        drain(limiter)

    async def test_a_better_newcomer_that_does_not_fit_goes_first_in_line(self) -> None:
        limiter = PriorityLimiter(3)
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=3, priority=1)
            await start_waiter(tg, limiter, "urgent", weight=2, priority=0)
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("light", priority=0.5)
            limiter.release_on_behalf_of("a")
            assert holders(limiter) == ["urgent"]
            limiter.release_on_behalf_of("urgent")
        assert holders(limiter) == ["heavy"]
        limiter.release_on_behalf_of("heavy")
        assert_idle(limiter)

    async def test_cancelled_waiters_are_dropped_from_the_queue(self) -> None:
        limiter = PriorityLimiter(1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            waiters = [await start_waiter(tg, limiter, f"w{i}", priority=i % 4) for i in range(20)]
            # cancel all but two, head and tail of the queue included
            cancelled = [w for w in waiters if w.name not in ("w5", "w10")]
            for waiter in cancelled:
                waiter.scope.cancel()
            for waiter in cancelled:
                await waiter.finished.wait()
            assert limiter.statistics().waiting == 2
            assert len(limiter._heap) <= 4  # the queue does not keep what was cancelled
            limiter.release_on_behalf_of("first")
            assert holders(limiter) == ["w5"]
            limiter.release_on_behalf_of("w5")
        assert holders(limiter) == ["w10"]
        limiter.release_on_behalf_of("w10")
        assert_idle(limiter)
        assert limiter._heap == []

    @pytest.mark.parametrize(
        ("aging", "error", "message"),
        [
            (0, ValueError, "aging must be > 0 seconds, got 0"),
            (-1.5, ValueError, "aging must be > 0 seconds, got -1.5"),
            (math.nan, ValueError, "aging must be > 0 seconds, got nan"),
            (math.inf, ValueError, "aging must be a finite number of seconds, got inf"),
            ("1", TypeError, "aging must be a number of seconds, got '1'"),
        ],
    )
    def test_bad_aging(self, aging: Any, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            PriorityLimiter(1, aging=aging)

    def test_aging_and_repr(self) -> None:
        assert PriorityLimiter(1).aging is None
        limiter = PriorityLimiter(2, aging=5)
        assert limiter.aging == 5.0
        assert repr(limiter).endswith(": 0/2 tokens borrowed by 0, 0 waiting, aging=5.0>")


class TestPriorityAging:
    """Aging, at exact instants of a virtual clock."""

    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_a_waiter_gains_one_level_per_aging_seconds(self) -> None:
        limiter = PriorityLimiter(1, aging=10)
        start = anyio.current_time()
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            # at t=0, "a" asks with priority 3: at time t it ranks like 3 - t/10
            await start_waiter(tg, limiter, "a", priority=3)
            await anyio.sleep(15)
            # t=15: "a" ranks like 1.5
            await start_waiter(tg, limiter, "b", priority=1)  # better than 1.5
            await start_waiter(tg, limiter, "c", priority=1.5)  # a tie: "a" came first
            await anyio.sleep(5)
            # t=20: "a" ranks like 1, "b" like 0.5, "c" like 1
            await start_waiter(tg, limiter, "d", priority=1)  # ties with "a" and "c"
            await start_waiter(tg, limiter, "e", priority=0.75)  # between "b" and "a"
            assert anyio.current_time() == start + 20
            served = []
            for _ in range(6):
                (holder,) = holders(limiter)
                served.append(holder)
                limiter.release_on_behalf_of(holder)
        assert served == ["first", "b", "e", "a", "c", "d"]
        assert_idle(limiter)

    async def test_a_newcomer_skips_the_queue_only_if_it_ranks_before_the_aged_head(
        self,
    ) -> None:
        limiter = PriorityLimiter(2, aging=10)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=2, priority=3)
            await anyio.sleep(10)
            # "heavy" ranks like 2 now: a newcomer of priority 2 is behind it
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("tie", priority=2)
            limiter.acquire_on_behalf_of_nowait("better", priority=1.5)
            assert holders(limiter) == ["first", "better"]
            limiter.release_on_behalf_of("first")
            limiter.release_on_behalf_of("better")
        assert holders(limiter) == ["heavy"]
        drain(limiter)

    async def test_a_low_priority_waiter_is_not_starved(self) -> None:
        limiter = PriorityLimiter(1, aging=2)
        start = anyio.current_time()
        limiter.acquire_on_behalf_of_nowait("busy")
        served: list[tuple[object, float]] = []
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "low", priority=10)
            # a new urgent request every second, each holding the limiter for a second
            for i in range(30):
                await start_waiter(tg, limiter, f"urgent-{i}", priority=0)
                await anyio.sleep(1)
                (holder,) = holders(limiter)
                limiter.release_on_behalf_of(holder)
                served.append((holder, anyio.current_time() - start))
                if holder == "low":
                    break
            # at time t, "low" ranks like 10 - t/2 and urgent-i like (i - t)/2: they tie
            # at i = 20, and "low" came first, so it is served right after urgent-19
            assert [name for name, _ in served][-3:] == ["urgent-18", "urgent-19", "low"]
            assert served[-1] == ("low", 22.0)
            drain(limiter)  # lets the last urgent waiters through
