"""KeyedLanes with retries, a dead-letter, halted lanes and breakers per key.

On virtual clocks: every retry, trial and refusal happens at an exact instant.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from hypothesis import given, settings
from hypothesis import strategies as st

from anyio_keyq import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    DeadLetter,
    Job,
    JobCancelled,
    JobStatus,
    KeyedLanes,
    LaneHalted,
    Retry,
)

from .conftest import BACKENDS
from .conftest import virtual_backend as anyio_backend  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

#: Doubling delays from 1/8 s, with no jitter: retries at exact binary fractions.
EXACT = Backoff(base=0.125, factor=2, cap=4)


def policy(attempts: float = 3, **kwargs: Any) -> Retry:
    return Retry(attempts=attempts, backoff=EXACT, jitter="none", **kwargs)


class Flaky(Exception):
    """A failure of the fake downstream, with an optional retry-after hint."""

    def __init__(self, tag: object, retry_after: float | None = None) -> None:
        super().__init__(f"{tag} failed")
        self.retry_after = retry_after


class Downstream:
    """A fake service: each tag fails its first ``failures[tag]`` calls.

    It records every call as (tag, instant relative to creation), in call order.
    """

    def __init__(
        self,
        failures: dict[Any, int] | None = None,
        seconds: float = 0.0,
        durations: dict[Any, float] | None = None,
    ) -> None:
        self.failures = defaultdict(int, failures or {})
        self.durations = defaultdict(lambda: seconds, durations or {})
        self.origin = anyio.current_time()
        self.calls: list[tuple[Any, float]] = []
        self.hint: float | None = None

    def now(self) -> float:
        return anyio.current_time() - self.origin

    async def __call__(self, tag: Any) -> Any:
        self.calls.append((tag, self.now()))
        await anyio.sleep(self.durations[tag])
        if self.failures[tag] > 0:
            self.failures[tag] -= 1
            raise Flaky(tag, self.hint)
        return tag

    def starts(self, tag: Any) -> list[float]:
        return [at for t, at in self.calls if t == tag]

    def order(self) -> list[Any]:
        return [t for t, _ in self.calls]


class TestRetry:
    async def test_a_retried_job_keeps_the_head_of_its_lane(self) -> None:
        down = Downstream({"a1": 2})
        async with KeyedLanes[str](retry=policy()) as lanes:
            jobs = [lanes.submit_nowait("a", down, tag) for tag in ("a1", "a2", "a3")]
        assert [job.result() for job in jobs] == ["a1", "a2", "a3"]
        assert down.order() == ["a1", "a1", "a1", "a2", "a3"]
        assert down.starts("a1") == [0.0, 0.125, 0.375]  # 1/8, then 1/4 later
        assert down.starts("a2") == [0.375]
        assert [job.attempts for job in jobs] == [3, 1, 1]

    async def test_a_lane_waiting_to_retry_holds_no_permit(self) -> None:
        down = Downstream({"a": 1})
        async with KeyedLanes[str](limit=1, retry=policy()) as lanes:
            a = lanes.submit_nowait("a", down, "a")
            b = lanes.submit_nowait("b", down, "b")
        assert (a.result(), b.result()) == ("a", "b")
        assert down.calls == [("a", 0.0), ("b", 0.0), ("a", 0.125)]

    async def test_exhausted_retries_raise_the_last_error(self) -> None:
        down = Downstream({"a": 5})
        async with KeyedLanes[str](retry=policy(attempts=3)) as lanes:
            with pytest.raises(Flaky, match="a failed"):
                await lanes.run("a", down, "a")
            stats = lanes.statistics()
        assert down.starts("a") == [0.0, 0.125, 0.375]
        assert (stats.retried, stats.failed, stats.completed) == (2, 1, 0)

    async def test_the_job_policy_replaces_the_lanes_policy(self) -> None:
        down = Downstream({"a": 3, "b": 3})
        async with KeyedLanes[str](retry=policy(attempts=2)) as lanes:
            a = lanes.submit_nowait("a", down, "a", retry=policy(attempts=4))
            b = lanes.submit_nowait("b", down, "b")
        assert a.result() == "a"
        assert a.attempts == 4
        with pytest.raises(Flaky):
            b.result()
        assert b.attempts == 2

    async def test_no_policy_no_retry(self) -> None:
        down = Downstream({"a": 1})
        async with KeyedLanes[str]() as lanes:
            job = lanes.submit_nowait("a", down, "a")
        with pytest.raises(Flaky):
            job.result()
        assert job.attempts == 1
        assert lanes.statistics().retried == 0

    async def test_a_failure_the_policy_does_not_retry(self) -> None:
        down = Downstream({"a": 1})
        only_timeouts = policy(retry_on=TimeoutError)
        async with KeyedLanes[str](retry=only_timeouts) as lanes:
            job = lanes.submit_nowait("a", down, "a")
        with pytest.raises(Flaky):
            job.result()
        assert down.starts("a") == [0.0]

    async def test_a_retry_after_hint_sets_the_delay(self) -> None:
        down = Downstream({"a": 2})
        down.hint = 3.0
        async with KeyedLanes[str](retry=policy()) as lanes:
            await lanes.run("a", down, "a")
        assert down.starts("a") == [0.0, 3.0, 6.0]

    async def test_the_time_limit_is_per_attempt(self) -> None:
        down = Downstream(seconds=math.inf)  # a downstream that hangs
        async with KeyedLanes[str](retry=policy(), timeout=1.0) as lanes:
            with pytest.raises(TimeoutError, match="time limit"):
                await lanes.run("a", down, "a")
            stats = lanes.statistics()
        assert down.starts("a") == [0.0, 1.125, 2.375]
        assert (stats.retried, stats.timed_out, stats.failed) == (2, 1, 0)

    async def test_a_cancelled_job_is_never_retried(self) -> None:
        down = Downstream(seconds=math.inf)
        async with KeyedLanes[str](retry=policy()) as lanes:
            job = lanes.submit_nowait("a", down, "a")
            await anyio.sleep(1)
            job.cancel()
        assert job.status is JobStatus.CANCELLED
        assert down.starts("a") == [0.0]
        assert lanes.statistics().retried == 0

    async def test_cancelling_a_job_that_waits_to_retry(self) -> None:
        down = Downstream({"a1": 5})
        async with KeyedLanes[str](retry=policy(attempts=5)) as lanes:
            a1 = lanes.submit_nowait("a", down, "a1")
            a2 = lanes.submit_nowait("a", down, "a2")
            await anyio.sleep(0.0625)  # a1 failed once and waits until 1/8
            assert a1.status is JobStatus.QUEUED
            assert a1.attempts == 1
            a1.cancel()
        assert a1.status is JobStatus.CANCELLED
        assert a2.result() == "a2"
        assert down.calls == [("a1", 0.0), ("a2", 0.0625)]

    async def test_a_caller_cancelled_while_its_job_waits_to_retry(self) -> None:
        down = Downstream({"a": 5})
        async with KeyedLanes[str](retry=policy(attempts=5)) as lanes:
            with anyio.move_on_after(0.25):
                await lanes.run("a", down, "a")
            stats = lanes.statistics()
        assert down.starts("a") == [0.0, 0.125]
        assert (stats.cancelled, stats.retried) == (1, 1)  # the second retry never began

    async def test_cancelling_the_host_during_a_retry_wait(self) -> None:
        down = Downstream({"a": 5})
        async with anyio.create_task_group() as tg:
            lanes = KeyedLanes[str](retry=policy(attempts=5), task_group=tg)
            job = lanes.submit_nowait("a", down, "a")
            await anyio.sleep(0.0625)
            tg.cancel_scope.cancel()
        assert job.status is JobStatus.CANCELLED
        assert down.starts("a") == [0.0]

    async def test_with_several_jobs_per_key_the_retry_starts_first(self) -> None:
        down = Downstream({"a1": 1}, seconds=0.25, durations={"a2": 0.5})
        async with KeyedLanes[str](per_key=2, retry=policy()) as lanes:
            for tag in ("a1", "a2", "a3", "a4"):
                lanes.submit_nowait("a", down, tag)
        # a1 fails at 1/4 and waits until 3/8 at the head of the lane: a3 may not take
        # the free place before it.
        assert down.calls == [
            ("a1", 0.0),
            ("a2", 0.0),
            ("a1", 0.375),
            ("a3", 0.5),
            ("a4", 0.625),
        ]

    async def test_a_waiter_that_lent_its_permit_still_gets_the_retried_job(self) -> None:
        down = Downstream({"b": 1})

        async def outer() -> str:
            inner = lanes.submit_nowait("b", down, "b")
            return await inner  # lends the permit of "a" to "b"

        async with KeyedLanes[str](limit=1, retry=policy()) as lanes:
            assert await lanes.run("a", outer) == "b"
        assert down.starts("b") == [0.0, 0.125]

    async def test_the_policy_counts_the_jobs_of_the_lanes(self) -> None:
        down = Downstream({"once": 1, "always": 9, "z": 1}, durations={"hangs": math.inf})
        shared = policy(attempts=2)
        async with KeyedLanes[str](retry=shared) as lanes:
            jobs = [lanes.submit_nowait(tag, down, tag) for tag in ("ok", "once", "always")]
            hangs = lanes.submit_nowait("hangs", down, "hangs")
            # Handed to a worker, then cancelled before its function is called: no run.
            unstarted = lanes.submit_nowait("unstarted", down, "unstarted")
            unstarted.cancel()
            lanes.submit_nowait("own", down, "own", retry=policy())  # counted by its own
            await anyio.sleep(1)
            stats = shared.statistics()
            assert (stats.calls, stats.running, stats.retries) == (4, 1, 2)  # hangs runs
            hangs.cancel()
        assert [type(job.exception()) for job in jobs] == [type(None), type(None), Flaky]
        assert unstarted.attempts == 0
        stats = shared.statistics()
        assert (stats.calls, stats.running, stats.retries) == (4, 0, 2)
        assert (stats.succeeded, stats.exhausted, stats.cancelled) == (2, 1, 1)

        picky = policy(retry_on=OSError)
        async with KeyedLanes[str](retry=picky) as lanes:
            with pytest.raises(Flaky):
                await lanes.run("z", down, "z")
        assert picky.statistics().not_retryable == 1

    async def test_a_job_that_fails_while_being_cancelled_is_not_retried(self) -> None:
        async def stubborn() -> None:
            try:
                await anyio.sleep(math.inf)
            except anyio.get_cancelled_exc_class():
                raise Flaky("cleanup") from None

        shared = policy()
        async with KeyedLanes[str](retry=shared) as lanes:
            job = lanes.submit_nowait("a", stubborn)
            await anyio.sleep(1)
            job.cancel()
            await job.wait()
        with pytest.raises(Flaky):  # its outcome is kept, and not retried
            job.result()
        assert job.attempts == 1
        assert shared.statistics().cancelled == 1

    async def test_retry_must_be_a_policy(self) -> None:
        with pytest.raises(TypeError, match="retry must be a Retry policy or None, got 3"):
            KeyedLanes(retry=3)  # type: ignore[arg-type]
        async with KeyedLanes[str]() as lanes:
            with pytest.raises(TypeError, match="retry must be a Retry policy"):
                lanes.submit_nowait("a", Downstream(), "a", retry="no")  # type: ignore[arg-type]


class TestDeadLetter:
    async def test_a_callback_gets_each_job_that_failed_for_good(self) -> None:
        down = Downstream({"a1": 9, "b1": 9})
        letters: list[DeadLetter[str]] = []
        async with KeyedLanes[str](retry=policy(attempts=2), dead_letter=letters.append) as lanes:
            a1 = lanes.submit_nowait("a", down, "a1")
            a2 = lanes.submit_nowait("a", down, "a2")
            lanes.submit_nowait("b", down, "b1")
        assert a2.result() == "a2"  # the default policy goes on
        letters.sort(key=lambda letter: letter.key)
        assert [(d.key, d.args, d.attempts) for d in letters] == [
            ("a", ("a1",), 2),
            ("b", ("b1",), 2),
        ]
        first = letters[0]
        assert first.fn is down
        assert isinstance(first.exception, Flaky)
        assert first.job is a1
        assert first.exception is a1.exception()
        assert "failed after 2 attempt(s)" in first.reason
        assert lanes.statistics().dead_lettered == 2

    async def test_an_async_callback(self) -> None:
        down = Downstream({"a": 1})
        seen: list[float] = []

        async def slow_archive(letter: DeadLetter[str]) -> None:
            await anyio.sleep(1)
            seen.append(down.now())

        async with KeyedLanes[str](dead_letter=slow_archive) as lanes:
            lanes.submit_nowait("a", down, "a")
            lanes.submit_nowait("a", down, "a")  # succeeds
        assert seen == [1.0]

    async def test_a_stream_gets_every_letter_and_is_closed_with_the_lanes(self) -> None:
        down = Downstream(dict.fromkeys(range(5), 1))
        send, receive = anyio.create_memory_object_stream[DeadLetter[int]](0)
        received: list[int] = []

        async def archive() -> None:
            async with receive:
                async for letter in receive:  # ends when the lanes close the stream
                    await anyio.sleep(1)  # a slow consumer: nothing may be lost
                    received.append(letter.key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(archive)
            async with KeyedLanes[int](dead_letter=send) as lanes:
                for i in range(5):
                    lanes.submit_nowait(i, down, i)
        assert sorted(received) == [0, 1, 2, 3, 4]  # they fail at one instant

    async def test_successes_and_cancellations_are_not_dead_letters(self) -> None:
        letters: list[DeadLetter[str]] = []
        async with KeyedLanes[str](dead_letter=letters.append) as lanes:
            lanes.submit_nowait("a", Downstream(), "ok")
            lanes.submit_nowait("b", Downstream(seconds=math.inf), "hangs").cancel()
            job = lanes.submit_nowait("c", Downstream(seconds=math.inf), "hangs")
            await anyio.sleep(1)
            job.cancel()
        assert letters == []

    async def test_a_failing_callback_fails_the_lanes(self) -> None:
        def broken(letter: DeadLetter[str]) -> None:
            raise RuntimeError("archive is down")

        # It fails the lanes' task group, like any task of it that raises.
        with pytest.raises(ExceptionGroup) as failed:
            async with KeyedLanes[str](dead_letter=broken) as lanes:
                lanes.submit_nowait("a", Downstream({"a": 1}), "a")
        assert [str(exc) for exc in failed.value.exceptions] == ["archive is down"]

    async def test_a_cancelled_host_still_hands_over_the_letters(self) -> None:
        # No consumer reads the stream: the letters that fit in its buffer are sent,
        # and it is closed; an async function gets every letter, shielded.
        send, receive = anyio.create_memory_object_stream[DeadLetter[int]](2)
        seen: list[int] = []

        async def slow_archive(letter: DeadLetter[int]) -> None:
            await anyio.sleep(1)
            seen.append(letter.key)

        fails = dict.fromkeys(range(4), 1)
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tg:
                to_stream = KeyedLanes[int](dead_letter=send, task_group=tg)
                to_function = KeyedLanes[int](dead_letter=slow_archive, task_group=tg)
                for i in range(4):
                    to_stream.submit_nowait(i, Downstream(fails), i)
                    to_function.submit_nowait(i, Downstream(fails), i)
        # Hosted lanes leave the stream open if their host is cancelled (aclose()
        # closes it): the letters that fitted are in its buffer.
        async with send, receive:
            assert receive.statistics().current_buffer_used == 2
        # The letter being archived when the cancellation came is the function's own
        # business; the three others were waiting, and are delivered.
        assert len(seen) == 3

    async def test_dead_letter_must_be_a_stream_or_a_callable(self) -> None:
        with pytest.raises(TypeError, match="dead_letter must be an object send stream"):
            KeyedLanes(dead_letter="queue")  # type: ignore[arg-type]


class TestHalt:
    async def test_a_failure_halts_its_lane_only(self) -> None:
        down = Downstream({"a1": 1})
        letters: list[DeadLetter[str]] = []
        async with KeyedLanes[str](on_failure="halt", dead_letter=letters.append) as lanes:
            a = [lanes.submit_nowait("a", down, tag) for tag in ("a1", "a2", "a3")]
            b = lanes.submit_nowait("b", down, "b1")
            await lanes.wait_idle()
            assert set(lanes.halted) == {"a"}
            assert isinstance(lanes.halted["a"], Flaky)
            with pytest.raises(LaneHalted, match="resume") as refused:
                lanes.submit_nowait("a", down, "a4")
            assert refused.value.key == "a"
            assert refused.value.cause is lanes.halted["a"]
            assert lanes.statistics().halted == 1
            lanes.resume("a")
            assert lanes.halted == {}
            again = await lanes.run("a", down, "a5")
        assert again == "a5"
        assert b.result() == "b1"
        assert [t for t in down.order() if t[0] == "a"] == ["a1", "a5"]
        for job in a[1:]:
            with pytest.raises(LaneHalted) as halted:
                job.result()
            assert halted.value.__cause__ is a[0].exception()
            assert job.attempts == 0
        assert [(d.args, d.attempts) for d in letters] == [(("a1",), 1), (("a2",), 0), (("a3",), 0)]
        assert "halted" in letters[1].reason
        assert lanes.statistics().failed == 3

    async def test_a_lane_halts_only_once_its_retries_are_exhausted(self) -> None:
        down = Downstream({"a1": 1, "a2": 9})
        async with KeyedLanes[str](on_failure="halt", retry=policy(attempts=2)) as lanes:
            jobs = [lanes.submit_nowait("a", down, t) for t in ("a1", "a2", "a3")]
        assert jobs[0].result() == "a1"
        with pytest.raises(Flaky):
            jobs[1].result()
        with pytest.raises(LaneHalted):
            jobs[2].result()

    async def test_callers_waiting_for_room_are_refused(self) -> None:
        down = Downstream({"a1": 1}, seconds=1)
        async with KeyedLanes[str](on_failure="halt", max_pending=1) as lanes:
            lanes.submit_nowait("a", down, "a1")  # runs
            lanes.submit_nowait("a", down, "a2")  # queued: the lane is full
            with pytest.raises(LaneHalted):
                await lanes.submit("a", down, "a3")  # waits for room, then refused
            with pytest.raises(LaneHalted):
                await lanes.run("a", down, "a4")

    async def test_run_raises_lane_halted_for_a_queued_job(self) -> None:
        down = Downstream({"a1": 1}, seconds=1)
        async with KeyedLanes[str](on_failure="halt") as lanes:
            lanes.submit_nowait("a", down, "a1")
            with pytest.raises(LaneHalted):
                await lanes.run("a", down, "a2")

    async def test_resuming_a_key_that_is_not_halted_does_nothing(self) -> None:
        async with KeyedLanes[str](on_failure="halt") as lanes:
            lanes.resume("a")
            assert await lanes.run("a", Downstream(), "a") == "a"

    async def test_on_failure_must_be_continue_or_halt(self) -> None:
        with pytest.raises(ValueError, match="on_failure must be 'continue' or 'halt', got 'stop'"):
            KeyedLanes(on_failure="stop")  # type: ignore[arg-type]


class TestBreakerPerKey:
    async def test_a_dead_key_fails_fast_and_others_go_on(self) -> None:
        down = Downstream({"a1": 1, "a2": 1})
        breaker = CircuitBreaker(failure_threshold=2, recovery_time=10)
        async with KeyedLanes[str](breaker=breaker) as lanes:
            a = [lanes.submit_nowait("a", down, f"a{i}") for i in range(1, 5)]
            b = lanes.submit_nowait("b", down, "b1")
            await lanes.wait_idle()
            assert [t for t in down.order() if t[0] == "a"] == ["a1", "a2"]  # a3, a4: never
            for job in a[2:]:
                with pytest.raises(CircuitOpen) as refused:
                    job.result()
                assert refused.value.retry_after == 10
            assert b.result() == "b1"
            await anyio.sleep(10)
            assert await lanes.run("a", down, "a5") == "a5"  # the trial closes it
            assert await lanes.run("a", down, "a6") == "a6"

    async def test_with_a_retry_a_refused_job_waits_for_the_next_trial(self) -> None:
        down = Downstream({"a1": 2})
        breaker = CircuitBreaker(failure_threshold=1, recovery_time=5)
        async with KeyedLanes[str](breaker=breaker, retry=policy(attempts=5)) as lanes:
            assert await lanes.run("a", down, "a1") == "a1"
        # Failed at 0 (opens), refused at 1/8 (retry at the trial, 5), trial fails at 5
        # (opens again), refused at 5 + 1/2, trial at 10 succeeds.
        assert down.starts("a1") == [0.0, 5.0, 10.0]

    async def test_a_timeout_counts_as_a_failure_and_a_cancellation_does_not(self) -> None:
        hangs = Downstream(seconds=math.inf)
        breaker = CircuitBreaker(failure_threshold=1, recovery_time=5)
        async with KeyedLanes[str](breaker=breaker) as lanes:
            job = lanes.submit_nowait("a", hangs, "cancelled")
            await anyio.sleep(1)
            job.cancel()
            await lanes.wait_idle()
            with pytest.raises(JobCancelled):
                job.result()
            with pytest.raises(TimeoutError):
                await lanes.run("a", hangs, "times out", timeout=1)
            with pytest.raises(CircuitOpen):
                await lanes.run("a", hangs, "refused")
        assert hangs.order() == ["cancelled", "times out"]

    async def test_an_idle_key_keeps_its_open_breaker_for_a_recovery_time(self) -> None:
        down = Downstream({"a": 1})
        breaker = CircuitBreaker(failure_threshold=1, recovery_time=8)
        async with KeyedLanes[str](breaker=breaker) as lanes:
            with pytest.raises(Flaky):
                await lanes.run("a", down, "a")
            assert "a" in lanes
            await anyio.sleep(4)
            with pytest.raises(CircuitOpen):
                await lanes.run("a", down, "a")
            await anyio.sleep(8.5)  # 8 after the last job, at 4
            assert "a" not in lanes
            assert await lanes.run("a", down, "a") == "a"

    async def test_a_breaker_at_rest_is_dropped_with_its_lane(self) -> None:
        async with KeyedLanes[str](breaker=CircuitBreaker()) as lanes:
            await lanes.run("a", Downstream(), "a")
            assert "a" not in lanes

    async def test_a_failure_on_predicate_that_raises_fails_the_job(self) -> None:
        def judge(exc: Exception) -> bool:
            raise LookupError("cannot judge")

        async with KeyedLanes[str](breaker=CircuitBreaker(failure_on=judge)) as lanes:
            with pytest.raises(LookupError, match="cannot judge"):
                await lanes.run("a", Downstream({"a": 1}), "a")
            assert await lanes.run("a", Downstream(), "a") == "a"

    async def test_breaker_must_be_a_circuit_breaker(self) -> None:
        with pytest.raises(TypeError, match="breaker must be a CircuitBreaker or None, got 5"):
            KeyedLanes(breaker=5)  # type: ignore[arg-type]


class TestAgainstAModel:
    """Random failures, policies and limits against a plain sequential model."""

    @settings(max_examples=40, deadline=None)
    @given(
        plan=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=12),
        attempts=st.integers(1, 3),
        limit=st.integers(1, 3),
        halt=st.booleans(),
    )
    async def test_outcomes_orders_and_dead_letters(
        self, plan: list[tuple[int, int]], attempts: int, limit: int, halt: bool
    ) -> None:
        # plan: per job, its key and how many of its calls fail.
        failures = {i: fails for i, (_, fails) in enumerate(plan)}
        down = Downstream(failures, seconds=0.0625)
        letters: list[DeadLetter[int]] = []
        async with KeyedLanes[int](
            limit=limit,
            retry=policy(attempts),
            dead_letter=letters.append,
            on_failure="halt" if halt else "continue",
        ) as lanes:
            jobs = [lanes.submit_nowait(key, down, i) for i, (key, _) in enumerate(plan)]
        stats = lanes.statistics()

        # The model: each key's jobs one after another, each called until it succeeds
        # or runs out of attempts; with halt, a job that failed for good stops the key.
        calls: dict[int, list[int]] = defaultdict(list)
        outcomes: list[str] = []
        expected_letters: list[tuple[int, int]] = []
        halted: set[int] = set()
        for i, (key, fails) in enumerate(plan):
            if key in halted:
                outcomes.append("halted")
                expected_letters.append((i, 0))
                continue
            made = min(fails + 1, attempts)
            calls[key] += [i] * made
            if fails < attempts:
                outcomes.append("ok")
            else:
                outcomes.append("failed")
                expected_letters.append((i, made))
                if halt:
                    halted.add(key)

        for key in calls:
            assert [t for t in down.order() if plan[t][0] == key] == calls[key]
        got = []
        for job in jobs:
            exc = job.exception()
            got.append(
                "ok" if exc is None else "halted" if isinstance(exc, LaneHalted) else "failed"
            )
        assert got == outcomes
        assert [job.attempts for job in jobs] == [
            0 if outcome == "halted" else min(plan[i][1] + 1, attempts)
            for i, outcome in enumerate(outcomes)
        ]
        assert sorted((d.args[0], d.attempts) for d in letters) == sorted(expected_letters)
        assert stats.retried == sum(job.attempts - 1 for job in jobs if job.attempts)
        assert stats.submitted == stats.completed + stats.failed + stats.timed_out
        assert stats.halted == len(halted)


class TestFaultInjection:
    """Cancel everything at each instant of a run full of retries, trips and letters."""

    @pytest.mark.parametrize("sixteenths", range(0, 40, 3))
    async def test_cancelled_at_any_instant(self, sixteenths: int) -> None:
        down = Downstream({("a", 0): 2, ("b", 0): 9, ("c", 1): 1}, seconds=0.125)
        hangs = Downstream(seconds=math.inf)
        letters: list[DeadLetter[str]] = []
        jobs = []
        lanes = KeyedLanes[str](
            limit=2,
            timeout=0.5,
            retry=policy(attempts=3),
            breaker=CircuitBreaker(failure_threshold=2, recovery_time=0.25),
            dead_letter=letters.append,
        )
        with anyio.move_on_after(sixteenths / 16):
            async with lanes:
                for i in range(3):
                    for key in "abc":
                        jobs.append(lanes.submit_nowait(key, down, (key, i)))
                jobs.append(lanes.submit_nowait("d", hangs, ("d", 0)))
        stats = lanes.statistics()
        # Every handle settled, once; every job that failed for good was dead-lettered.
        assert all(job.done() for job in jobs)
        failed = [job for job in jobs if job.status is JobStatus.FAILED]
        assert sorted(id(d.job) for d in letters) == sorted(id(job) for job in failed)
        assert stats.queued == stats.running == 0
        assert stats.submitted == (
            stats.completed + stats.failed + stats.timed_out + stats.cancelled
        )
        # Per key, the calls of a job are together and in submission order.
        for key in "abc":
            tags = [tag for tag in down.order() if tag[0] == key]
            assert tags == sorted(tags, key=lambda tag: tag[1])


class TestReviewedCorners:
    """Corners found in review: each failed before its fix."""

    async def test_a_retry_on_predicate_that_raises_fails_the_job(self) -> None:
        def broken(exc: Exception) -> bool:
            raise LookupError("predicate broke")

        judged = policy(retry_on=broken)
        async with KeyedLanes[str](retry=judged) as lanes:
            with pytest.raises(LookupError, match="predicate broke"):
                await lanes.run("a", Downstream({"a": 1}), "a")
            assert await lanes.run("a", Downstream(), "a") == "a"  # the lanes go on
        assert judged.statistics().not_retryable == 1

    async def test_retries_of_one_key_keep_their_order_and_their_delays(self) -> None:
        down = Downstream({"a1": 1, "a2": 1}, durations={"a2": 0.0625})
        async with KeyedLanes[str](per_key=2, retry=policy()) as lanes:
            lanes.submit_nowait("a", down, "a1")
            lanes.submit_nowait("a", down, "a2")
        # a1 fails at 0, due at 1/8; a2 fails at 1/16, due at 3/16: a1 goes first, and
        # on time; a2 waits behind it, then for its own delay.
        assert down.calls[2:] == [("a1", 0.125), ("a2", 0.1875)]

    async def test_a_job_waiting_to_retry_when_its_lane_halts(self) -> None:
        # per_key=2: a2 fails and waits to retry, then a1 fails for good and halts the
        # lane; a1 has a priority, so ready lanes are kept in a heap.
        down = Downstream({"a1": 1, "a2": 9}, durations={"a1": 0.0625})
        shared = policy()
        async with KeyedLanes[str](
            per_key=2, idle_timeout=1, on_failure="halt", retry=shared
        ) as lanes:
            a1 = lanes.submit_nowait("a", down, "a1", retry=policy(attempts=1), priority=1)
            a2 = lanes.submit_nowait("a", down, "a2")
            await anyio.sleep(0.125)
            assert set(lanes.halted) == {"a"}
            with pytest.raises(LaneHalted):
                a2.result()
            assert a2.attempts == 1
            assert shared.statistics().running == 0
            lanes.resume("a")
            assert await lanes.run("a", down, "a3") == "a3"
        with pytest.raises(Flaky):
            a1.result()
        assert down.starts("a3") == [0.125]  # not held back by a2's old retry instant

    async def test_a_running_job_of_a_halted_key_is_not_retried(self) -> None:
        down = Downstream({"a1": 1, "a2": 9}, durations={"a1": 0.0625, "a2": 0.125})
        async with KeyedLanes[str](per_key=2, on_failure="halt", retry=policy()) as lanes:
            lanes.submit_nowait("a", down, "a1", retry=policy(attempts=1))
            a2 = lanes.submit_nowait("a", down, "a2")
        with pytest.raises(Flaky):
            a2.result()
        assert down.order() == ["a1", "a2"]

    async def test_letters_of_jobs_that_fail_while_the_lanes_exit_on_an_error(self) -> None:
        send, receive = anyio.create_memory_object_stream[DeadLetter[str]](10)

        async def fails_in_cleanup() -> None:
            try:
                await anyio.sleep(math.inf)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(1)
                raise Flaky("cleanup")  # a failure while cancelled

        with pytest.raises(KeyError):
            async with KeyedLanes[str](dead_letter=send) as lanes:
                lanes.submit_nowait("a", fails_in_cleanup)
                await anyio.sleep(1)
                raise KeyError("the body fails")
        async with receive:
            assert [letter.key async for letter in receive] == ["a"]  # then closed

    async def test_wait_idle_waits_for_jobs_a_dead_letter_function_submits(self) -> None:
        down = Downstream({"a": 1})

        def again(letter: DeadLetter[str]) -> None:
            lanes.submit_nowait(letter.key, down, "again")

        async with KeyedLanes[str](dead_letter=again) as lanes:
            lanes.submit_nowait("a", down, "a")
            await lanes.wait_idle()
            stats = lanes.statistics()
            assert (stats.queued, stats.running, stats.completed) == (0, 0, 1)

    async def test_a_retry_counts_when_it_starts(self) -> None:
        shared = policy()
        async with KeyedLanes[str](retry=shared) as lanes:
            job = lanes.submit_nowait("a", Downstream({"a": 5}), "a")
            await anyio.sleep(0.0625)
            stats = shared.statistics()
            assert (stats.calls, stats.running, stats.retries) == (1, 1, 0)
            job.cancel()
        stats = shared.statistics()
        assert (stats.running, stats.retries, stats.cancelled) == (0, 0, 1)
        assert lanes.statistics().retried == 0

    async def test_a_room_waiter_refused_by_a_halt_and_cancelled_at_once(self) -> None:
        # The halt refuses the caller waiting for room, and the caller is cancelled
        # before it runs again. A native asyncio cancellation reaches it in the wait,
        # after the halt emptied the line it waited in: that raised ValueError. (An
        # anyio or trio cancellation comes too late to interrupt the finished wait.)
        trigger, release = anyio.Event(), anyio.Event()
        cancel: list[Callable[[], object]] = []
        outcome: list[str] = []
        native = sniffio.current_async_library() == "asyncio"

        async def failing() -> None:
            await trigger.wait()
            release.set()  # wakes the canceller before the halt wakes the caller
            raise LookupError("for good")

        async with KeyedLanes[str](on_failure="halt", max_pending=1) as lanes:
            failed = lanes.submit_nowait("a", failing)
            lanes.submit_nowait("a", anyio.lowlevel.checkpoint)  # the lane is full

            async def caller() -> None:
                with anyio.CancelScope() as scope:
                    if native:
                        task = asyncio.current_task()
                        assert task is not None
                        cancel.append(task.cancel)
                    else:
                        cancel.append(scope.cancel)
                    try:
                        await lanes.submit("a", anyio.lowlevel.checkpoint)
                    except LaneHalted:
                        outcome.append("halted")
                        return
                    except asyncio.CancelledError:
                        if not native:
                            raise
                        outcome.append("cancelled")
                        asyncio.current_task().uncancel()  # type: ignore[union-attr]
                        return
                    outcome.append("submitted")
                outcome.append("cancelled")

            async def canceller() -> None:
                await release.wait()
                cancel[0]()

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                tg.start_soon(canceller)
                await anyio.wait_all_tasks_blocked()
                assert lanes.statistics().waiting_for_room == 1
                trigger.set()
            assert outcome in (["cancelled"], ["halted"])
            assert lanes.statistics().waiting_for_room == 0
            assert "a" in lanes.halted
            assert isinstance(failed.exception(), LookupError)


class TestOnRealClocks:
    @pytest.fixture(params=BACKENDS)
    def anyio_backend(self, request: pytest.FixtureRequest) -> Any:
        return request.param

    async def test_cancelling_a_retry_as_it_is_handed_over_spares_other_jobs(self) -> None:
        # J fails once; as its retry is handed to a worker, it is cancelled: that must
        # not cancel the scope of J's last attempt, which another job now runs in.
        log: list[str] = []
        others: list[Job[str]] = []

        async def innocent() -> str:
            log.append("K")
            await anyio.sleep(0.05)
            return "K"

        async def flaky() -> str:
            if "J1" not in log:
                log.append("J1")
                others.append(lanes.submit_nowait("b", innocent, retry=Retry(attempts=1)))
                raise Flaky("J")
            return "J"

        with anyio.fail_after(10):
            async with KeyedLanes[str](
                limit=2, retry=Retry(attempts=3, backoff=Backoff(base=0.01), jitter="none")
            ) as lanes:
                job = lanes.submit_nowait("a", flaky)
                lanes.submit_nowait("c", anyio.sleep, 0.005)
                # Catch it handed over but not begun, when the schedule allows.
                while not job.done() and not (
                    job.status is JobStatus.RUNNING and job.attempts == 2
                ):
                    await anyio.lowlevel.checkpoint()
                job.cancel()
        assert others[0].result() == "K"
        assert lanes.statistics().timed_out == 0
