"""RateLimiter: exact instants on virtual clocks, FIFO, cancellation, misuse, statistics.

The timing tests run on virtual clocks and assert exact instants. Most use intervals
that are binary fractions (``rate=4`` or ``8`` per second), exact in floating point and
on async-solipsism's clock, which counts whole microseconds. The lead example,
``rate=10``, is asserted exactly too: on trio as ``k / 10``, and on async-solipsism as
a whole number of microsecond ticks (0.1 s reads 0.09999999999999999 there).
"""

from __future__ import annotations

import math
import re
from typing import Any

import anyio
import pytest
import sniffio

from anyio_keyq import RateLimiter, RateLimiterStatistics

from .conftest import _virtual_asyncio, _virtual_trio
from .helpers import assert_cancel_point, assert_schedule_point

pytestmark = pytest.mark.anyio


class Recorder:
    """Tasks that acquire from a limiter and record when they got their tokens."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.t0 = anyio.current_time()
        self.got: list[tuple[Any, float]] = []

    def now(self) -> float:
        return anyio.current_time() - self.t0

    async def acquire(self, tag: Any, n: int = 1) -> None:
        await self.limiter.acquire(n)
        self.got.append((tag, self.now()))

    async def start(self, tg: anyio.abc.TaskGroup, tag: Any, n: int = 1) -> anyio.CancelScope:
        """Start a task acquiring *n* tokens; return once it is waiting (or served)."""

        async def run(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)  # acquire() registers before it yields
                await self.acquire(tag, n)

        scope: anyio.CancelScope = await tg.start(run)
        return scope

    async def sleep_until(self, t: float) -> None:
        await anyio.sleep(t - self.now())


# -- behaviour in time, on virtual clocks ------------------------------------------------


class TestTiming:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_one_by_one_at_a_steady_pace(self) -> None:
        rec = Recorder(RateLimiter(8, burst=1))
        for i in range(6):
            await rec.acquire(i)
        assert rec.got == [(i, i / 8) for i in range(6)]

    async def test_a_burst_then_the_steady_pace(self) -> None:
        limiter = RateLimiter(4, burst=3)
        rec = Recorder(limiter)
        for i in range(7):
            await rec.acquire(i)
        assert [t for _, t in rec.got] == [0, 0, 0, 0.25, 0.5, 0.75, 1.0]
        assert limiter.statistics().acquired == 7

    async def test_rate_10_per_second_is_exact(self) -> None:
        rec = Recorder(RateLimiter(10, burst=1))
        async with anyio.create_task_group() as tg:
            for i in range(25):
                await rec.start(tg, i)
        assert [tag for tag, _ in rec.got] == list(range(25))
        times = [t for _, t in rec.got]
        if sniffio.current_async_library() == "trio":
            assert times == [k / 10 for k in range(25)]
        else:  # whole microseconds: 0.1 s is 100,000 ticks
            assert [round(t * 1_000_000) for t in times] == [100_000 * k for k in range(25)]

    async def test_n_tokens_at_once(self) -> None:
        rec = Recorder(RateLimiter(4, burst=4))
        await rec.acquire("a", 4)
        await rec.acquire("b", 2)  # 2 tokens take 0.5 s to come back
        await rec.acquire("c", 3)
        await rec.acquire("d", 1)
        assert rec.got == [("a", 0), ("b", 0.5), ("c", 1.25), ("d", 1.5)]

    async def test_a_partly_refilled_bucket_keeps_the_pace(self) -> None:
        limiter = RateLimiter(4, burst=2)
        rec = Recorder(limiter)
        await rec.acquire("a", 2)
        await rec.sleep_until(0.375)  # 1.5 tokens back
        assert limiter.statistics().tokens == 1.5
        await rec.acquire("b")
        await rec.acquire("c")  # the half token left needs 0.125 s more
        await rec.acquire("d")
        assert rec.got == [("a", 0), ("b", 0.375), ("c", 0.5), ("d", 0.75)]

    async def test_waiters_are_served_in_order_without_overtaking(self) -> None:
        limiter = RateLimiter(4, burst=4)
        rec = Recorder(limiter)
        limiter.acquire_nowait(4)
        async with anyio.create_task_group() as tg:
            await rec.start(tg, "big", 4)
            await rec.start(tg, "small", 1)
            await rec.sleep_until(0.5)
            stats = limiter.statistics()
            assert (stats.tokens, stats.waiting, stats.waiting_tokens) == (2.0, 2, 5)
            # Two tokens are there, but the first in line needs four: nobody barges in.
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_nowait(1)
            await rec.start(tg, "late", 1)
        assert rec.got == [("big", 1.0), ("small", 1.25), ("late", 1.5)]
        stats = limiter.statistics()
        assert (stats.waiting, stats.waiting_tokens, stats.acquired) == (0, 0, 10)

    async def test_a_cancelled_waiter_takes_nothing_and_delays_nobody(self) -> None:
        limiter = RateLimiter(4, burst=2)
        rec = Recorder(limiter)
        limiter.acquire_nowait(2)
        async with anyio.create_task_group() as tg:
            first = await rec.start(tg, "first", 2)  # due at 0.5
            await rec.start(tg, "second", 1)  # due at 0.75 behind "first"
            await rec.start(tg, "third", 1)
            await rec.sleep_until(0.125)
            first.cancel()
        # Without "first", the others get their tokens as if it had never come.
        assert rec.got == [("second", 0.25), ("third", 0.5)]
        stats = limiter.statistics()
        assert (stats.waiting, stats.waiting_tokens, stats.acquired) == (0, 0, 4)

    async def test_a_waiter_moved_up_past_its_instant_goes_at_once(self) -> None:
        limiter = RateLimiter(4, burst=2)
        rec = Recorder(limiter)
        limiter.acquire_nowait(2)
        async with anyio.create_task_group() as tg:
            first = await rec.start(tg, "first", 2)  # due at 0.5
            await rec.start(tg, "second", 1)  # its own token is back at 0.25
            await rec.sleep_until(0.375)
            first.cancel()
        assert rec.got == [("second", 0.375)]
        assert limiter.ready_at() == rec.t0 + 0.5  # half a token left at 0.375

    async def test_a_cancelled_waiter_behind_the_first_takes_nothing(self) -> None:
        limiter = RateLimiter(4, burst=1)
        rec = Recorder(limiter)
        limiter.acquire_nowait()
        async with anyio.create_task_group() as tg:
            await rec.start(tg, "a")
            middle = await rec.start(tg, "b")
            await rec.start(tg, "c")
            middle.cancel()
        assert rec.got == [("a", 0.25), ("c", 0.5)]
        assert limiter.statistics().waiting == 0

    async def test_cancelled_after_moving_up_but_before_resuming(self) -> None:
        limiter = RateLimiter(4, burst=1)
        rec = Recorder(limiter)
        limiter.acquire_nowait()
        scopes: dict[str, anyio.CancelScope] = {}

        async def first(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            await rec.acquire("first")
            # "second" has just been told it is first in line, and has not run yet.
            scopes["second"].cancel()

        async with anyio.create_task_group() as tg:
            await tg.start(first)
            scopes["second"] = await rec.start(tg, "second")
            await rec.start(tg, "third")
        assert rec.got == [("first", 0.25), ("third", 0.5)]
        assert limiter.statistics().waiting == 0

    async def test_an_idle_bucket_refills_up_to_burst_only(self) -> None:
        limiter = RateLimiter(4, burst=2)
        rec = Recorder(limiter)
        await rec.acquire("a", 2)
        await rec.sleep_until(100)
        assert limiter.statistics().tokens == 2
        for tag in "bcd":
            await rec.acquire(tag)
        assert rec.got == [("a", 0), ("b", 100), ("c", 100), ("d", 100.25)]

    async def test_ready_at_is_when_acquire_nowait_succeeds(self) -> None:
        limiter = RateLimiter(4, burst=2)
        rec = Recorder(limiter)
        assert limiter.ready_at() == anyio.current_time()
        assert limiter.ready_at(2) == anyio.current_time()
        limiter.acquire_nowait(2)
        assert limiter.ready_at() == rec.t0 + 0.25
        assert limiter.ready_at(2) == rec.t0 + 0.5
        async with anyio.create_task_group() as tg:
            await rec.start(tg, "waiter", 2)  # due at 0.5: ready_at counts it
            assert limiter.ready_at() == rec.t0 + 0.75
            assert limiter.ready_at(2) == rec.t0 + 1.0
        assert rec.got == [("waiter", 0.5)]
        await rec.sleep_until(0.875)
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait(2)
        await anyio.sleep(limiter.ready_at(2) - anyio.current_time())
        assert rec.now() == 1.0
        limiter.acquire_nowait(2)
        assert limiter.ready_at() == rec.t0 + 1.25

    async def test_ready_at_moves_earlier_when_a_waiter_leaves(self) -> None:
        limiter = RateLimiter(4, burst=1)
        rec = Recorder(limiter)
        limiter.acquire_nowait()
        async with anyio.create_task_group() as tg:
            scope = await rec.start(tg, "gone")
            assert limiter.ready_at() == rec.t0 + 0.5
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert limiter.ready_at() == rec.t0 + 0.25

    async def test_per_and_fractional_rates(self) -> None:
        # 3 per 1.5 s is one every 0.5 s; 0.5 per second is one every 2 s.
        rec = Recorder(RateLimiter(3, per=1.5, burst=1))
        for i in range(4):
            await rec.acquire(i)
        assert [t for _, t in rec.got] == [0, 0.5, 1.0, 1.5]
        slow = Recorder(RateLimiter(0.5))
        for i in range(3):
            await slow.acquire(i)
        assert [t for _, t in slow.got] == [0, 2, 4]

    async def test_tokens_refill_as_a_fraction(self) -> None:
        limiter = RateLimiter(4, burst=4)
        rec = Recorder(limiter)
        limiter.acquire_nowait(4)
        assert limiter.statistics().tokens == 0
        await rec.sleep_until(0.375)
        assert limiter.statistics().tokens == 1.5
        await rec.sleep_until(5)
        assert limiter.statistics().tokens == 4


@pytest.mark.parametrize(
    "backend",
    [pytest.param(_virtual_asyncio(), id="asyncio"), pytest.param(_virtual_trio(), id="trio")],
)
def test_a_limiter_outlives_its_event_loop(backend: tuple[str, dict[str, Any]]) -> None:
    limiter = RateLimiter(4, burst=1)  # created with no event loop running
    assert "0 waiting" in repr(limiter)

    async def main() -> float:
        await limiter.acquire()
        await limiter.acquire()
        return anyio.current_time()

    name, options = backend
    assert anyio.run(main, backend=name, backend_options=options) == 0.25


# -- on every backend --------------------------------------------------------------------


class TestNoWait:
    async def test_takes_while_tokens_last(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=3)
        limiter.acquire_nowait()
        limiter.acquire_nowait(2)
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
        assert limiter.statistics().acquired == 3

    async def test_no_barging_past_a_waiter(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=2)
        limiter.acquire_nowait(2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire, 2)
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().waiting == 1
            with pytest.raises(anyio.WouldBlock):
                limiter.acquire_nowait()
            tg.cancel_scope.cancel()
        assert limiter.statistics().waiting == 0


class TestCheckpoints:
    async def test_acquire_is_a_cancel_point_and_takes_nothing(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=1)
        await assert_cancel_point(limiter.acquire)
        assert limiter.statistics().acquired == 0
        limiter.acquire_nowait()

    async def test_acquire_is_a_schedule_point_when_it_does_not_wait(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=1)
        await assert_schedule_point(limiter.acquire)
        assert limiter.statistics().acquired == 1

    async def test_a_waiter_cancelled_leaves_no_trace(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=1)
        limiter.acquire_nowait()
        with anyio.move_on_after(0.01):
            await limiter.acquire()
        stats = limiter.statistics()
        assert (stats.waiting, stats.waiting_tokens, stats.acquired) == (0, 0, 1)


class TestBadInput:
    @pytest.mark.parametrize("name", ["rate", "per"])
    @pytest.mark.parametrize(
        ("value", "error", "message"),
        [
            (0, ValueError, "must be a finite number > 0, got 0"),
            (-1.5, ValueError, "must be a finite number > 0, got -1.5"),
            (math.inf, ValueError, "must be a finite number > 0, got inf"),
            (math.nan, ValueError, "must be a finite number > 0, got nan"),
            (10**400, ValueError, "must be a finite number > 0, got 1000"),
            ("10", TypeError, "must be a number, got '10'"),
            (True, TypeError, "must be a number, got True"),
            (None, TypeError, "must be a number, got None"),
        ],
    )
    def test_rate_and_per(
        self, name: str, value: Any, error: type[Exception], message: str
    ) -> None:
        kwargs = {"rate": 10, "per": 1, name: value}
        with pytest.raises(error, match=f"^{name} {re.escape(message)}"):
            RateLimiter(**kwargs)

    @pytest.mark.parametrize(
        ("value", "error", "message"),
        [
            (0, ValueError, "burst must be >= 1, got 0"),
            (1.5, TypeError, "burst must be an int >= 1, got 1.5"),
            (True, TypeError, "burst must be an int >= 1, got True"),
        ],
    )
    def test_burst(self, value: Any, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            RateLimiter(10, burst=value)

    async def test_n(self) -> None:
        limiter = RateLimiter(10, burst=3)
        for call in (limiter.acquire_nowait, limiter.ready_at):
            with pytest.raises(ValueError, match=r"^n must be >= 1, got 0$"):
                call(0)
            with pytest.raises(TypeError, match=r"^n must be an int >= 1, got 1.0$"):
                call(1.0)  # type: ignore[arg-type]
            with pytest.raises(
                ValueError,
                match=r"^n must be <= burst \(3\), got 4: a bucket of 3 tokens never holds 4; "
                r"create the RateLimiter with burst=4 or more$",
            ):
                call(4)

    async def test_acquire_refuses_too_many_at_once(self) -> None:
        limiter = RateLimiter(10, burst=3)
        with anyio.CancelScope() as scope:
            scope.cancel()  # the error comes first: the call could never be served
            with pytest.raises(ValueError, match=r"^n must be <= burst \(3\), got 4"):
                await limiter.acquire(4)
        assert limiter.statistics().waiting == 0


class TestIntrospection:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        # statistics() reads the clock: on a virtual one, the tokens are exact.
        return virtual_backend

    def test_default_burst_is_a_period_s_worth(self) -> None:
        assert RateLimiter(10).burst == 10
        assert RateLimiter(100, per=60).burst == 100
        assert RateLimiter(2.5).burst == 2
        assert RateLimiter(0.5).burst == 1
        assert RateLimiter(10, burst=1).burst == 1

    def test_properties(self) -> None:
        limiter = RateLimiter(10, per=2)
        assert (limiter.rate, limiter.per, limiter.burst) == (10.0, 2.0, 10)
        assert isinstance(limiter.rate, float)
        assert isinstance(limiter.per, float)

    def test_repr_needs_no_event_loop(self) -> None:
        limiter = RateLimiter(2.5, per=0.5, burst=3)
        assert re.fullmatch(
            r"<anyio_keyq\.RateLimiter at 0x[0-9a-f]+: 2\.5 per 0\.5 s, burst 3, "
            r"0 waiting, 0 acquired>",
            repr(limiter),
        )

    async def test_statistics(self) -> None:
        limiter = RateLimiter(1, per=3600, burst=5)
        assert limiter.statistics() == RateLimiterStatistics(
            rate=1.0, per=3600.0, burst=5, tokens=5.0, waiting=0, waiting_tokens=0, acquired=0
        )
        limiter.acquire_nowait(3)
        taken_at = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire, 4)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(limiter.acquire, 1)
            await anyio.wait_all_tasks_blocked()
            stats = limiter.statistics()
            assert (stats.waiting, stats.waiting_tokens, stats.acquired) == (2, 5, 3)
            assert anyio.current_time() == taken_at  # nobody waited for a token yet
            assert stats.tokens == 2
            tg.cancel_scope.cancel()
        stats = limiter.statistics()
        assert (stats.waiting, stats.waiting_tokens, stats.acquired) == (0, 0, 3)
        with pytest.raises(AttributeError):
            stats.acquired = 0  # type: ignore[misc]
