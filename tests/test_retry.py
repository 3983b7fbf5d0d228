"""Retry, Backoff and retry(): exact waits, deadlines, cancellation, decisions, input."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import inspect
import math
import random
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from anyio_keyq import Backoff, Retry, RetryStatistics, retry

from .conftest import _virtual_asyncio, _virtual_trio
from .helpers import assert_cancel_point, assert_schedule_point, echo

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

pytestmark = pytest.mark.anyio


class GridRandom(random.Random):
    """A seeded generator whose ``random()`` is a multiple of 1/4.

    Every jittered wait is then a binary fraction with few bits: exact in floating
    point, and a whole number of microseconds on async-solipsism's clock, so that the
    tests can assert exact instants on both virtual clocks.
    """

    def random(self) -> float:
        return math.floor(super().random() * 4) / 4


def copy_of(rng: random.Random) -> random.Random:
    twin = GridRandom()
    twin.setstate(rng.getstate())
    return twin


class Throttled(Exception):
    """An error that carries a retry-after hint, as in the documented protocol."""

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"throttled, retry after {retry_after!r}")
        self.retry_after = retry_after


class Fatal(BaseException):
    pass


class Flaky:
    """A fake downstream: attempt *i* takes ``durations[i]`` seconds, then gives
    ``outcomes[i]`` (raised if it is an exception, else returned; "ok" past the end).

    It records the instant each attempt starts (relative to its creation) and which
    attempt saw a cancellation.
    """

    def __init__(
        self, outcomes: Sequence[object], durations: Sequence[float] | float = 0.0
    ) -> None:
        self.outcomes = outcomes
        self.durations = durations
        self.t0 = anyio.current_time()
        self.starts: list[float] = []
        self.cancelled: list[int] = []

    async def __call__(self, tag: str = "x") -> str:
        index = len(self.starts)
        self.starts.append(self.elapsed())
        durations = self.durations
        duration = durations if isinstance(durations, int | float) else durations[index]
        try:
            await anyio.sleep(duration)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(index)
            raise
        outcome = self.outcomes[index] if index < len(self.outcomes) else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return f"{tag}: {outcome}"

    def elapsed(self) -> float:
        return anyio.current_time() - self.t0


def notes(exc: BaseException) -> list[str]:
    return getattr(exc, "__notes__", [])


ZERO = RetryStatistics(
    calls=0,
    running=0,
    retries=0,
    succeeded=0,
    exhausted=0,
    out_of_time=0,
    not_retryable=0,
    cancelled=0,
)


def stats(**changes: int) -> RetryStatistics:
    """The statistics expected: all zero but *changes*."""
    return dataclasses.replace(ZERO, **changes)


class TestTiming:
    """On a virtual clock: the exact instants of the attempts."""

    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_no_jitter_exponential_and_capped(self) -> None:
        policy = Retry(attempts=5, backoff=Backoff(base=0.25, factor=2, cap=1), jitter="none")
        flaky = Flaky([OSError(f"failure {i}") for i in range(5)])
        with pytest.raises(OSError, match="^failure 4") as caught:
            await retry(flaky, policy=policy)
        # Waits 0.25, 0.5, then 1 (capped, not 2), 1.
        assert flaky.starts == [0.0, 0.25, 0.75, 1.75, 2.75]
        assert flaky.elapsed() == 2.75
        assert notes(caught.value) == ["anyio_keyq.Retry: attempt 5 of 5 failed; no attempts left"]
        assert policy.statistics() == stats(calls=1, retries=4, exhausted=1)

    @pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_jittered_waits_at_exact_instants(self, jitter: Any, seed: int) -> None:
        rng = GridRandom(seed)
        twin = copy_of(rng)
        backoff = Backoff(base=1, factor=2, cap=8)
        policy = Retry(attempts=4, backoff=backoff, jitter=jitter, rng=rng)
        # The expected waits, drawn from a copy of the generator by the formulas.
        waits: list[float] = []
        for attempt in (1, 2, 3):
            d = backoff.delay(attempt)
            if jitter == "full":
                wait = twin.uniform(0, d)
                assert 0 <= wait <= d
            elif jitter == "equal":
                wait = d / 2 + twin.uniform(0, d / 2)
                assert d / 2 <= wait <= d
            else:
                previous = waits[-1] if waits else backoff.base
                wait = min(backoff.cap, twin.uniform(backoff.base, 3 * previous))
                assert backoff.base <= wait <= backoff.cap
            waits.append(wait)
        flaky = Flaky([ValueError(), ValueError(), ValueError()])
        assert await retry(flaky, "v", policy=policy) == "v: ok"
        expected = [0.0]
        for wait in waits:
            expected.append(expected[-1] + wait)
        assert flaky.starts == expected
        assert rng.getstate() == twin.getstate()  # one draw per wait, no more

    async def test_attempt_durations_add_to_the_waits(self) -> None:
        policy = Retry(attempts=3, backoff=Backoff(base=0.5), jitter="none")
        flaky = Flaky([ValueError(), ValueError()], durations=[0.25, 0.125, 0.0625])
        assert await retry(flaky, policy=policy) == "x: ok"
        assert flaky.starts == [0.0, 0.75, 1.875]  # 0.25 + 0.5; + 0.125 + 1
        assert flaky.elapsed() == 1.9375

    async def test_retry_after_hint_is_the_wait_exactly_and_not_capped(self) -> None:
        # Full jitter and a cap of 1 s: a hint of 40 s is waited exactly.
        policy = Retry(backoff=Backoff(base=0.5, cap=1), jitter="full")
        flaky = Flaky([Throttled(40), Throttled(0)])
        assert await retry(flaky, policy=policy) == "x: ok"
        assert flaky.starts == [0.0, 40.0, 40.0]  # a hint of 0: at once

    async def test_retry_after_as_a_timedelta(self) -> None:
        policy = Retry(jitter="none")
        flaky = Flaky([Throttled(datetime.timedelta(seconds=2.5))])
        await retry(flaky, policy=policy)
        assert flaky.starts == [0.0, 2.5]

    async def test_retry_after_off_uses_the_backoff(self) -> None:
        policy = Retry(backoff=Backoff(base=0.5), jitter="none", retry_after=False)
        flaky = Flaky([Throttled(40)])
        await retry(flaky, policy=policy)
        assert flaky.starts == [0.0, 0.5]

    @pytest.mark.parametrize("hint", [-1, math.nan, math.inf, "3", True, b"1", None])
    async def test_a_nonsense_hint_is_ignored(self, hint: object) -> None:
        policy = Retry(backoff=Backoff(base=0.5), jitter="none")
        flaky = Flaky([Throttled(hint)])
        await retry(flaky, policy=policy)
        assert flaky.starts == [0.0, 0.5]

    async def test_a_hint_past_the_deadline_gives_up_at_once(self) -> None:
        policy = Retry(attempts=5, backoff=Backoff(base=0.25), jitter="none")
        flaky = Flaky([ValueError(), Throttled(12)])
        with pytest.raises(Throttled) as caught, anyio.fail_after(10):
            await retry(flaky, policy=policy)
        assert flaky.starts == [0.0, 0.25]
        assert flaky.elapsed() == 0.25  # at once: not at the deadline
        assert notes(caught.value) == [
            "anyio_keyq.Retry: attempt 2 of 5 failed; gave up: the wait for the next "
            "one (12 s) would reach the deadline"
        ]
        assert policy.statistics() == stats(calls=1, retries=1, out_of_time=1)

    @pytest.mark.parametrize(
        ("deadline", "starts"),
        [
            (1.5, [0.0, 0.5]),  # the wait of 1 s would end at the deadline: give up
            (1.5 + 2**-6, [0.0, 0.5, 1.5]),  # it ends just before: wait, try again
        ],
    )
    async def test_deadline_give_up(self, deadline: float, starts: list[float]) -> None:
        policy = Retry(attempts=5, backoff=Backoff(base=0.5), jitter="none")
        flaky = Flaky([ValueError(f"failure {i}") for i in range(5)])
        with pytest.raises(ValueError, match=f"^failure {len(starts) - 1}"):
            with anyio.move_on_after(deadline):
                await retry(flaky, policy=policy)
        assert flaky.starts == starts
        assert flaky.elapsed() == starts[-1]  # raised at the instant of the last failure
        assert policy.statistics().out_of_time == 1

    async def test_unlimited_attempts_until_the_deadline(self) -> None:
        policy = Retry(attempts=math.inf, backoff=Backoff(base=0.25, factor=1), jitter="none")
        flaky = Flaky([ValueError(f"failure {i}") for i in range(100)])
        with pytest.raises(ValueError, match="^failure 3") as caught, anyio.fail_after(1):
            await retry(flaky, policy=policy)
        assert flaky.starts == [0.0, 0.25, 0.5, 0.75]
        assert notes(caught.value) == [
            "anyio_keyq.Retry: attempt 4 (no limit on attempts) failed; gave up: the wait "
            "for the next one (0.25 s) would reach the deadline"
        ]

    async def test_cancelled_during_the_wait(self) -> None:
        policy = Retry(backoff=Backoff(base=0.5), jitter="none")
        flaky = Flaky([ValueError(), ValueError()])
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_later() -> None:
                    await anyio.sleep(0.375)
                    scope.cancel()

                tg.start_soon(cancel_later)
                await retry(flaky, policy=policy)
        assert scope.cancelled_caught
        assert flaky.starts == [0.0]  # no attempt after the cancellation
        assert flaky.elapsed() == 0.375
        assert policy.statistics() == stats(calls=1, cancelled=1)

    async def test_a_hanging_downstream_is_cancelled_by_the_timeout_not_retried(self) -> None:
        policy = Retry(attempts=5)
        flaky = Flaky([], durations=math.inf)
        with pytest.raises(TimeoutError), anyio.fail_after(2):
            await retry(flaky, policy=policy)
        assert flaky.starts == [0.0]
        assert flaky.cancelled == [0]
        assert flaky.elapsed() == 2.0
        assert policy.statistics() == stats(calls=1, cancelled=1)

    async def test_a_time_limit_per_attempt_is_retried(self) -> None:
        # A TimeoutError raised inside the attempt is an ordinary exception.
        policy = Retry(attempts=3, backoff=Backoff(base=0.25), jitter="none")
        flaky = Flaky([], durations=math.inf)

        async def attempt() -> str:
            with anyio.fail_after(0.5):
                return await flaky()

        with pytest.raises(TimeoutError) as caught:
            await retry(attempt, policy=policy)
        assert flaky.starts == [0.0, 0.75, 1.75]
        assert flaky.cancelled == [0, 1, 2]
        assert flaky.elapsed() == 2.25
        assert notes(caught.value)[-1].endswith("attempt 3 of 3 failed; no attempts left")

    # Cancellation at every await of a run: attempt 1 and 2 fail, 3 succeeds; each
    # attempt awaits twice (0.125 s each); the waits are 0.5 and 1 s.
    AWAITS = (
        (0.0, 0.125, 0),  # (start, end, attempt) of each await; attempt -1: a wait
        (0.125, 0.25, 0),
        (0.25, 0.75, -1),
        (0.75, 0.875, 1),
        (0.875, 1.0, 1),
        (1.0, 2.0, -1),
        (2.0, 2.125, 2),
        (2.125, 2.25, 2),
    )

    @pytest.mark.parametrize("index", range(len(AWAITS)))
    async def test_cancelled_at_every_await(self, index: int) -> None:
        start, end, in_attempt = self.AWAITS[index]
        at = (start + end) / 2
        policy = Retry(backoff=Backoff(base=0.5), jitter="none")
        flaky = Flaky(["1a", ValueError(), "2a", ValueError(), "3a", "3b"], durations=0.125)

        async def attempt() -> str:
            await flaky()
            return await flaky()

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_at() -> None:
                    await anyio.sleep(at)
                    scope.cancel()

                tg.start_soon(cancel_at)
                await retry(attempt, policy=policy)
        assert scope.cancelled_caught
        assert flaky.elapsed() == at  # the cancellation propagated at once
        # No call, and no attempt, started after the cancellation.
        calls = sum(1 for s, _, a in self.AWAITS if a >= 0 and s < at)
        attempts = len({a for s, _, a in self.AWAITS if a >= 0 and s < at})
        assert len(flaky.starts) == calls
        assert flaky.cancelled == ([calls - 1] if in_attempt >= 0 else [])
        assert policy.statistics() == stats(retries=attempts - 1, calls=1, cancelled=1)


async def test_returns_the_value_and_passes_the_arguments() -> None:
    assert await retry(echo, {"a": 1}) == {"a": 1}


async def test_success_at_the_first_attempt_is_one_call() -> None:
    policy = Retry(jitter="none", backoff=Backoff(base=0))
    flaky = Flaky([])
    assert await retry(flaky, "t", policy=policy) == "t: ok"
    assert len(flaky.starts) == 1
    assert policy.statistics() == stats(calls=1, succeeded=1)


async def test_success_after_retries() -> None:
    policy = Retry(attempts=4, backoff=Backoff(base=0))
    flaky = Flaky([OSError(), ValueError(), "fine"])
    assert await retry(flaky, policy=policy) == "x: fine"
    assert len(flaky.starts) == 3
    assert policy.statistics() == stats(calls=1, retries=2, succeeded=1)


async def test_the_default_policy() -> None:
    flaky = Flaky([ValueError(), ValueError(), ValueError("third")])
    with pytest.raises(ValueError, match="^third") as caught:
        await retry(flaky)
    assert len(flaky.starts) == 3
    assert notes(caught.value) == ["anyio_keyq.Retry: attempt 3 of 3 failed; no attempts left"]


async def test_each_retry_is_logged_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    async def fetch() -> None:
        raise OSError("refused")

    caplog.set_level("DEBUG", logger="anyio_keyq")
    with pytest.raises(OSError, match="^refused"):
        await retry(fetch, policy=Retry(attempts=2, backoff=Backoff(base=0.0)))
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "anyio_keyq",
            "DEBUG",
            "Retrying test_each_retry_is_logged_at_debug_level.<locals>.fetch in 0 s: "
            "attempt 1 failed with OSError('refused')",
        )
    ]


class TestWhatIsRetried:
    async def test_a_non_retryable_exception_is_raised_at_once(self) -> None:
        policy = Retry(retry_on=OSError, backoff=Backoff(base=0))
        flaky = Flaky([OSError(), KeyError("k")])
        with pytest.raises(KeyError) as caught:
            await retry(flaky, policy=policy)
        assert len(flaky.starts) == 2
        assert notes(caught.value) == [
            "anyio_keyq.Retry: attempt 2 of 3 failed; the policy does not retry this exception"
        ]
        assert policy.statistics() == stats(calls=1, retries=1, not_retryable=1)

    async def test_a_tuple_of_classes(self) -> None:
        policy = Retry(retry_on=(OSError, TimeoutError), attempts=5, backoff=Backoff(base=0))
        flaky = Flaky([ConnectionError(), TimeoutError(), ValueError("no")])
        with pytest.raises(ValueError, match="^no"):
            await retry(flaky, policy=policy)
        assert len(flaky.starts) == 3

    async def test_a_predicate(self) -> None:
        seen: list[BaseException] = []

        def transient(exc: Exception) -> bool:
            seen.append(exc)
            return "transient" in str(exc)

        policy = Retry(retry_on=transient, attempts=5, backoff=Backoff(base=0))
        errors = [ValueError("transient 1"), ValueError("transient 2"), ValueError("bad")]
        flaky = Flaky(errors)
        with pytest.raises(ValueError, match="^bad"):
            await retry(flaky, policy=policy)
        assert seen == errors  # called once per failure

    async def test_a_failing_predicate_propagates(self) -> None:
        def broken(exc: Exception) -> bool:
            raise RuntimeError("predicate bug")

        policy = Retry(retry_on=broken)
        with pytest.raises(RuntimeError, match="^predicate bug") as caught:
            await retry(Flaky([ValueError("original")]), policy=policy)
        assert isinstance(caught.value.__context__, ValueError)
        assert policy.statistics() == stats(calls=1, not_retryable=1)

    @pytest.mark.parametrize(
        "error", [Fatal(), GeneratorExit(), BaseExceptionGroup("g", [Fatal(), ValueError()])]
    )
    async def test_base_exceptions_are_never_retried(self, error: BaseException) -> None:
        policy = Retry(retry_on=lambda exc: True, backoff=Backoff(base=0))
        flaky = Flaky([error])
        with pytest.raises(type(error)):
            await retry(flaky, policy=policy)
        assert len(flaky.starts) == 1
        assert notes(error) == []
        assert policy.statistics() == stats(calls=1, cancelled=1)

    @pytest.mark.parametrize(
        "error", [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), asyncio.CancelledError()]
    )
    def test_retryable_is_false_for_base_exceptions(self, error: BaseException) -> None:
        policy = Retry(retry_on=lambda exc: pytest.fail("never called"))
        assert not policy.retryable(error)
        assert policy.next_delay(1, error) is None

    async def test_the_cancellation_exception_is_never_retryable(self) -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(anyio.get_cancelled_exc_class()) as caught:
                await checkpoint()
        assert not Retry(retry_on=lambda exc: True).retryable(caught.value)
        assert Retry().next_delay(1, caught.value) is None

    @pytest.mark.parametrize(
        ("retry_on", "retried"),
        [
            (Exception, True),  # the default: a group of exceptions is an Exception
            (OSError, False),  # the group is not an OSError, whatever it holds
            (ExceptionGroup, True),
            (lambda e: isinstance(e, ExceptionGroup) and e.split(OSError)[1] is None, True),
        ],
    )
    async def test_exception_groups(self, retry_on: Any, retried: bool) -> None:
        policy = Retry(retry_on=retry_on, backoff=Backoff(base=0))
        flaky = Flaky([ExceptionGroup("both", [OSError(1), ConnectionError(2)])])
        if retried:
            assert await retry(flaky, policy=policy) == "x: ok"
        else:
            with pytest.raises(ExceptionGroup):
                await retry(flaky, policy=policy)
        assert len(flaky.starts) == (2 if retried else 1)

    def test_a_mixed_group_fails_the_predicate(self) -> None:
        policy = Retry(
            retry_on=lambda e: isinstance(e, ExceptionGroup) and e.split(OSError)[1] is None
        )
        assert not policy.retryable(ExceptionGroup("mixed", [OSError(), ValueError()]))


class TestCancellationByCounter:
    """Cancel at each await of the attempts in turn, counted, on every backend."""

    @pytest.mark.parametrize("index", range(7))
    async def test_cancel_at_each_await(self, index: int) -> None:
        # Attempts 1 and 2 await twice and fail; attempt 3 awaits twice and succeeds:
        # awaits 0-5 are in the attempts; await 6 would be past the end (no cancel).
        awaits = 0
        calls = 0
        policy = Retry(backoff=Backoff(base=0), jitter="none")

        async def attempt() -> str:
            nonlocal awaits, calls
            calls += 1
            for _ in range(2):
                if awaits == index:
                    scope.cancel()
                awaits += 1
                await checkpoint()
            if calls < 3:
                raise ValueError(f"attempt {calls}")
            return "done"

        with anyio.CancelScope() as scope:
            result = await retry(attempt, policy=policy)
        if index < 6:
            assert scope.cancelled_caught
            assert calls == index // 2 + 1  # no attempt after the cancellation
            assert awaits == index + 1
            assert policy.statistics() == stats(calls=1, retries=index // 2, cancelled=1)
        else:
            assert result == "done"
            assert policy.statistics() == stats(calls=1, retries=2, succeeded=1)

    async def test_an_error_after_the_scope_was_cancelled_is_not_retried(self) -> None:
        # The attempt raises without reaching a checkpoint after the cancellation: the
        # error propagates (there is no time left), the cancellation stays pending.
        policy = Retry(backoff=Backoff(base=0))
        calls = 0

        async def attempt() -> None:
            nonlocal calls
            calls += 1
            scope.cancel()
            raise ValueError("late")

        with pytest.raises(ValueError, match="^late"), anyio.CancelScope() as scope:
            await retry(attempt, policy=policy)
        assert calls == 1
        assert policy.statistics() == stats(calls=1, out_of_time=1)


class TestDecorator:
    async def test_retries_and_keeps_the_signature(self) -> None:
        policy = Retry(attempts=3, backoff=Backoff(base=0))
        calls: list[tuple[int, str]] = []

        async def fetch(item: int, *, mode: str = "fast") -> str:
            """Fetch an item."""
            calls.append((item, mode))
            if len(calls) < 2:
                raise OSError("flaky")
            return f"{item}/{mode}"

        decorated = policy(fetch)
        assert decorated.__name__ == "fetch"
        assert decorated.__doc__ == "Fetch an item."
        assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
        assert inspect.signature(decorated) == inspect.signature(fetch)
        assert inspect.iscoroutinefunction(decorated)
        assert await decorated(7, mode="slow") == "7/slow"
        assert calls == [(7, "slow"), (7, "slow")]
        assert policy.statistics() == stats(calls=1, retries=1, succeeded=1)

    async def test_as_a_decorator_with_arguments_and_on_methods(self) -> None:
        class Client:
            def __init__(self) -> None:
                self.calls = 0

            @Retry(attempts=2, backoff=Backoff(base=0))
            async def get(self, key: str) -> str:
                self.calls += 1
                if self.calls == 1:
                    raise ConnectionError
                return key.upper()

        client = Client()
        assert await client.get("k") == "K"
        assert client.calls == 2

    async def test_a_decorated_call_is_a_checkpoint(self) -> None:
        called = False

        @Retry()
        async def immediate() -> int:
            nonlocal called
            called = True
            return 1

        await assert_cancel_point(immediate)
        assert not called
        assert await assert_schedule_point(immediate) == 1

    def test_refuses_sync_functions_and_async_generators(self) -> None:
        def sync() -> None:
            pass  # pragma: no cover

        async def agen() -> Any:
            yield  # pragma: no cover

        with pytest.raises(
            TypeError, match=r"^Retry\(\) decorates async functions \(async def\), got '.*sync'$"
        ):
            Retry()(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^Retry\(\) decorates async functions"):
            Retry()(agen)
        with pytest.raises(TypeError, match="^fn must be an async function, got 3"):
            Retry()(3)  # type: ignore[arg-type]

    async def test_an_async_callable_object_and_a_partial(self) -> None:
        policy = Retry(backoff=Backoff(base=0))
        flaky = Flaky([OSError()])
        assert await policy(flaky)("o") == "o: ok"
        assert await policy(functools.partial(echo, 5))() == 5


class TestCheckpoints:
    async def test_cancel_point_calls_nothing(self) -> None:
        called = False

        async def fn() -> None:
            nonlocal called
            called = True  # pragma: no cover

        policy = Retry()
        await assert_cancel_point(lambda: retry(fn, policy=policy))
        assert not called
        assert policy.statistics() == ZERO

    async def test_schedule_point_when_fn_never_awaits(self) -> None:
        async def immediate() -> int:
            return 3

        assert await assert_schedule_point(lambda: retry(immediate)) == 3

    async def test_schedule_point_when_fn_fails_at_once(self) -> None:
        async def fail() -> None:
            raise KeyError("no")

        async def call() -> None:
            with pytest.raises(KeyError):
                await retry(fail, policy=Retry(retry_on=OSError))

        await assert_schedule_point(call)


class TestNextDelay:
    def test_stops_when_the_attempts_are_used_up(self) -> None:
        policy = Retry(attempts=3, jitter="none")
        assert policy.next_delay(1, OSError()) == 0.1
        assert policy.next_delay(2, OSError()) == 0.2
        assert policy.next_delay(3, OSError()) is None
        assert policy.next_delay(4, OSError()) is None
        assert policy.statistics() == ZERO  # decisions count nothing

    def test_one_attempt_means_no_retry(self) -> None:
        assert Retry(attempts=1).next_delay(1, OSError()) is None

    def test_unlimited_attempts(self) -> None:
        policy = Retry(attempts=math.inf, jitter="none", backoff=Backoff(cap=1))
        assert policy.next_delay(10**6, OSError()) == 1

    def test_not_retryable(self) -> None:
        assert Retry(retry_on=OSError).next_delay(1, ValueError()) is None

    def test_hint_before_attempts_left(self) -> None:
        policy = Retry(attempts=2)
        assert policy.next_delay(1, Throttled(7)) == 7
        assert policy.next_delay(2, Throttled(7)) is None  # no attempts left, hint or not

    def test_a_hint_property_that_fails_is_no_hint(self) -> None:
        class Broken(Exception):
            @property
            def retry_after(self) -> float:
                raise ValueError("malformed header")

        assert Retry(jitter="none").next_delay(1, Broken()) == 0.1

    def test_fractions_and_ints_as_hints(self) -> None:
        import fractions

        assert Retry().next_delay(1, Throttled(fractions.Fraction(1, 4))) == 0.25
        assert Retry().next_delay(1, Throttled(3)) == 3.0

    def test_an_overflowing_hint_is_ignored(self) -> None:
        assert Retry(jitter="none").next_delay(1, Throttled(10**400)) == 0.1

    def test_decorrelated_uses_the_previous_wait(self) -> None:
        rng = GridRandom(7)
        twin = copy_of(rng)
        backoff = Backoff(base=1, cap=100)
        policy = Retry(backoff=backoff, jitter="decorrelated", rng=rng, attempts=10)
        assert policy.next_delay(1, OSError()) == twin.uniform(1, 3)
        assert policy.next_delay(5, OSError(), previous=6) == twin.uniform(1, 18)
        # A previous wait below base (a hint of 0) counts as base.
        assert policy.next_delay(5, OSError(), previous=0) == twin.uniform(1, 3)
        # Capped.
        small = Retry(backoff=Backoff(base=1, cap=2), jitter="decorrelated", attempts=9)
        assert all(1 <= small.next_delay(3, OSError(), previous=50) <= 2 for _ in range(50))  # type: ignore[operator]

    def test_the_default_generator_is_not_the_global_one(self) -> None:
        state = random.getstate()
        for attempt in range(1, 10):
            Retry(attempts=10).next_delay(attempt, OSError())
        assert random.getstate() == state

    @settings(max_examples=200, deadline=None)
    @given(
        attempt=st.integers(1, 2000),
        base=st.floats(0, 10),
        factor=st.floats(1, 10),
        extra=st.floats(0, 100),
        jitter=st.sampled_from(["full", "equal", "none"]),
    )
    def test_waits_stay_in_bounds(
        self, attempt: int, base: float, factor: float, extra: float, jitter: Any
    ) -> None:
        backoff = Backoff(base=base, factor=factor, cap=base + extra)
        policy = Retry(attempts=math.inf, backoff=backoff, jitter=jitter)
        d = backoff.delay(attempt)
        assert 0 <= d <= backoff.cap
        try:
            expected = min(backoff.cap, base * factor ** (attempt - 1))
        except OverflowError:
            expected = backoff.cap if base else 0.0
        assert d == expected
        wait = policy.next_delay(attempt, OSError())
        assert wait is not None
        low = {"full": 0.0, "equal": d / 2, "none": d}[jitter]
        assert low <= wait <= d


class TestBackoff:
    def test_delays(self) -> None:
        backoff = Backoff()
        assert [backoff.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.6]
        assert backoff.delay(100) == 30.0
        assert backoff.delay(10**9) == 30.0  # no OverflowError
        assert Backoff(base=0.5, factor=1).delay(50) == 0.5
        assert Backoff(base=0, cap=0).delay(10**9) == 0.0

    def test_a_frozen_value(self) -> None:
        backoff = Backoff(base=1, factor=3, cap=9)
        assert backoff == Backoff(base=1.0, factor=3.0, cap=9.0)
        assert hash(backoff) == hash(Backoff(base=1.0, factor=3.0, cap=9.0))
        assert isinstance(backoff.base, float)
        assert repr(backoff) == "Backoff(base=1.0, factor=3.0, cap=9.0)"
        with pytest.raises(dataclasses.FrozenInstanceError):
            backoff.base = 2  # type: ignore[misc]


class TestStatistics:
    async def test_one_policy_shared_by_concurrent_runs(self) -> None:
        policy = Retry(attempts=2, backoff=Backoff(base=0), retry_on=OSError)
        release = anyio.Event()

        async def held() -> str:
            await release.wait()
            return "held"

        async def run(fn: Callable[[], Any]) -> None:
            try:
                await retry(fn, policy=policy)
            except (OSError, KeyError):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, Flaky([OSError()]))  # succeeds on the retry
            tg.start_soon(run, Flaky([OSError(), OSError()]))  # exhausted
            tg.start_soon(run, Flaky([KeyError("k")]))  # not retryable
            tg.start_soon(run, held)
            await anyio.wait_all_tasks_blocked()
            assert policy.statistics() == stats(
                calls=4,
                running=1,
                retries=2,
                succeeded=1,
                exhausted=1,
                not_retryable=1,
            )
            assert "1 running, 2 retries>" in repr(policy)
            release.set()
        assert policy.statistics().succeeded == 2
        assert policy.statistics().running == 0

    async def test_the_private_loop_reports_each_attempt(self) -> None:
        from anyio_keyq._retry import _run

        seen: list[tuple[int, int]] = []
        flaky = Flaky([OSError(), OSError()])
        policy = Retry(backoff=Backoff(base=0))
        result = await _run(
            policy, flaky, ("t",), {}, on_attempt=lambda n: seen.append((n, len(flaky.starts)))
        )
        assert result == "t: ok"
        assert seen == [(1, 0), (2, 1), (3, 2)]  # each before its attempt started

    def test_private_hooks_for_other_retry_loops(self) -> None:
        policy = Retry()
        policy._record_call()
        policy._record_retry()
        assert policy.statistics() == stats(calls=1, running=1, retries=1)
        for outcome in ("succeeded", "exhausted", "out_of_time", "not_retryable", "cancelled"):
            policy._record_call()
            policy._record_outcome(outcome)  # type: ignore[arg-type]
        assert policy.statistics() == RetryStatistics(
            calls=6,
            running=1,
            retries=1,
            succeeded=1,
            exhausted=1,
            out_of_time=1,
            not_retryable=1,
            cancelled=1,
        )
        with pytest.raises(ValueError, match="^unknown outcome 'lost'"):
            policy._record_outcome("lost")  # type: ignore[arg-type]
        assert policy._decide(1, OSError(), None)[1] is None
        assert policy._decide(3, OSError(), None) == (None, "exhausted")
        assert policy._decide(1, KeyboardInterrupt(), None) == (None, "not_retryable")


class TestRepr:
    def test_repr_without_a_loop(self) -> None:
        assert re.fullmatch(
            r"<anyio_keyq\.Retry at 0x\w+: attempts=3, "
            r"backoff=Backoff\(base=0\.1, factor=2\.0, cap=30\.0\), jitter='full', "
            r"retry_on=Exception, retry_after=True; 0 running, 0 retries>",
            repr(Retry()),
        )

    def test_repr_of_retry_on(self) -> None:
        def transient(exc: Exception) -> bool:
            return True  # pragma: no cover

        assert "attempts=inf, " in repr(Retry(attempts=math.inf))
        assert "retry_on=(OSError, TimeoutError)," in repr(Retry(retry_on=(OSError, TimeoutError)))
        assert re.search(r"retry_on=.*<locals>\.transient,", repr(Retry(retry_on=transient)))

    def test_properties(self) -> None:
        backoff = Backoff(base=1)
        policy = Retry(
            attempts=4, backoff=backoff, jitter="equal", retry_on=OSError, retry_after=False
        )
        assert (policy.attempts, policy.backoff, policy.jitter) == (4, backoff, "equal")
        assert (policy.retry_on, policy.retry_after) == (OSError, False)


async def not_callable_yet() -> None:
    pass  # pragma: no cover


BAD_INPUT: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: Backoff(base=-1), ValueError, "base must be a finite number >= 0 (seconds), got -1"),
    (
        lambda: Backoff(cap=10**400),
        ValueError,
        "cap must be a finite number >= 0 (seconds), got 1000",
    ),
    (lambda: Backoff(base="1"), TypeError, "base must be a number, got '1'"),  # type: ignore[arg-type]
    (lambda: Backoff(base=math.nan), ValueError, "base must be a finite number >= 0"),
    (lambda: Backoff(factor=0.5), ValueError, "factor must be a finite number >= 1, got 0.5"),
    (lambda: Backoff(factor=True), TypeError, "factor must be a number, got True"),
    (lambda: Backoff(cap=math.inf), ValueError, "cap must be a finite number >= 0 (seconds)"),
    (lambda: Backoff(base=2, cap=1), ValueError, "cap must be >= base (2), got 1"),
    (lambda: Backoff(0.5), TypeError, "Backoff.__init__() takes 1 positional argument"),  # type: ignore[misc]
    (lambda: Backoff().delay(0), ValueError, "attempt must be >= 1, got 0"),
    (lambda: Backoff().delay(1.0), TypeError, "attempt must be an int >= 1, got 1.0"),  # type: ignore[arg-type]
    (lambda: Retry(attempts=0), ValueError, "attempts must be >= 1 (the first attempt counts"),
    (
        lambda: Retry(attempts=2.5),
        TypeError,
        "attempts must be an int >= 1 or math.inf, got 2.5",
    ),
    (lambda: Retry(attempts=True), TypeError, "attempts must be an int >= 1 or math.inf"),
    (lambda: Retry(backoff=0.1), TypeError, "backoff must be a Backoff, such as Backoff("),  # type: ignore[arg-type]
    (
        lambda: Retry(jitter="random"),  # type: ignore[arg-type]
        ValueError,
        "jitter must be one of 'full', 'equal', 'decorrelated' or 'none', got 'random'",
    ),
    (
        lambda: Retry(jitter="decorrelated", backoff=Backoff(base=0)),
        ValueError,
        "jitter='decorrelated' needs a backoff with base > 0",
    ),
    (
        lambda: Retry(retry_on=BaseException),  # type: ignore[arg-type]
        TypeError,
        "retry_on must be a subclass of Exception, got <class 'BaseException'>: "
        "cancellation and other BaseExceptions are never retried",
    ),
    (
        lambda: Retry(retry_on=(OSError, KeyboardInterrupt)),  # type: ignore[arg-type]
        TypeError,
        "retry_on[1] must be a subclass of Exception, got <class 'KeyboardInterrupt'>",
    ),
    (
        lambda: Retry(retry_on=(OSError, "x")),  # type: ignore[arg-type]
        TypeError,
        "retry_on[1] must be an exception class, got 'x'",
    ),
    (lambda: Retry(retry_on=int), TypeError, "retry_on must be an exception class, got <class"),  # type: ignore[arg-type]
    (lambda: Retry(retry_on=()), ValueError, "retry_on must not be an empty tuple; to never"),
    (
        lambda: Retry(retry_on="OSError"),  # type: ignore[arg-type]
        TypeError,
        "retry_on must be an exception class, a tuple of them, or a predicate taking the "
        "exception, got 'OSError'",
    ),
    (lambda: Retry(retry_after=1), TypeError, "retry_after must be a bool, got 1"),  # type: ignore[arg-type]
    (lambda: Retry(rng=random), TypeError, "rng must be a random.Random or None, got <module"),  # type: ignore[arg-type]
    (lambda: Retry(3), TypeError, "Retry.__init__() takes 1 positional argument"),  # type: ignore[misc]
    (lambda: Retry().next_delay(0, OSError()), ValueError, "attempt must be >= 1, got 0"),
    (lambda: Retry().next_delay(1, "boom"), TypeError, "exc must be an exception, got 'boom'"),  # type: ignore[arg-type]
    (
        lambda: Retry().next_delay(1, OSError(), previous=-1),
        ValueError,
        "previous must be a finite number >= 0 (seconds), got -1",
    ),
    (lambda: Retry().retryable(OSError), TypeError, "exc must be an exception, got <class"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_INPUT)
def test_bad_input(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        call()


ASYNC_BAD_INPUT: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: retry(42), TypeError, "fn must be an async function, got 42"),  # type: ignore[arg-type]
    (
        lambda: retry(not_callable_yet()),  # type: ignore[arg-type]
        TypeError,
        "fn must be an async function, got the awaitable <coroutine object",
    ),
    (
        lambda: retry(echo, 1, policy=Backoff()),  # type: ignore[arg-type]
        TypeError,
        "policy must be a Retry or None, got Backoff(",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ASYNC_BAD_INPUT)
async def test_async_bad_input(
    call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        await call()


# The retry loop against a plain sequential model, on a virtual clock.

BASE, CAP = 0.25, 2.0
ERRORS = {
    "error": lambda i: ValueError(f"error {i}"),  # retried
    "hint": lambda i: Throttled(0.5),  # retried after exactly 0.5 s
    "other": lambda i: KeyError(i),  # not retried
    "fatal": lambda i: Fatal(),  # a BaseException: never retried
}
Steps = list[tuple[str, float]]


def model(steps: Steps, attempts: float, deadline: float | None) -> tuple[str, int, float]:
    """How a run ends (the statistics field it counts in), the attempts it makes, and
    the instant it ends. Each step is (what the attempt does, how long it takes).
    """
    t = 0.0
    attempt = 0
    while True:
        attempt += 1
        kind, duration = steps[attempt - 1] if attempt <= len(steps) else ("ok", 0.0)
        if deadline is not None and t + duration > deadline:
            return "cancelled", attempt, deadline
        t += duration
        if kind == "ok":
            return "succeeded", attempt, t
        if kind == "other":
            return "not_retryable", attempt, t
        if kind == "fatal":
            return "cancelled", attempt, t
        if attempt >= attempts:
            return "exhausted", attempt, t
        delay = 0.5 if kind == "hint" else min(CAP, BASE * 2 ** (attempt - 1))
        if deadline is not None and t + delay >= deadline:
            return "out_of_time", attempt, t
        t += delay


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[float, list[tuple[Steps, float | None]]]:
    """A policy's attempts, and the runs made with it one after the other.

    Every instant is a multiple of 1/4 and every deadline is k/4 + 1/8: no ties.
    """
    attempts = draw(st.one_of(st.integers(1, 6), st.just(math.inf)))
    step = st.tuples(
        st.sampled_from(["ok", "error", "error", "error", "hint", "other", "fatal"]),
        st.sampled_from([0.0, 0.25, 0.5]),
    )
    deadline = st.one_of(st.none(), st.integers(0, 24).map(lambda k: k / 4 + 1 / 8))
    runs = draw(st.lists(st.tuples(st.lists(step, max_size=8), deadline), min_size=1, max_size=3))
    return attempts, runs


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None)
@given(scenario=scenarios())
def test_matches_the_model(
    backend: str, scenario: tuple[float, list[tuple[Steps, float | None]]]
) -> None:
    attempts, runs = scenario
    policy = Retry(
        attempts=attempts,
        backoff=Backoff(base=BASE, cap=CAP),
        jitter="none",
        retry_on=(ValueError, Throttled),
    )

    async def one_run(steps: Steps, deadline: float | None) -> tuple[str, int]:
        outcome, calls, end = model(steps, attempts, deadline)
        outcomes = [
            f"ok {i}" if kind == "ok" else ERRORS[kind](i) for i, (kind, _) in enumerate(steps)
        ]
        durations = [duration for _, duration in steps] + [0.0]
        flaky = Flaky(outcomes, durations[:calls])
        raised: BaseException | None = None
        value: object = None
        with anyio.move_on_after(math.inf if deadline is None else deadline) as scope:
            try:
                value = await retry(flaky, policy=policy)
            except (ValueError, Throttled, KeyError, Fatal) as exc:
                raised = exc
        assert len(flaky.starts) == calls
        assert flaky.elapsed() == end
        assert scope.cancelled_caught == (raised is None and outcome == "cancelled")
        if outcome == "succeeded":
            assert raised is None
            assert value == (f"x: ok {calls - 1}" if calls <= len(steps) else "x: ok")
        elif scope.cancelled_caught:
            assert flaky.cancelled == [calls - 1]  # the attempt that ran into the deadline
        else:
            assert raised is outcomes[calls - 1]  # the last error itself
        return outcome, calls

    async def main() -> None:
        expected = ZERO
        for steps, deadline in runs:
            outcome, calls = await one_run(steps, deadline)
            expected = dataclasses.replace(
                expected,
                calls=expected.calls + 1,
                retries=expected.retries + calls - 1,
                **{outcome: getattr(expected, outcome) + 1},
            )
            assert policy.statistics() == expected

    backend_name, options = _virtual_asyncio() if backend == "asyncio" else _virtual_trio()
    assert backend_name == backend
    anyio.run(main, backend=backend, backend_options=options)
