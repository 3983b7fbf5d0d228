"""AdaptiveLimiter: the AIMD rule step by step, bounds, waiters, cancellation, misuse.

The rule is driven directly, through the protocol's ``*_on_behalf_of`` methods with
plain borrowers, so every step is deterministic; the expected limits are computed with
the same floating-point operations as the limiter's.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import deque
from typing import Any

import anyio
import pytest

from anyio_keyq import AdaptiveLimiter, AdaptiveLimiterStatistics
from anyio_keyq._limiters import Limiter

from .helpers import assert_cancel_point, assert_schedule_point

pytestmark = pytest.mark.anyio


def assert_balanced(stats: AdaptiveLimiterStatistics) -> None:
    assert stats.acquired == stats.holders + stats.succeeded + stats.failed + stats.neutral


def assert_idle(limiter: AdaptiveLimiter) -> None:
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.holders, stats.waiting) == (0, 0, 0)
    assert_balanced(stats)


def fill(limiter: AdaptiveLimiter, held: deque[object]) -> None:
    """Take permits for new borrowers until the limiter is full."""
    while True:
        borrower = object()
        try:
            limiter.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            return
        held.append(borrower)


async def start_waiter(
    tg: anyio.abc.TaskGroup,
    limiter: AdaptiveLimiter,
    borrower: object,
    log: list[object] | None = None,
    *,
    weight: int = 1,
) -> anyio.CancelScope:
    """Start a task that waits for a permit for *borrower*; return once it waits."""

    async def wait(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)  # the waiter joins the line before it yields
            await limiter.acquire_on_behalf_of(borrower, weight=weight)
            if log is not None:
                log.append(borrower)

    scope: anyio.CancelScope = await tg.start(wait)
    return scope


# -- the AIMD rule, step by step -------------------------------------------------------


class TestIncrease:
    async def test_a_full_limiter_grows_by_increase_per_limit_s_worth(self) -> None:
        limiter = AdaptiveLimiter(2)
        held: deque[object] = deque()
        expected = 2.0
        for _ in range(12):
            fill(limiter, held)
            assert len(held) == math.floor(expected)
            limiter.release_on_behalf_of(held.popleft())  # a success of a full limiter
            expected += 1 / expected
            assert limiter.limit == expected
        assert limiter.total_tokens == math.floor(expected) == 5
        stats = limiter.statistics()
        assert (stats.succeeded, stats.failed, stats.decreases) == (12, 0, 0)
        assert [limit for _, limit in limiter.history][-1] == expected
        assert len(limiter.history) == 12

    async def test_increase_and_weight_scale_the_step(self) -> None:
        limiter = AdaptiveLimiter(4, increase=2)
        limiter.acquire_on_behalf_of_nowait("heavy", weight=3)
        limiter.release_on_behalf_of("heavy")
        assert limiter.limit == 4 + 2 * 3 / 4

    async def test_no_growth_while_less_than_half_used(self) -> None:
        limiter = AdaptiveLimiter(10)
        for i in range(4):
            limiter.acquire_on_behalf_of_nowait(i)
        for i in range(4):  # 4, 3, 2, 1 held at release: below half of 10
            limiter.release_on_behalf_of(i)
        assert limiter.limit == 10
        assert limiter.history == ()
        assert limiter.statistics().succeeded == 4
        for i in range(5):
            limiter.acquire_on_behalf_of_nowait(i)
        limiter.release_on_behalf_of(0)  # 5 of 10 held: half used, it grows
        assert limiter.limit == 10.1

    async def test_never_beyond_max(self) -> None:
        limiter = AdaptiveLimiter(2, max=3)
        for i in range(20):
            limiter.acquire_on_behalf_of_nowait(("a", i))
            limiter.acquire_on_behalf_of_nowait(("b", i))
            limiter.release_on_behalf_of(("a", i))
            limiter.release_on_behalf_of(("b", i))
        assert limiter.limit == 3
        assert limiter.history[-1][1] == 3
        assert all(limit <= 3 for _, limit in limiter.history)

    async def test_growth_lets_waiters_in(self) -> None:
        limiter = AdaptiveLimiter(1.5)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "w1", log)
            await start_waiter(tg, limiter, "w2", log)
            limiter.release_on_behalf_of("first")  # 1.5 + 1/1.5: two tokens now
            assert limiter.total_tokens == 2
            assert limiter.statistics().waiting == 0
        assert sorted(log) == ["w1", "w2"]  # (trio resumes them in any order)


class TestDecrease:
    async def test_a_failure_cuts_the_limit_by_decrease(self) -> None:
        limiter = AdaptiveLimiter(10, decrease=0.75)
        limiter.acquire_on_behalf_of_nowait("a")
        limiter.release_on_behalf_of("a", failed=True)
        assert limiter.limit == 7.5
        assert limiter.total_tokens == 7
        stats = limiter.statistics()
        assert (stats.failed, stats.decreases, stats.succeeded) == (1, 1, 0)
        [(when, limit)] = limiter.history
        assert limit == 7.5
        assert when <= anyio.current_time()

    async def test_one_cut_per_window(self) -> None:
        limiter = AdaptiveLimiter(8)
        for i in range(8):
            limiter.acquire_on_behalf_of_nowait(("old", i))
        # A burst of failures from one window: only the first one cuts.
        for i in range(3):
            limiter.release_on_behalf_of(("old", i), failed=True)
        assert limiter.limit == 4
        assert limiter.statistics().decreases == 1
        # 5 old permits still held: a new one waits until fewer than 4 are.
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("new")
        limiter.release_on_behalf_of(("old", 3), failed=True)  # still the old window
        assert limiter.limit == 4
        limiter.release_on_behalf_of(("old", 4))  # an old success, 4 held: it grows
        assert limiter.limit == 4.25
        limiter.acquire_on_behalf_of_nowait("new")  # 4 held, 4 allowed
        # A permit granted after the cut saw the new limit: its failure cuts again.
        limiter.release_on_behalf_of("new", failed=True)
        assert limiter.limit == 2.125
        stats = limiter.statistics()
        assert (stats.failed, stats.decreases, stats.holders) == (5, 2, 3)
        assert [limit for _, limit in limiter.history] == [4, 4.25, 2.125]

    async def test_never_below_min(self) -> None:
        limiter = AdaptiveLimiter(3, min=2)
        for i in range(3):
            limiter.acquire_on_behalf_of_nowait(i)
            limiter.release_on_behalf_of(i, failed=True)
        assert limiter.limit == 2
        assert limiter.statistics().decreases == 3
        assert [limit for _, limit in limiter.history] == [2]

    async def test_lowering_cancels_nothing_and_starts_nothing_above_the_limit(self) -> None:
        limiter = AdaptiveLimiter(4)
        release = {i: anyio.Event() for i in range(4)}
        cancelled: list[int] = []
        started: list[str] = []

        async def holder(i: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                async with limiter.acquire():
                    task_status.started()
                    await release[i].wait()
                    if i == 0:
                        raise OSError("the downstream is overloaded")
            except OSError:
                pass
            except anyio.get_cancelled_exc_class():  # pragma: no cover - the bug we test
                cancelled.append(i)
                raise

        async def newcomer(tag: str) -> None:
            async with limiter.acquire():
                started.append(tag)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                await tg.start(holder, i)
            release[0].set()
            await anyio.wait_all_tasks_blocked()
            assert limiter.limit == 2
            assert limiter.statistics().borrowed_tokens == 3  # above the new limit
            tg.start_soon(newcomer, "x")
            await anyio.wait_all_tasks_blocked()
            assert started == []
            release[1].set()
            await anyio.wait_all_tasks_blocked()
            assert started == []  # 2 held: still no room under 2
            release[2].set()
            await anyio.wait_all_tasks_blocked()
            assert started == ["x"]
            release[3].set()
        assert cancelled == []
        assert_idle(limiter)

    async def test_a_permit_heavier_than_a_lowered_limit_goes_in_alone(self) -> None:
        limiter = AdaptiveLimiter(4)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("a")
        limiter.acquire_on_behalf_of_nowait("b", weight=3)
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", log, weight=3)
            await start_waiter(tg, limiter, "light", log)
            limiter.release_on_behalf_of("a", failed=True)  # the limit drops to 2
            assert limiter.total_tokens == 2
            assert log == []
            limiter.release_on_behalf_of("b")
            assert log == []  # "heavy" goes in alone; "light" waits behind it
            await anyio.wait_all_tasks_blocked()
            assert log == ["heavy"]
            assert limiter.statistics().borrowed_tokens == 3
            limiter.release_on_behalf_of("heavy")
        assert log == ["heavy", "light"]
        limiter.release_on_behalf_of("light")
        assert_idle(limiter)


class TestLatency:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_a_slow_success_cuts_the_limit(self) -> None:
        limiter = AdaptiveLimiter(4, latency_target=1)
        t0 = anyio.current_time()
        for i in range(4):
            limiter.acquire_on_behalf_of_nowait(i)
        await anyio.sleep(0.5)
        limiter.release_on_behalf_of(0)  # in time: it grows
        assert limiter.limit == 4.25
        await anyio.sleep(0.5)
        limiter.release_on_behalf_of(1)  # exactly on target: still in time
        assert limiter.limit == 4.25 + 1 / 4.25
        await anyio.sleep(0.25)
        limiter.release_on_behalf_of(2)  # 1.25 s: too slow
        assert limiter.limit == (4.25 + 1 / 4.25) / 2
        stats = limiter.statistics()
        assert (stats.succeeded, stats.slow, stats.failed, stats.decreases) == (3, 1, 0, 1)
        assert [when - t0 for when, _ in limiter.history] == [0.5, 1.0, 1.25]
        limiter.release_on_behalf_of(3)

    async def test_latency_counts_from_the_grant_not_from_the_wait(self) -> None:
        limiter = AdaptiveLimiter(1, latency_target=1)
        limiter.acquire_on_behalf_of_nowait("first")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "waiter")
            await anyio.sleep(5)
            limiter.release_on_behalf_of("first", failed=True)  # at min: no change
        await anyio.sleep(0.75)
        limiter.release_on_behalf_of("waiter")  # waited 5 s, held 0.75 s
        stats = limiter.statistics()
        assert (stats.slow, stats.succeeded) == (0, 1)
        assert limiter.limit == 2

    async def test_the_user_api_measures_the_block(self) -> None:
        limiter = AdaptiveLimiter(2, latency_target=0.5)
        async with limiter.acquire():
            await anyio.sleep(0.75)
        assert limiter.limit == 1
        assert limiter.statistics().slow == 1


# -- the task API: outcomes of the block -----------------------------------------------


class TestOutcomes:
    async def test_success(self) -> None:
        limiter = AdaptiveLimiter(1)
        async with limiter.acquire():
            assert limiter.statistics().holders == 1
        assert limiter.limit == 2
        assert limiter.statistics().succeeded == 1

    async def test_an_exception_is_a_failure_and_propagates(self) -> None:
        limiter = AdaptiveLimiter(4)
        with pytest.raises(OSError, match="^down$"):
            async with limiter.acquire():
                raise OSError("down")
        assert limiter.limit == 2
        assert limiter.statistics().failed == 1

    async def test_a_timeout_inside_the_block_is_a_failure(self) -> None:
        limiter = AdaptiveLimiter(4)
        with pytest.raises(TimeoutError):
            async with limiter.acquire():
                with anyio.fail_after(0.01):
                    await anyio.sleep_forever()
        assert limiter.limit == 2
        assert limiter.statistics().failed == 1

    async def test_a_cancellation_is_neither(self) -> None:
        limiter = AdaptiveLimiter(4)
        with anyio.move_on_after(0.01):
            async with limiter.acquire():
                await anyio.sleep_forever()
        assert limiter.limit == 4
        stats = limiter.statistics()
        assert (stats.succeeded, stats.failed, stats.neutral) == (0, 0, 1)
        assert_idle(limiter)

    async def test_nowait(self) -> None:
        limiter = AdaptiveLimiter(1)
        with limiter.acquire_nowait():
            assert limiter.statistics().holders == 1
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("other")
        assert limiter.limit == 2
        with pytest.raises(ValueError, match="^no$"), limiter.acquire_nowait(weight=2):
            raise ValueError("no")
        assert limiter.limit == 1
        assert_idle(limiter)

    async def test_nowait_when_full_or_others_wait(self) -> None:
        limiter = AdaptiveLimiter(2)
        limiter.acquire_on_behalf_of_nowait("a")
        limiter.acquire_on_behalf_of_nowait("b")
        with pytest.raises(anyio.WouldBlock), limiter.acquire_nowait():
            pytest.fail("entered")  # pragma: no cover
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "heavy", weight=2)
            limiter.release_on_behalf_of("a")  # one token free, but "heavy" waits first
            with pytest.raises(anyio.WouldBlock), limiter.acquire_nowait():
                pytest.fail("entered")  # pragma: no cover
            limiter.release_on_behalf_of("b")
        limiter.release_on_behalf_of("heavy")
        assert_idle(limiter)

    async def test_weight(self) -> None:
        limiter = AdaptiveLimiter(3)
        async with limiter.acquire(weight=2):
            assert limiter.statistics().borrowed_tokens == 2
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_on_behalf_of_nowait("x", weight=2)
        assert limiter.limit == 3 + 2 / 3


# -- waiters and cancellation ----------------------------------------------------------


class TestWaiters:
    async def test_first_come_first_served(self) -> None:
        limiter = AdaptiveLimiter(1, max=1)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("holder")
        async with anyio.create_task_group() as tg:
            for i in range(5):
                await start_waiter(tg, limiter, i, log)
            assert limiter.statistics().waiting == 5
            previous: object = "holder"
            for i in range(5):
                limiter.release_on_behalf_of(previous)
                await anyio.wait_all_tasks_blocked()
                assert log == list(range(i + 1))
                previous = i
        limiter.release_on_behalf_of(previous)
        assert_idle(limiter)

    async def test_a_cancelled_waiter_leaves_no_trace(self) -> None:
        limiter = AdaptiveLimiter(1)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("holder")
        async with anyio.create_task_group() as tg:
            gone = await start_waiter(tg, limiter, "gone", log)
            await start_waiter(tg, limiter, "next", log)
            gone.cancel()
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().waiting == 1
            limiter.release_on_behalf_of("holder")
        assert log == ["next"]
        limiter.release_on_behalf_of("next")
        stats = limiter.statistics()
        assert (stats.acquired, stats.neutral) == (2, 0)
        assert_idle(limiter)

    async def test_a_cancelled_heavy_waiter_lets_lighter_ones_in(self) -> None:
        limiter = AdaptiveLimiter(3)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("holder", weight=2)
        async with anyio.create_task_group() as tg:
            heavy = await start_waiter(tg, limiter, "heavy", log, weight=2)
            await start_waiter(tg, limiter, "light", log)
            heavy.cancel()
        assert log == ["light"]
        limiter.release_on_behalf_of("light")
        limiter.release_on_behalf_of("holder")
        assert_idle(limiter)

    @pytest.mark.parametrize("release_first", [False, True])
    async def test_a_cancellation_racing_a_grant(self, release_first: bool) -> None:
        limiter = AdaptiveLimiter(1, max=1)
        log: list[object] = []
        limiter.acquire_on_behalf_of_nowait("holder")
        async with anyio.create_task_group() as tg:
            racer = await start_waiter(tg, limiter, "racer", log)
            await start_waiter(tg, limiter, "next", log)
            if release_first:
                # The permit is granted first: the racer resumes with it, as anyio and
                # trio resume a task whose wait has completed, cancelled or not.
                limiter.release_on_behalf_of("holder")
                racer.cancel()
                await anyio.wait_all_tasks_blocked()
                assert log == ["racer"]
                limiter.release_on_behalf_of("racer")
            else:
                # Cancelled first, then granted the permit before it resumes: it must
                # give the permit back, with no outcome, to the next in line.
                racer.cancel()
                limiter.release_on_behalf_of("holder")
        assert log == (["racer", "next"] if release_first else ["next"])
        stats = limiter.statistics()
        assert (stats.holders, stats.neutral) == (1, 0 if release_first else 1)
        limiter.release_on_behalf_of("next")
        assert_idle(limiter)


class TestCheckpoints:
    async def test_acquire_is_a_cancel_point_and_takes_nothing(self) -> None:
        limiter = AdaptiveLimiter(2)
        await assert_cancel_point(lambda: limiter.acquire_on_behalf_of("b"))
        await assert_cancel_point(limiter.acquire().__aenter__)
        assert limiter.statistics().acquired == 0

    async def test_acquire_is_a_schedule_point_when_it_does_not_wait(self) -> None:
        limiter = AdaptiveLimiter(2)
        await assert_schedule_point(lambda: limiter.acquire_on_behalf_of("b"))
        assert limiter.statistics().holders == 1


# -- misuse ------------------------------------------------------------------------------


class TestMisuse:
    async def test_one_task_one_permit(self) -> None:
        limiter = AdaptiveLimiter(5)
        held = r" already holds a permit of this AdaptiveLimiter: release it before acquiring again"
        async with limiter.acquire():
            with pytest.raises(RuntimeError, match=held):
                async with limiter.acquire():
                    pytest.fail("entered")  # pragma: no cover
            with pytest.raises(RuntimeError, match=held):
                limiter.acquire_nowait()
        assert limiter.statistics().failed == 0  # the refused entry counted for nothing
        assert_idle(limiter)

    async def test_one_borrower_one_permit(self) -> None:
        limiter = AdaptiveLimiter(1)
        limiter.acquire_on_behalf_of_nowait("b")
        with pytest.raises(RuntimeError, match="already holds a permit"):
            await limiter.acquire_on_behalf_of("b")
        with pytest.raises(RuntimeError, match="already holds a permit"):
            limiter.acquire_on_behalf_of_nowait("b")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "w")
            waiting = (
                r"^'w' is already waiting for a permit of this AdaptiveLimiter: use one "
                r"borrower object per holder$"
            )
            with pytest.raises(RuntimeError, match=waiting):
                await limiter.acquire_on_behalf_of("w")
            with pytest.raises(RuntimeError, match=waiting):
                limiter.acquire_on_behalf_of_nowait("w")
            limiter.release_on_behalf_of("b")
        limiter.release_on_behalf_of("w")
        assert_idle(limiter)

    async def test_release_what_is_not_held(self) -> None:
        limiter = AdaptiveLimiter(1)
        with pytest.raises(
            RuntimeError,
            match=(
                r"^'nobody' holds no permit of this AdaptiveLimiter: release only what was "
                r"acquired, once, with the same borrower$"
            ),
        ):
            limiter.release_on_behalf_of("nobody")

    async def test_weight(self) -> None:
        limiter = AdaptiveLimiter(3.5, max=10)
        with pytest.raises(
            ValueError,
            match=(
                r"^weight must be <= total_tokens \(3\), got 4: total_tokens is the current "
                r"limit \(3\.5\) rounded down$"
            ),
        ):
            limiter.acquire_on_behalf_of_nowait("b", weight=4)
        with pytest.raises(ValueError, match=r"^weight must be <= total_tokens \(3\)"):
            await limiter.acquire_on_behalf_of("b", weight=4)
        with pytest.raises(ValueError, match=r"^weight must be >= 1, got 0$"):
            limiter.acquire_on_behalf_of_nowait("b", weight=0)
        with pytest.raises(TypeError, match=r"^weight must be an int >= 1, got 1.0$"):
            limiter.acquire_on_behalf_of_nowait("b", weight=1.0)  # type: ignore[arg-type]
        limiter.acquire_on_behalf_of_nowait("b", weight=3, priority=-5)  # priority: ignored
        assert_balanced(limiter.statistics())

    @pytest.mark.parametrize(
        ("priority", "error", "message"),
        [
            ("high", TypeError, "priority must be a number, got 'high'"),
            (None, TypeError, "priority must be a number, got None"),
            (math.nan, ValueError, "priority must not be NaN, got nan"),
        ],
    )
    async def test_priority_is_ignored_but_checked(
        self, priority: Any, error: type[Exception], message: str
    ) -> None:
        # as by every limiter of the package, so that a call works with any of them
        limiter = AdaptiveLimiter(2)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            limiter.acquire_on_behalf_of_nowait("a", priority=priority)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            await limiter.acquire_on_behalf_of("a", priority=priority)
        assert_idle(limiter)

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"initial": 0}, ValueError, "initial must be a finite number > 0, got 0"),
            ({"initial": "4"}, TypeError, "initial must be a number, got '4'"),
            ({"initial": math.inf}, ValueError, "initial must be a finite number > 0, got inf"),
            (
                {"initial": 1, "min": 2},
                ValueError,
                "initial must be between min (2) and max (inf), got 1",
            ),
            (
                {"initial": 11, "max": 10},
                ValueError,
                "initial must be between min (1) and max (10), got 11",
            ),
            ({"min": 0}, ValueError, "min must be >= 1, got 0"),
            ({"min": 1.5}, TypeError, "min must be an int >= 1, got 1.5"),
            ({"max": 2.5}, TypeError, "max must be an int >= 1, got 2.5"),
            ({"min": 3, "max": 2}, ValueError, "max must be >= min (3), got 2"),
            ({"increase": 0}, ValueError, "increase must be a finite number > 0, got 0"),
            (
                {"decrease": 1},
                ValueError,
                "decrease must be > 0 and < 1 (the factor applied to the limit on a "
                "failure), got 1",
            ),
            ({"decrease": 0}, ValueError, "decrease must be a finite number > 0, got 0"),
            ({"decrease": None}, TypeError, "decrease must be a number, got None"),
            ({"latency_target": 0}, ValueError, "latency_target must be > 0 seconds, got 0"),
            (
                {"latency_target": "1"},
                TypeError,
                "latency_target must be a number of seconds, got '1'",
            ),
        ],
    )
    def test_bad_arguments(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        arguments: dict[str, Any] = {"initial": 5, **kwargs}
        initial = arguments.pop("initial")
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            AdaptiveLimiter(initial, **arguments)


# -- introspection -----------------------------------------------------------------------


class TestIntrospection:
    def test_it_is_a_limiter(self) -> None:
        limiter = AdaptiveLimiter(4)
        assert isinstance(limiter, Limiter)
        protocol: Limiter = limiter
        assert protocol.total_tokens == 4

    def test_total_tokens_rounds_the_limit_down(self) -> None:
        limiter = AdaptiveLimiter(2.99, max=10)
        assert limiter.limit == 2.99
        assert limiter.total_tokens == 2
        assert isinstance(limiter.total_tokens, int)

    def test_outside_an_event_loop(self) -> None:
        # Without a latency target, the clock is read only to stamp a change of the limit
        # in the history: while the limit stays put, no event loop is needed.
        limiter = AdaptiveLimiter(1, max=1)
        limiter.acquire_on_behalf_of_nowait("a")
        limiter.release_on_behalf_of("a", failed=True)  # already at min
        limiter.acquire_on_behalf_of_nowait("b")
        limiter.release_on_behalf_of("b")  # already at max
        stats = limiter.statistics()
        assert (stats.succeeded, stats.failed, limiter.history) == (1, 1, ())
        # A release that would move the limit needs the clock: it raises, changing nothing.
        limiter = AdaptiveLimiter(4)
        limiter.acquire_on_behalf_of_nowait("a")
        with pytest.raises(RuntimeError):  # no event loop, hence no clock
            limiter.release_on_behalf_of("a", failed=True)
        stats = limiter.statistics()
        assert (stats.limit, stats.borrowers, stats.failed, stats.decreases) == (4, ("a",), 0, 0)
        # With a latency target, taking a permit reads the clock too.
        timed = AdaptiveLimiter(4, latency_target=1)
        with pytest.raises(RuntimeError):
            timed.acquire_on_behalf_of_nowait("a")
        assert_idle(timed)

    def test_repr_needs_no_event_loop(self) -> None:
        assert re.fullmatch(
            r"<anyio_keyq\.AdaptiveLimiter at 0x[0-9a-f]+: limit 2\.5, 0 borrowed, 0 waiting>",
            repr(AdaptiveLimiter(2.5)),
        )

    async def test_statistics(self) -> None:
        limiter = AdaptiveLimiter(3)
        assert limiter.statistics() == AdaptiveLimiterStatistics(
            limit=3.0,
            total_tokens=3,
            borrowed_tokens=0,
            borrowers=(),
            holders=0,
            waiting=0,
            acquired=0,
            succeeded=0,
            failed=0,
            slow=0,
            neutral=0,
            decreases=0,
        )
        limiter.acquire_on_behalf_of_nowait("a", weight=2)
        limiter.acquire_on_behalf_of_nowait("b")
        async with anyio.create_task_group() as tg:
            await start_waiter(tg, limiter, "c")
            stats = limiter.statistics()
            assert (stats.borrowed_tokens, stats.holders, stats.waiting) == (3, 2, 1)
            assert stats.borrowers == ("a", "b")
            limiter.release_on_behalf_of("a", failed=True)  # 1.5: "c" still waits
            assert limiter.statistics().waiting == 1
            limiter.release_on_behalf_of("b")  # 1.5 + 1 / 1.5: "c" goes in
        limiter.release_on_behalf_of("c")  # 1 of 2.17 held: less than half, no growth
        stats = limiter.statistics()
        assert stats == AdaptiveLimiterStatistics(
            limit=1.5 + 1 / 1.5,
            total_tokens=2,
            borrowed_tokens=0,
            borrowers=(),
            holders=0,
            waiting=0,
            acquired=3,
            succeeded=2,
            failed=1,
            slow=0,
            neutral=0,
            decreases=1,
        )
        with pytest.raises(AttributeError):
            stats.limit = 0  # type: ignore[misc]

    async def test_history_keeps_the_latest_thousand(self) -> None:
        limiter = AdaptiveLimiter(1)
        held: deque[object] = deque()
        for _ in range(1500):
            fill(limiter, held)
            limiter.release_on_behalf_of(held.popleft())
        history = limiter.history
        assert isinstance(history, tuple)
        assert len(history) == 1000
        assert history[-1][1] == limiter.limit
        assert all(a[1] < b[1] for a, b in itertools.pairwise(history))
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(history))
