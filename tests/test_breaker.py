"""CircuitBreaker: exact transitions on virtual clocks, exactly one trial, cancellation as
no outcome, failure_on, on_change, statistics, checkpoints, bad input, fault injection."""

from __future__ import annotations

import functools
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from anyio_keyq import CircuitBreaker, CircuitBreakerStatistics, CircuitOpen, CircuitState

from .conftest import _virtual_asyncio, _virtual_trio
from .helpers import assert_cancel_point, assert_schedule_point, boom, echo

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

# On virtual clocks, tasks settle in a short sleep (wait_all_tasks_blocked() may let
# virtual time pass on asyncio). Durations are binary fractions: async-solipsism's clock
# counts microseconds.
TICK = 2**-6


class Changes:
    """An on_change callback that records (instant since t0, old, new)."""

    def __init__(self) -> None:
        self.t0 = anyio.current_time()
        self.seen: list[tuple[float, str, str]] = []
        self.breakers: list[CircuitBreaker] = []

    def __call__(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.breakers.append(breaker)
        self.seen.append((anyio.current_time() - self.t0, old.value, new.value))


class Downstream:
    """A fake service: fails while ``down``; each call takes ``latency`` seconds."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.down = False
        self.calls = 0
        self.running = 0
        self.peak = 0

    async def __call__(self, value: str = "ok") -> str:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(self.latency)
        finally:
            self.running -= 1
        if self.down:
            raise ConnectionError("down")
        return value


async def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ValueError, match="^nope$"):
            await breaker.call(boom, "nope")


async def refused(breaker: CircuitBreaker) -> CircuitOpen:
    with pytest.raises(CircuitOpen) as caught:
        await breaker.call(echo, "refused?")
    return caught.value


def stats(breaker: CircuitBreaker, **expected: Any) -> CircuitBreakerStatistics:
    snapshot = breaker.statistics()
    for name, value in expected.items():
        assert getattr(snapshot, name) == value, (name, snapshot)
    return snapshot


class TestTiming:
    """On a virtual clock: each transition at its exact instant."""

    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_failures_in_a_row_open_and_the_recovery_time_half_opens(self) -> None:
        changes = Changes()
        breaker = CircuitBreaker(3, 2.0, on_change=changes)
        await fail(breaker, 2)
        assert await breaker.call(echo, 1) == 1  # a success resets the count
        stats(breaker, state=CLOSED, consecutive_failures=0)
        await fail(breaker, 2)
        stats(breaker, state=CLOSED, consecutive_failures=2)
        await anyio.sleep(0.5)
        await fail(breaker)  # the third in a row, at 0.5
        assert changes.seen == [(0.5, "closed", "open")]
        stats(breaker, state=OPEN, opened=1, opened_at=changes.t0 + 0.5)
        stats(breaker, next_trial_at=changes.t0 + 2.5, consecutive_failures=0)

        await anyio.sleep(0.75)
        assert (await refused(breaker)).retry_after == 1.25
        await anyio.sleep(1.25 - 2**-6)
        assert breaker.state is OPEN
        assert (await refused(breaker)).retry_after == 2**-6
        await anyio.sleep(2**-6)  # 2.5: the recovery time has passed
        assert breaker.state is HALF_OPEN
        stats(breaker, next_trial_at=None, trial_in_flight=False)
        assert changes.seen == [(0.5, "closed", "open")]  # reported when a trial starts
        assert await breaker.call(echo, "trial") == "trial"
        assert changes.seen == [
            (0.5, "closed", "open"),
            (2.5, "open", "half-open"),
            (2.5, "half-open", "closed"),
        ]
        stats(breaker, state=CLOSED, calls=7, successes=2, failures=5, rejections=2, trials=1)

    async def test_a_failed_trial_opens_for_another_recovery_time(self) -> None:
        changes = Changes()
        breaker = CircuitBreaker(1, 0.5, on_change=changes)
        await fail(breaker)
        await anyio.sleep(0.5)
        await fail(breaker)  # the trial, at 0.5
        assert (await refused(breaker)).retry_after == 0.5
        await anyio.sleep(0.25)
        assert (await refused(breaker)).retry_after == 0.25
        await anyio.sleep(0.25)
        await fail(breaker)  # the second trial, at 1.0
        await anyio.sleep(0.5)
        assert await breaker.call(echo, 1) == 1  # the third, at 1.5
        assert changes.seen == [
            (0.0, "closed", "open"),
            (0.5, "open", "half-open"),
            (0.5, "half-open", "open"),
            (1.0, "open", "half-open"),
            (1.0, "half-open", "open"),
            (1.5, "open", "half-open"),
            (1.5, "half-open", "closed"),
        ]
        stats(breaker, opened=3, trials=3, opened_at=changes.t0 + 1.0, rejections=2)

    async def test_exactly_one_trial_while_many_tasks_call_at_once(self) -> None:
        downstream = Downstream(latency=0.25)
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, on_change=changes)
        breaker.trip()
        await anyio.sleep(1.0)
        outcomes: dict[int, object] = {}

        async def caller(i: int) -> None:
            try:
                outcomes[i] = await breaker.call(downstream, f"call {i}")
            except CircuitOpen as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(caller, i)
            await anyio.sleep(TICK)  # the tasks settle
            # One task is inside the slow trial; every other one was refused.
            assert downstream.running == 1
            stats(breaker, state=HALF_OPEN, trial_in_flight=True, in_flight=1)
        assert downstream.calls == 1
        trial = [i for i, outcome in outcomes.items() if outcome == f"call {i}"]
        assert len(trial) == 1
        rejected = [o for o in outcomes.values() if isinstance(o, CircuitOpen)]
        assert len(rejected) == 19
        # While the trial is in flight, the next trial is a full recovery time away at
        # the soonest (if the trial fails now).
        assert {exc.retry_after for exc in rejected} == {1.0}
        assert "trial call is in flight" in str(rejected[0])
        stats(breaker, state=CLOSED, trials=1, rejections=19, calls=1)
        assert changes.seen == [
            (0, "closed", "open"),
            (1.0, "open", "half-open"),
            (1.25, "half-open", "closed"),
        ]
        # Closed again: everyone goes through, at once.
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(caller, i)
        assert downstream.peak == 5

    async def test_success_threshold_needs_trials_one_after_another(self) -> None:
        downstream = Downstream(latency=0.125)
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, success_threshold=3, on_change=changes)
        breaker.trip()
        await anyio.sleep(1.0)
        results: list[object] = []

        async def caller() -> None:
            try:
                results.append(await breaker.call(downstream))
            except CircuitOpen as exc:
                results.append(exc.retry_after)

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(caller)
            assert downstream.peak == 1
        assert results.count("ok") == 3
        assert results.count(1.0) == 9
        assert changes.seen == [
            (0, "closed", "open"),
            (1.0, "open", "half-open"),
            (1.375, "half-open", "closed"),
        ]
        stats(breaker, trials=3, trial_successes=0)

    async def test_a_failure_between_trial_successes_opens_again(self) -> None:
        breaker = CircuitBreaker(1, 1.0, success_threshold=2)
        breaker.trip()
        await anyio.sleep(1.0)
        await breaker.call(echo, 1)
        stats(breaker, state=HALF_OPEN, trial_successes=1, trial_in_flight=False)
        await fail(breaker)
        stats(breaker, state=OPEN, trial_successes=0, opened=2)

    async def test_a_cancelled_trial_frees_the_slot_at_once(self) -> None:
        downstream = Downstream(latency=10.0)
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, on_change=changes)
        breaker.trip()
        await anyio.sleep(1.0)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(breaker.call, downstream)
                await anyio.sleep(TICK)  # the tasks settle
                assert (await refused(breaker)).retry_after == 1.0
                scope.cancel()
        stats(breaker, state=HALF_OPEN, trial_in_flight=False, in_flight=0, failures=0)
        # The next caller is the trial, at the same instant: no new recovery time.
        downstream.latency = 0.0
        assert await breaker.call(downstream, "second trial") == "second trial"
        assert changes.seen == [
            (0, "closed", "open"),
            (1.0, "open", "half-open"),
            (1.0 + TICK, "half-open", "closed"),
        ]
        stats(breaker, trials=2, calls=2, successes=1, failures=0)

    async def test_a_hanging_trial_cut_by_a_timeout_around_the_call_is_no_failure(self) -> None:
        downstream = Downstream(latency=math.inf)
        breaker = CircuitBreaker(1, 1.0)
        breaker.trip()
        await anyio.sleep(1.0)
        with anyio.move_on_after(0.5) as scope:
            await breaker.call(downstream)
        assert scope.cancelled_caught
        stats(breaker, state=HALF_OPEN, trial_in_flight=False, failures=0, opened=1)

    async def test_a_timeout_inside_the_call_is_a_failure(self) -> None:
        downstream = Downstream(latency=math.inf)
        changes = Changes()
        breaker = CircuitBreaker(2, 1.0, on_change=changes)

        async def bounded() -> str:
            with anyio.fail_after(0.25):
                return await downstream()

        for _ in range(2):
            with pytest.raises(TimeoutError):
                await breaker.call(bounded)
        assert changes.seen == [(0.5, "closed", "open")]
        stats(breaker, failures=2, next_trial_at=changes.t0 + 1.5)

    async def test_a_hanging_call_in_many_tasks_never_trips_the_breaker(self) -> None:
        downstream = Downstream(latency=math.inf)
        breaker = CircuitBreaker(1, 1.0)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(breaker.call, downstream)
            await anyio.sleep(5.0)
            tg.cancel_scope.cancel()
        stats(breaker, state=CLOSED, calls=10, in_flight=0, failures=0, successes=0)
        assert breaker._at_rest

    async def test_a_slow_call_from_the_closed_state_is_not_the_trial(self) -> None:
        # A is let through while closed and is slow; B fails and opens the circuit. When
        # A ends, during the trial, its outcome must not pass for the trial's.
        slow = Downstream(latency=1.5)
        trial = Downstream(latency=1.0)
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, on_change=changes)
        async with anyio.create_task_group() as tg:
            tg.start_soon(breaker.call, slow)  # ends at 1.5, with success
            await anyio.sleep(TICK)  # the tasks settle
            await fail(breaker)  # at TICK: open
            await anyio.sleep(1.0)
            trial.down = True
            with pytest.raises(ConnectionError):
                await breaker.call(trial)  # from 1 + TICK to 2 + TICK; A succeeds meanwhile
        assert changes.seen == [
            (TICK, "closed", "open"),
            (1.0 + TICK, "open", "half-open"),
            (2.0 + TICK, "half-open", "open"),
        ]
        stats(breaker, successes=1, failures=2, state=OPEN)

    async def test_a_slow_failure_from_before_does_not_count_after_closing(self) -> None:
        slow = Downstream(latency=2.0)
        slow.down = True
        breaker = CircuitBreaker(2, 1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._expect_connection_error, breaker, slow)
            await anyio.sleep(TICK)  # the tasks settle
            breaker.trip()
            await anyio.sleep(1.0)
            await breaker.call(echo, "trial")  # closes at 1.0
            await fail(breaker)  # one failure in a row at 1.0
        # The slow call failed at 2.0, but it was let through before the circuit opened.
        stats(breaker, state=CLOSED, consecutive_failures=1, failures=2)

    @staticmethod
    async def _expect_connection_error(breaker: CircuitBreaker, fn: Downstream) -> None:
        with pytest.raises(ConnectionError):
            await breaker.call(fn)

    async def test_waiting_retry_after_reaches_the_next_trial_exactly(self) -> None:
        # What a retry policy that honours retry_after does: each wait ends exactly when
        # the next trial may start, and no attempt is refused twice in a row.
        downstream = Downstream(latency=0.25)
        downstream.down = True
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, on_change=changes)
        attempts: list[tuple[float, str]] = []
        while True:
            now = anyio.current_time() - changes.t0
            try:
                await breaker.call(downstream)
            except CircuitOpen as exc:
                attempts.append((now, "refused"))
                await anyio.sleep(exc.retry_after)
            except ConnectionError:
                attempts.append((now, "failed"))
                if len(attempts) == 5:
                    downstream.down = False  # the service comes back
            else:
                attempts.append((now, "ok"))
                break
        assert attempts == [
            (0.0, "failed"),  # opens at 0.25
            (0.25, "refused"),
            (1.25, "failed"),  # the trial, 1.25 to 1.5: opens again
            (1.5, "refused"),
            (2.5, "failed"),  # the trial; then the service comes back
            (2.75, "refused"),
            (3.75, "ok"),
        ]

    async def test_trip_and_reset_by_hand(self) -> None:
        changes = Changes()
        breaker = CircuitBreaker(5, 1.0, on_change=changes)
        await fail(breaker, 2)
        breaker.trip()
        await anyio.sleep(0.5)
        breaker.trip()  # starts the recovery time afresh, no change reported
        await anyio.sleep(0.5)
        assert (await refused(breaker)).retry_after == 0.5
        breaker.reset()
        stats(breaker, state=CLOSED, consecutive_failures=0, opened=2)
        breaker.reset()  # already closed: nothing to report
        assert changes.seen == [(0, "closed", "open"), (1.0, "open", "closed")]

    async def test_a_trip_during_the_trial_makes_the_trial_not_count(self) -> None:
        downstream = Downstream(latency=1.0)
        changes = Changes()
        breaker = CircuitBreaker(1, 4.0, on_change=changes)
        breaker.trip()
        await anyio.sleep(4.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(breaker.call, downstream)
            await anyio.sleep(0.5)
            breaker.trip()
        assert changes.seen == [
            (0, "closed", "open"),
            (4.0, "open", "half-open"),
            (4.5, "half-open", "open"),
        ]
        stats(breaker, state=OPEN, successes=1, next_trial_at=changes.t0 + 8.5)

    async def test_repr_follows_the_clock(self) -> None:
        breaker = CircuitBreaker(1, 1.0, name="api")
        breaker.trip()
        at = anyio.current_time() + 1.0
        assert re.fullmatch(
            rf"<anyio_keyq\.CircuitBreaker 'api' at 0x\w+: open, next trial at {at:g}>",
            repr(breaker),
        )
        await anyio.sleep(1.0)
        assert repr(breaker).endswith(": half-open>")


async def test_returns_the_value_and_raises_the_same_exception() -> None:
    breaker = CircuitBreaker()
    assert await breaker.call(echo, {"a": 1}) == {"a": 1}
    error = ValueError("the one")

    async def raiser() -> None:
        raise error

    with pytest.raises(ValueError, match="^the one$") as caught:
        await breaker.call(raiser)
    assert caught.value is error
    stats(breaker, calls=2, successes=1, failures=1, consecutive_failures=1, in_flight=0)


async def test_the_defaults() -> None:
    breaker = CircuitBreaker()
    assert breaker.failure_threshold == 5
    assert breaker.recovery_time == 30.0
    assert breaker.success_threshold == 1
    assert breaker.failure_on is Exception
    assert breaker.name is None
    await fail(breaker, 4)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    exc = await refused(breaker)
    assert exc.name is None
    assert 29 < exc.retry_after <= 30
    assert re.fullmatch(
        r"the circuit breaker is open: calls fail fast until the next trial call, in \d+(\.\d+)? s",
        str(exc),
    )


async def test_circuit_open_names_the_breaker() -> None:
    breaker = CircuitBreaker(1, 2.0, name=("tenant", 7))
    breaker.trip()
    exc = await refused(breaker)
    assert exc.name == ("tenant", 7)
    assert str(exc).startswith("the circuit breaker ('tenant', 7) is open:")


class TestFailureOn:
    async def test_a_class_or_tuple_counts_only_those(self) -> None:
        for failure_on in (ConnectionError, (ConnectionError, TimeoutError)):
            breaker = CircuitBreaker(1, 1.0, failure_on=failure_on)
            await fail(breaker, 3)  # ValueError: not a failure, counted as a success
            stats(breaker, state=CLOSED, successes=3, failures=0)
            downstream = Downstream()
            downstream.down = True
            with pytest.raises(ConnectionError):
                await breaker.call(downstream)
            assert breaker.state is OPEN

    async def test_a_predicate(self) -> None:
        class HTTPError(Exception):
            def __init__(self, status: int) -> None:
                self.status = status

        async def get(status: int) -> None:
            raise HTTPError(status)

        breaker = CircuitBreaker(
            2, 1.0, failure_on=lambda exc: isinstance(exc, HTTPError) and exc.status >= 500
        )
        for status in (503, 404, 503):  # the 404 is an answer: it resets the count
            with pytest.raises(HTTPError):
                await breaker.call(get, status)
        stats(breaker, state=CLOSED, consecutive_failures=1, successes=1, failures=2)
        with pytest.raises(HTTPError):
            await breaker.call(get, 500)
        assert breaker.state is OPEN

    async def test_an_answer_that_is_not_a_failure_closes_from_half_open(self) -> None:
        breaker = CircuitBreaker(1, 1.0, failure_on=ConnectionError)
        breaker.trip()
        breaker._opened_at = -math.inf  # the recovery time has passed
        await fail(breaker)  # the trial raised ValueError: the downstream answered
        stats(breaker, state=CLOSED, trials=1)

    async def test_a_predicate_that_raises_counts_a_failure_and_propagates(self) -> None:
        def judge(exc: Exception) -> bool:
            raise RuntimeError("bad predicate")

        breaker = CircuitBreaker(1, 1.0, failure_on=judge)
        with pytest.raises(RuntimeError, match="^bad predicate$") as caught:
            await breaker.call(boom, "nope")
        assert isinstance(caught.value.__context__, ValueError)
        stats(breaker, state=OPEN, failures=1, in_flight=0)

    async def test_exception_groups(self) -> None:
        breaker = CircuitBreaker(2, 1.0, failure_on=ConnectionError)

        async def group(*excs: BaseException) -> None:
            raise BaseExceptionGroup("several", list(excs))

        with pytest.raises(ExceptionGroup):
            await breaker.call(group, ValueError(), ConnectionError())
        stats(breaker, failures=1)
        with pytest.raises(ExceptionGroup):
            await breaker.call(group, ValueError(), ExceptionGroup("inner", [KeyError()]))
        stats(breaker, failures=1, successes=1, consecutive_failures=0)
        with pytest.raises(BaseExceptionGroup):
            await breaker.call(group, KeyboardInterrupt())
        with pytest.raises(ExceptionGroup):
            await breaker.call(group, ExceptionGroup("inner", [ConnectionError()]))
        stats(breaker, failures=2, successes=1, consecutive_failures=1, calls=4)

    async def test_a_base_exception_is_no_outcome(self) -> None:
        class Fatal(BaseException):
            pass

        async def fatal() -> None:
            raise Fatal

        breaker = CircuitBreaker(1, 1.0)
        with pytest.raises(Fatal):
            await breaker.call(fatal)
        stats(breaker, state=CLOSED, calls=1, failures=0, successes=0, in_flight=0)


class TestGuard:
    async def test_guard_counts_the_block(self) -> None:
        breaker = CircuitBreaker(2, 1.0)
        async with breaker.guard():
            pass
        for _ in range(2):
            with pytest.raises(ConnectionError):
                async with breaker.guard():
                    raise ConnectionError
        with pytest.raises(CircuitOpen):
            async with breaker.guard():
                pytest.fail("the body ran")  # pragma: no cover
        stats(breaker, calls=3, successes=1, failures=2, rejections=1, state=OPEN)

    async def test_a_guard_is_entered_once(self) -> None:
        breaker = CircuitBreaker()
        guard = breaker.guard()
        async with guard:
            pass
        with pytest.raises(RuntimeError, match=r"^a breaker guard can be entered only once"):
            async with guard:
                pass  # pragma: no cover

    async def test_guarded_passes_keyword_arguments(self) -> None:
        breaker = CircuitBreaker(1, 1.0)

        @breaker.guarded
        async def fetch(url: str, *, fail: bool = False) -> str:
            """Fetch it."""
            if fail:
                raise ConnectionError(url)
            return url.upper()

        assert fetch.__name__ == "fetch"
        assert fetch.__doc__ == "Fetch it."
        assert await fetch("a") == "A"
        with pytest.raises(ConnectionError):
            await fetch("b", fail=True)
        with pytest.raises(CircuitOpen):
            await fetch("c")

    async def test_cancelled_inside_the_guard_is_no_outcome(self) -> None:
        breaker = CircuitBreaker(1, 1.0)
        with anyio.CancelScope() as scope:
            async with breaker.guard():
                scope.cancel()
                await anyio.sleep_forever()
        stats(breaker, state=CLOSED, calls=1, failures=0, in_flight=0)


class TestCheckpoints:
    async def test_call_is_a_checkpoint(self) -> None:
        breaker = CircuitBreaker(1, 1.0)

        async def instant() -> int:
            return 1

        await assert_cancel_point(lambda: breaker.call(instant))
        assert await assert_schedule_point(lambda: breaker.call(instant)) == 1
        stats(breaker, calls=1)  # the cancelled call never reached the breaker

    async def test_a_refused_call_is_a_checkpoint_and_cancellation_wins(self) -> None:
        breaker = CircuitBreaker(1, 10.0)
        breaker.trip()
        await assert_cancel_point(lambda: breaker.call(echo, 1))
        stats(breaker, rejections=0)

        async def refused_call() -> None:
            with pytest.raises(CircuitOpen):
                await breaker.call(echo, 1)

        await assert_schedule_point(refused_call)
        stats(breaker, rejections=1)

    async def test_guard_and_guarded_are_checkpoints(self) -> None:
        breaker = CircuitBreaker(1, 10.0)

        async def enter() -> None:
            async with breaker.guard():
                pass

        await assert_cancel_point(enter)
        await assert_schedule_point(enter)

        @breaker.guarded
        async def instant() -> int:
            return 2

        await assert_cancel_point(instant)
        assert await assert_schedule_point(instant) == 2
        breaker.trip()

        async def refused_enter() -> None:
            with pytest.raises(CircuitOpen):
                await enter()

        await assert_cancel_point(enter)
        await assert_schedule_point(refused_enter)


class TestObserving:
    async def test_on_change_gets_the_breaker_and_the_states(self) -> None:
        changes = Changes()
        breaker = CircuitBreaker(1, 1.0, name="db", on_change=changes)
        await fail(breaker)
        breaker.reset()
        assert changes.breakers == [breaker, breaker]
        assert [(old, new) for _, old, new in changes.seen] == [
            ("closed", "open"),
            ("open", "closed"),
        ]

    async def test_an_on_change_that_raises_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
            raise RuntimeError("observer bug")

        breaker = CircuitBreaker(1, 1.0, name="db", on_change=broken)
        with caplog.at_level(logging.ERROR, logger="anyio_keyq"):
            await fail(breaker)  # the call's own exception propagates, not the observer's
        assert breaker.state is OPEN
        [record] = caplog.records
        assert re.fullmatch(
            r"on_change callback .*broken of <anyio_keyq\.CircuitBreaker 'db' .*> raised "
            r"\(closed -> open\)",
            record.getMessage(),
        )
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)

    async def test_statistics_from_the_start(self) -> None:
        assert CircuitBreaker().statistics() == CircuitBreakerStatistics(
            state=CLOSED,
            consecutive_failures=0,
            trial_in_flight=False,
            trial_successes=0,
            in_flight=0,
            calls=0,
            successes=0,
            failures=0,
            rejections=0,
            trials=0,
            opened=0,
            opened_at=None,
            next_trial_at=None,
        )

    async def test_in_flight_counts_running_calls(self) -> None:
        breaker = CircuitBreaker()
        go = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(breaker.call, go.wait)
            await anyio.wait_all_tasks_blocked()
            stats(breaker, in_flight=3, calls=3)
            go.set()
        stats(breaker, in_flight=0, successes=3)

    def test_repr_and_state_without_an_event_loop(self) -> None:
        breaker = CircuitBreaker(3, 1.0)
        assert breaker.state is CLOSED
        assert re.fullmatch(
            r"<anyio_keyq\.CircuitBreaker at 0x\w+: closed, 0 of 3 failures in a row>",
            repr(breaker),
        )
        breaker._state = OPEN  # as after a trip, without a loop to read the clock
        breaker._opened_at = 5.0
        assert repr(breaker).endswith(": open, next trial at 6>")
        breaker._state = HALF_OPEN
        assert repr(breaker).endswith(": half-open>")
        breaker._trial = True
        assert repr(breaker).endswith(": half-open, trial in flight>")


class TestHooks:
    """The synchronous hooks that KeyedLanes uses."""

    async def test_enter_and_exit(self) -> None:
        breaker = CircuitBreaker(1, 1.0)
        ticket = breaker._enter()
        assert not breaker._at_rest  # a call in flight
        breaker._exit(ticket, None)
        assert breaker._at_rest
        ticket = breaker._enter()
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            except anyio.get_cancelled_exc_class() as cancelled:
                breaker._exit(ticket, cancelled)
                raise
        assert breaker._at_rest
        ticket = breaker._enter()
        breaker._exit(ticket, OSError())
        assert not breaker._at_rest
        with pytest.raises(CircuitOpen):
            breaker._enter()
        breaker.reset()
        assert breaker._at_rest

    async def test_not_at_rest_with_failures_counted(self) -> None:
        breaker = CircuitBreaker(3, 1.0)
        await fail(breaker)
        assert not breaker._at_rest

    async def test_copy_has_the_settings_and_a_fresh_state(self) -> None:
        changes = Changes()

        def judge(exc: Exception) -> bool:
            return isinstance(exc, OSError)

        pattern = CircuitBreaker(
            2, 0.5, failure_on=judge, success_threshold=3, name="pattern", on_change=changes
        )
        pattern.trip()
        copy = pattern._copy("example.com")
        assert copy is not pattern
        assert (copy.failure_threshold, copy.recovery_time) == (2, 0.5)
        assert (copy.failure_on, copy.success_threshold) == (judge, 3)
        assert copy.name == "example.com"
        assert copy._at_rest
        assert copy.statistics().calls == 0
        copy.trip()
        assert changes.breakers == [pattern, copy]


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1, got 0"),
            (
                {"failure_threshold": 2.5},
                TypeError,
                "failure_threshold must be an int >= 1, got 2.5",
            ),
            ({"success_threshold": 0}, ValueError, "success_threshold must be >= 1, got 0"),
            (
                {"recovery_time": 0},
                ValueError,
                "recovery_time must be a finite number > 0, got 0",
            ),
            (
                {"recovery_time": math.inf},
                ValueError,
                "recovery_time must be a finite number > 0, got inf",
            ),
            ({"recovery_time": "30"}, TypeError, "recovery_time must be a number, got '30'"),
            (
                {"failure_on": KeyboardInterrupt},
                TypeError,
                "failure_on must be an Exception subclass, a non-empty tuple of them, or a "
                "predicate that takes an exception and returns True for a failure, got "
                "<class 'KeyboardInterrupt'>",
            ),
            ({"failure_on": ()}, TypeError, "failure_on must be .*, got \\(\\)"),
            (
                {"failure_on": (OSError, "x")},
                TypeError,
                "failure_on must be .*, got \\(<class 'OSError'>, 'x'\\)",
            ),
            ({"failure_on": 3}, TypeError, "failure_on must be .*, got 3"),
            (
                {"on_change": "log"},
                TypeError,
                "on_change must be None or a function called as on_change(breaker, old, "
                "new), got 'log'",
            ),
        ],
    )
    def test_constructor(
        self, kwargs: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=f"^{message if '.*' in message else re.escape(message)}$"):
            CircuitBreaker(**kwargs)

    async def test_call_needs_a_function(self) -> None:
        breaker = CircuitBreaker()
        with pytest.raises(TypeError, match=r"^fn must be an async function, got the awaitable"):
            await breaker.call(echo(1))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^fn must be an async function, got 3$"):
            breaker.guarded(3)  # type: ignore[arg-type]
        stats(breaker, calls=0)

    def test_refuses_subclassing(self) -> None:
        with pytest.raises(TypeError, match="does not support subclassing"):
            type("Sub", (CircuitBreaker,), {})


# -- fault injection -------------------------------------------------------------------

#: One caller: when it arrives (in 16ths of a second), how many awaits its call makes,
#: how the call ends ("ok", "fail", "answer": a non-failure exception, "hang"), and the
#: await at which its task is cancelled (None: never; -1: before the call, at its
#: checkpoint).
plans = st.lists(
    st.tuples(
        st.integers(0, 48),
        st.integers(1, 4),
        st.sampled_from(["ok", "fail", "fail", "fail", "answer", "hang"]),
        st.none() | st.none() | st.integers(-1, 4),
    ),
    min_size=4,
    max_size=30,
)

ALLOWED = {
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "open"),
    ("half-open", "closed"),
}


def run_virtual(backend: str, fn: Callable[[], Awaitable[None]]) -> None:
    """Run *fn* on a fresh virtual clock of *backend*."""
    name, options = _virtual_asyncio() if backend == "asyncio" else _virtual_trio()
    anyio.run(fn, backend=name, backend_options=options)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None)
@given(plans=plans, threshold=st.integers(1, 3), success_threshold=st.integers(1, 2))
def test_random_faults(
    backend: str,
    plans: list[tuple[int, int, str, int | None]],
    threshold: int,
    success_threshold: int,
) -> None:
    """Random failures, answers, hangs and cancellations at every await, on a virtual
    clock: the breaker keeps its promises whatever happens."""
    run_virtual(backend, functools.partial(faults, plans, threshold, success_threshold))


async def faults(
    plans: list[tuple[int, int, str, int | None]], threshold: int, success_threshold: int
) -> None:
    changes = Changes()
    breaker = CircuitBreaker(
        threshold,
        0.5,
        failure_on=ConnectionError,
        success_threshold=success_threshold,
        on_change=changes,
    )
    trials_running = 0
    trial_ends: list[str] = []  # how each trial call ended
    outcomes: list[str] = []

    async def downstream(awaits: int, end: str, cancel_at: int | None, scope_box: list[Any]) -> str:
        nonlocal trials_running
        is_trial = breaker.statistics().trial_in_flight
        trials_running += is_trial
        assert trials_running <= 1, "two trials at once"
        try:
            for step in range(awaits + 1):
                if cancel_at == step:
                    scope_box[0].cancel()
                if end == "hang" and step == awaits:
                    await anyio.sleep_forever()
                await anyio.sleep(2**-5)
        except anyio.get_cancelled_exc_class():
            if is_trial:
                trial_ends.append("cancelled")
            raise
        finally:
            trials_running -= is_trial
        if is_trial:
            trial_ends.append("failed" if end == "fail" else "succeeded")
        if end == "fail":
            raise ConnectionError
        if end == "answer":
            raise LookupError
        return "ok"

    async def caller(arrival: int, awaits: int, end: str, cancel_at: int | None) -> None:
        await anyio.sleep(arrival / 16)
        box: list[Any] = []
        with anyio.move_on_after(2.0) as scope:  # a hang ends by this timeout
            box.append(scope)
            if cancel_at == -1:
                scope.cancel()
                outcomes.append("cancelled before")
            try:
                await breaker.call(downstream, awaits, end, cancel_at, box)
                outcomes.append("ok")
            except CircuitOpen as exc:
                outcomes.append("refused" if exc.retry_after > 0 else "refused at once?")
            except ConnectionError:
                outcomes.append("fail")
            except LookupError:
                outcomes.append("answer")
        if scope.cancelled_caught:
            outcomes.append("cancelled")

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(caller, *plan)

    snapshot = breaker.statistics()
    assert snapshot.in_flight == 0
    assert not snapshot.trial_in_flight
    assert len(outcomes) == len(plans) + outcomes.count("cancelled before")
    assert snapshot.rejections == outcomes.count("refused")
    assert snapshot.failures == outcomes.count("fail")
    assert snapshot.successes == outcomes.count("ok") + outcomes.count("answer")
    # A call cancelled at its checkpoint never reached the breaker.
    assert snapshot.calls == len(plans) - outcomes.count("refused") - outcomes.count(
        "cancelled before"
    )
    # Cancellations and hangs never opened the circuit: only failures in a row did.
    opened = [change for change in changes.seen if change[2] == "open"]
    assert len(opened) == snapshot.opened <= snapshot.failures
    states = ["closed"]
    for _, old, new in changes.seen:
        assert (old, new) in ALLOWED
        assert old == states[-1]
        states.append(new)
    # Each trial ended once; a failed trial opened the circuit again, a cancelled one
    # changed nothing, and success_threshold successes in a row closed it.
    assert snapshot.trials == len(trial_ends)
    moves = [(old, new) for _, old, new in changes.seen]
    assert moves.count(("half-open", "open")) == trial_ends.count("failed")
    assert moves.count(("open", "half-open")) <= len(trial_ends)
    closes = moves.count(("half-open", "closed"))
    assert closes * success_threshold <= trial_ends.count("succeeded")
    # Failures in a row opened the closed circuit: never cancellations or hangs.
    assert moves.count(("closed", "open")) * threshold <= snapshot.failures
    assert breaker.state.value in (states[-1], "half-open")
    event(f"opened {min(snapshot.opened, 3)} times (3: or more)")
    event("a trial was cancelled" if "cancelled" in trial_ends else "no trial cancelled")
