"""SingleFlight: sharing, cancellation, failures, the ttl cache, statistics."""

from __future__ import annotations

import math
import re
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_keyq import SingleFlight, SingleFlightStatistics

from .conftest import _virtual_asyncio, _virtual_trio
from .helpers import assert_cancel_point, assert_schedule_point, echo

pytestmark = pytest.mark.anyio

ZERO = SingleFlightStatistics(in_flight=0, waiting=0, cached=0, calls=0, shared=0, hits=0)


def idle(sf: SingleFlight[Any, Any]) -> None:
    """Nothing in flight, nobody waiting."""
    stats = sf.statistics()
    assert (stats.in_flight, stats.waiting) == (0, 0)


class Gate:
    """An async function that counts its calls and returns only once opened."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = 0
        self.finished = 0

    async def __call__(self, value: object) -> object:
        self.calls.append(value)
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        return value


class TestSharing:
    async def test_concurrent_callers_share_one_call(self) -> None:
        gate = Gate()
        results: list[object] = []
        async with SingleFlight[str, object]() as sf:

            async def caller(arg: object) -> None:
                results.append(await sf.run("k", gate, arg))

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller, 0)
                await gate.started.wait()
                for i in range(1, 5):
                    tg.start_soon(caller, i)
                await anyio.wait_all_tasks_blocked()
                assert sf.statistics() == SingleFlightStatistics(
                    in_flight=1, waiting=5, cached=0, calls=1, shared=4, hits=0
                )
                gate.release.set()
        assert gate.calls == [0]  # the first caller's args
        assert results == [0] * 5
        assert sf.statistics() == SingleFlightStatistics(
            in_flight=0, waiting=0, cached=0, calls=1, shared=4, hits=0
        )

    async def test_different_keys_run_separately(self) -> None:
        gate = Gate()
        async with SingleFlight[int, object]() as sf, anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(sf.run, i, gate, i)
            await anyio.wait_all_tasks_blocked()
            assert sorted(gate.calls) == [0, 1, 2]  # type: ignore[type-var]
            assert sf.statistics().in_flight == 3
            gate.release.set()
        idle(sf)

    async def test_a_later_caller_starts_a_fresh_call(self) -> None:
        calls = 0

        async def count() -> int:
            nonlocal calls
            calls += 1
            await anyio.lowlevel.checkpoint()
            return calls

        async with SingleFlight[str, int]() as sf:
            assert await sf.run("k", count) == 1
            assert await sf.run("k", count) == 2
        assert sf.statistics().calls == 2

    async def test_a_result_of_none_is_shared(self) -> None:
        async with SingleFlight[str, None]() as sf:
            assert await sf.run("k", echo, None) is None


class TestCancellation:
    async def test_first_caller_cancelled_the_call_goes_on(self) -> None:
        gate = Gate()
        got: list[object] = []
        async with SingleFlight[str, object]() as sf, anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def first_caller() -> None:
                with first:
                    await sf.run("k", gate, "first")
                    pytest.fail("not cancelled")  # pragma: no cover

            async def second_caller() -> None:
                got.append(await sf.run("k", gate, "second"))

            tg.start_soon(first_caller)
            await gate.started.wait()
            tg.start_soon(second_caller)
            await anyio.wait_all_tasks_blocked()
            first.cancel()
            await anyio.wait_all_tasks_blocked()
            assert first.cancelled_caught
            assert gate.cancelled == 0
            assert sf.statistics().waiting == 1
            gate.release.set()
        assert got == ["first"]
        assert gate.finished == 1
        idle(sf)

    async def test_all_callers_cancelled_cancels_the_call_and_frees_the_key(self) -> None:
        gate = Gate()
        async with SingleFlight[str, object]() as sf:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sf.run, "k", gate, 1)
                tg.start_soon(sf.run, "k", gate, 2)
                await anyio.wait_all_tasks_blocked()
                assert sf.statistics().waiting == 2
                tg.cancel_scope.cancel()
            assert "k" not in sf._flights
            idle(sf)
            await anyio.wait_all_tasks_blocked()
            assert gate.cancelled == 1
            assert gate.finished == 0
            # The key is free: a new caller starts a fresh call.
            gate2 = Gate()
            gate2.release.set()
            assert await sf.run("k", gate2, 3) == 3
        assert sf.statistics().calls == 2

    async def test_key_is_free_at_once_even_before_the_old_call_ends(self) -> None:
        stubborn_done = anyio.Event()

        async def stubborn() -> str:
            with anyio.CancelScope(shield=True):
                await stubborn_done.wait()
            return "old"

        async with SingleFlight[str, str]() as sf:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sf.run, "k", stubborn)
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            assert sf.statistics().in_flight == 0
            # The old call still runs (shielded); a new caller does not join it.
            assert await sf.run("k", echo, "new") == "new"
            stubborn_done.set()
        # The old call's late result was not kept anywhere.
        assert sf.statistics().calls == 2

    async def test_caller_cancelled_right_after_starting_the_call(self) -> None:
        gate = Gate()
        async with SingleFlight[str, object]() as sf:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sf.run, "k", gate, 1)
                    await anyio.lowlevel.checkpoint()  # the call may or may not start
                    scope.cancel()
            idle(sf)
            await anyio.wait_all_tasks_blocked()
        assert gate.finished == 0
        assert gate.cancelled == len(gate.calls)

    async def test_cancelled_after_the_result_is_ready(self) -> None:
        """A caller cancelled once the call ended leaves the others their result."""
        gate = Gate()
        got: list[object] = []
        async with SingleFlight[str, object]() as sf, anyio.create_task_group() as tg:
            victim = anyio.CancelScope()

            async def cancelled_caller() -> None:
                with victim:
                    await sf.run("k", gate, 1)

            async def other() -> None:
                got.append(await sf.run("k", gate, 2))

            tg.start_soon(cancelled_caller)
            await gate.started.wait()
            tg.start_soon(other)
            await anyio.wait_all_tasks_blocked()
            gate.release.set()
            victim.cancel()  # together with the wake-up
        assert got == [1]
        idle(sf)

    async def test_leaving_the_block_with_an_error_breaks_the_waiters(self) -> None:
        gate = Gate()
        errors: list[BaseException] = []

        async def waiter(sf: SingleFlight[str, object]) -> None:
            try:
                await sf.run("k", gate, 1)
            except anyio.ClosedResourceError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as outer:
            with pytest.raises(ZeroDivisionError):
                async with SingleFlight[str, object]() as sf:
                    outer.start_soon(waiter, sf)
                    await anyio.wait_all_tasks_blocked()
                    1 / 0  # noqa: B018
        assert len(errors) == 1
        assert re.search(r"^the SingleFlight block was left.*for key 'k' ran$", str(errors[0]))
        assert gate.cancelled == 1

    async def test_normal_exit_waits_for_calls_in_flight(self) -> None:
        gate = Gate()
        got: list[object] = []

        async def waiter(sf: SingleFlight[str, object]) -> None:
            got.append(await sf.run("k", gate, 1))

        async with anyio.create_task_group() as outer:
            async with SingleFlight[str, object]() as sf:
                outer.start_soon(waiter, sf)
                await anyio.wait_all_tasks_blocked()
                outer.start_soon(_set_later, gate.release)
        assert got == [1]


async def _set_later(event: anyio.Event) -> None:
    await anyio.wait_all_tasks_blocked()
    event.set()


class TestFailures:
    async def test_the_same_exception_object_for_every_caller(self) -> None:
        release = anyio.Event()
        calls = 0

        async def fail() -> None:
            nonlocal calls
            calls += 1
            await release.wait()
            raise ValueError("bad")

        errors: list[BaseException] = []

        async def caller(sf: SingleFlight[str, None]) -> None:
            try:
                await sf.run("k", fail)
            except ValueError as exc:
                errors.append(exc)

        async with SingleFlight[str, None](ttl=10) as sf:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(caller, sf)
                await anyio.wait_all_tasks_blocked()
                release.set()
            assert len(errors) == 3
            assert errors[0] is errors[1] is errors[2]
            # Not cached: the next caller calls again.
            assert sf.statistics().cached == 0
            with pytest.raises(ValueError, match="^bad$"):
                await sf.run("k", fail)
        assert calls == 2


class TestTtl:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_cached_until_exactly_ttl_after_completion(self) -> None:
        calls: list[float] = []

        async def slow() -> int:
            calls.append(anyio.current_time())
            await anyio.sleep(1)
            return len(calls)

        async with SingleFlight[str, int](ttl=5) as sf:
            start = anyio.current_time()
            assert await sf.run("k", slow) == 1  # completes at start + 1
            await anyio.sleep(4.5)
            assert await sf.run("k", slow) == 1  # start + 5.5: cached
            assert anyio.current_time() == start + 5.5
            assert sf.statistics().cached == 1
            await anyio.sleep(0.5)  # start + 6: exactly ttl after completion
            assert sf.statistics().cached == 0
            assert await sf.run("k", slow) == 2
            assert calls == [start, start + 6]
            assert sf.statistics() == SingleFlightStatistics(
                in_flight=0, waiting=0, cached=1, calls=2, shared=0, hits=1
            )
        assert sf.statistics().cached == 0  # leaving the block drops the cache

    async def test_expired_entries_go_oldest_first(self) -> None:
        async with SingleFlight[str, str](ttl=2) as sf:
            await sf.run("a", echo, "a")
            await anyio.sleep(1)
            await sf.run("b", echo, "b")
            await anyio.sleep(1)  # a expires, b stays
            assert sf.statistics().cached == 1
            assert await sf.run("b", echo, "other") == "b"
            assert await sf.run("a", echo, "fresh") == "fresh"

    async def test_forget(self) -> None:
        async with SingleFlight[str, str](ttl=math.inf) as sf:
            await sf.run("k", echo, "old")
            await anyio.sleep(1000)
            assert await sf.run("k", echo, "new") == "old"
            sf.forget("k")
            sf.forget("k")  # nothing cached: nothing to do
            assert await sf.run("k", echo, "new") == "new"

    async def test_cache_hit_is_a_checkpoint(self) -> None:
        async with SingleFlight[str, str](ttl=1) as sf:
            await sf.run("k", echo, "v")
            await assert_cancel_point(lambda: sf.run("k", echo, "x"))
            assert await assert_schedule_point(lambda: sf.run("k", echo, "x")) == "v"
            assert sf.statistics().hits == 1


class TestCheckpoints:
    async def test_run_is_a_cancel_point(self) -> None:
        async with SingleFlight[str, str]() as sf:
            await assert_cancel_point(lambda: sf.run("k", echo, "v"))
            idle(sf)
            assert sf.statistics().calls == 0

    async def test_run_is_a_schedule_point(self) -> None:
        async with SingleFlight[str, str]() as sf:
            assert await assert_schedule_point(lambda: sf.run("k", echo, "v")) == "v"

    async def test_entering_is_a_checkpoint(self) -> None:
        sf = SingleFlight[str, str]()
        await assert_cancel_point(sf.__aenter__)


class TestMisuse:
    @pytest.mark.parametrize(
        ("ttl", "error", "pattern"),
        [
            (0, ValueError, r"^ttl must be > 0 seconds, got 0$"),
            (-1.5, ValueError, r"^ttl must be > 0 seconds, got -1.5$"),
            (math.nan, ValueError, r"^ttl must be > 0 seconds, got nan$"),
            ("1", TypeError, r"^ttl must be a number of seconds, got '1'$"),
            (True, TypeError, r"^ttl must be a number of seconds, got True$"),
        ],
    )
    def test_bad_ttl(self, ttl: Any, error: type[Exception], pattern: str) -> None:
        with pytest.raises(error, match=pattern):
            SingleFlight(ttl=ttl)

    async def test_bad_fn_and_key(self) -> None:
        async with SingleFlight[Any, Any]() as sf:
            with pytest.raises(TypeError, match=r"^fn must be an async function, got 3$"):
                await sf.run("k", 3)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"pass the function and its arguments"):
                await sf.run("k", echo(1))  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"^key must be hashable, got \[1\]$"):
                await sf.run([1], echo, 1)
            idle(sf)
            assert sf.statistics().calls == 0

    async def test_run_outside_the_block(self) -> None:
        sf = SingleFlight[str, str]()
        with pytest.raises(RuntimeError, match=r"^SingleFlight.run\(\) was called before it"):
            await sf.run("k", echo, "v")
        async with sf:
            pass
        with pytest.raises(RuntimeError, match=r"^SingleFlight.run\(\) was called after it"):
            await sf.run("k", echo, "v")
        with pytest.raises(RuntimeError, match=r"^a SingleFlight instance can be entered only"):
            await sf.__aenter__()

    def test_repr_and_statistics_without_a_loop(self) -> None:
        sf = SingleFlight[str, str](ttl=2)
        assert sf.ttl == 2.0
        assert SingleFlight().ttl is None
        assert sf.statistics() == ZERO
        assert re.fullmatch(
            r"<anyio_keyq.SingleFlight at 0x[0-9a-f]+: not entered, 0 in flight, "
            r"0 waiting, 0 cached, ttl=2.0>",
            repr(sf),
        )

    async def test_repr_states(self) -> None:
        async with SingleFlight[str, str]() as sf:
            assert ": open, " in repr(sf)
        assert ": closed, " in repr(sf)


# -- against a model -------------------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["run", "fail", "forget", "sleep"]), st.sampled_from("ab")),
    max_size=30,
)


async def run_ops(ops: list[tuple[str, str]]) -> None:
    ttl = 1.0
    model: dict[str, tuple[int, float]] = {}  # key -> (result, expiry)
    counter = calls = hits = 0

    async def compute() -> int:
        await anyio.lowlevel.checkpoint()
        return counter

    async def fail() -> int:
        await anyio.lowlevel.checkpoint()
        raise KeyError("no")

    async with SingleFlight[str, int](ttl=ttl) as sf:
        for op, key in ops:
            now = anyio.current_time()
            entry = model.get(key)
            cached = entry[0] if entry is not None and entry[1] > now else None
            if op in ("run", "fail") and cached is not None:
                hits += 1
                assert await sf.run(key, compute if op == "run" else fail) == cached
            elif op == "run":
                counter += 1
                calls += 1
                assert await sf.run(key, compute) == counter
                model[key] = (counter, anyio.current_time() + ttl)
            elif op == "fail":
                calls += 1
                model.pop(key, None)
                with pytest.raises(KeyError):
                    await sf.run(key, fail)
            elif op == "forget":
                sf.forget(key)
                model.pop(key, None)
            else:
                await anyio.sleep(0.5)
            now = anyio.current_time()
            live = sum(1 for _, expiry in model.values() if expiry > now)
            assert sf.statistics() == SingleFlightStatistics(
                in_flight=0, waiting=0, cached=live, calls=calls, shared=0, hits=hits
            )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_sequential_calls_match_a_model(backend: str, ops: list[tuple[str, str]]) -> None:
    """One call at a time, on a fresh virtual clock: results and counters follow a dict."""
    name, options = _virtual_asyncio() if backend == "asyncio" else _virtual_trio()
    anyio.run(run_ops, ops, backend=name, backend_options=options)
