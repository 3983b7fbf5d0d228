"""hedge: backups at exact instants, first success wins, failures, cancellation, input."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyio_keyq import hedge

from .helpers import assert_cancel_point, assert_schedule_point, boom, echo

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

pytestmark = pytest.mark.anyio

# Durations are binary fractions: async-solipsism's clock counts microseconds, and an
# instant like 0.2 is not a whole number of them in floating point.
CLEANUP = 2.0**-6


class Replica:
    """A fake service: call *i* sleeps ``durations[i]``, then returns or raises.

    It records when each call starts (relative to *t0*), which calls were cancelled,
    and which finished their (shielded, time-consuming) cleanup.
    """

    def __init__(self, durations: Sequence[float], ok: Sequence[bool] | None = None) -> None:
        self.durations = durations
        self.ok = ok if ok is not None else [True] * len(durations)
        self.t0 = anyio.current_time()
        self.starts: list[float] = []
        self.cancelled: list[int] = []
        self.cleaned_up: list[int] = []

    async def __call__(self, tag: str) -> str:
        index = len(self.starts)
        self.starts.append(anyio.current_time() - self.t0)
        try:
            await anyio.sleep(self.durations[index])
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(index)
            with anyio.CancelScope(shield=True):
                await anyio.sleep(CLEANUP)  # cleanup that takes time
            self.cleaned_up.append(index)
            raise
        if not self.ok[index]:
            raise ValueError(f"call {index} failed")
        return f"{tag} from call {index}"

    def elapsed(self) -> float:
        return anyio.current_time() - self.t0


class TestTiming:
    """On a virtual clock: the instants at which each call starts and hedge returns."""

    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_backups_start_at_offsets_from_the_first_start(self) -> None:
        replica = Replica([1.0, 5.0, 5.0])
        assert await hedge(replica, "row", delays=(0.125, 0.5)) == "row from call 0"
        # Offsets from the first start, not gaps: 0.5, not 0.625.
        assert replica.starts == [0.0, 0.125, 0.5]
        assert sorted(replica.cancelled) == [1, 2]
        assert sorted(replica.cleaned_up) == [1, 2]  # complete before hedge returned
        assert replica.elapsed() == 1.0 + CLEANUP

    @pytest.mark.parametrize("virtual_backend", ["trio"], indirect=True)
    async def test_the_default_delays(self) -> None:
        # Only on trio's clock, which keeps instants such as 0.2 exactly.
        replica = Replica([1.0, 5.0, 5.0])
        await hedge(replica, "row")
        assert replica.starts == [0.0, 0.05, 0.2]

    async def test_a_backup_wins_and_the_rest_are_cancelled(self) -> None:
        replica = Replica([10.0, 1.5, 10.0, 10.0])
        assert await hedge(replica, "row", delays=(1, 2, 3)) == "row from call 1"
        assert replica.starts == [0.0, 1.0, 2.0]  # call 3 never started: 2.5 < 3
        assert sorted(replica.cancelled) == [0, 2]
        assert sorted(replica.cleaned_up) == [0, 2]
        assert replica.elapsed() == 2.5 + CLEANUP

    async def test_a_fast_first_answer_starts_no_backup(self) -> None:
        replica = Replica([0.25, 1.0])
        assert await hedge(replica, "row", delays=(0.5,)) == "row from call 0"
        assert replica.starts == [0.0]
        assert sorted(replica.cancelled) == []
        assert replica.elapsed() == 0.25

    async def test_a_failure_starts_the_next_backup_at_once(self) -> None:
        # Call 0 fails at 0.5, before the instant of call 1 (1): call 1 starts at 0.5.
        # Call 2 keeps its instant, 4.
        replica = Replica([0.5, 8.0, 1.0], ok=[False, True, True])
        assert await hedge(replica, "row", delays=(1, 4)) == "row from call 2"
        assert replica.starts == [0.0, 0.5, 4.0]
        assert replica.elapsed() == 5.0 + CLEANUP

    async def test_each_failure_starts_the_backup_next_in_line(self) -> None:
        # Call 1 starts at its instant (1); call 0 fails at 1.5: call 2 starts then, not
        # at 4; call 2 fails at 2: call 3 starts then, not at 8; the timer at 4 starts
        # nothing, as its call already started.
        replica = Replica([1.5, 9.0, 0.5, 0.25], ok=[False, True, False, True])
        assert await hedge(replica, "row", delays=(1, 4, 8)) == "row from call 3"
        assert replica.starts == [0.0, 1.0, 1.5, 2.0]
        assert sorted(replica.cancelled) == [1]
        assert replica.elapsed() == 2.25 + CLEANUP

    async def test_all_fail_in_start_order(self) -> None:
        # They fail in the order 2, 1, 0; the group lists them in start order.
        replica = Replica([3.0, 1.0, 0.25], ok=[False, False, False])
        with pytest.raises(ExceptionGroup) as caught:
            await hedge(replica, "row", delays=(1, 1.5))
        assert re.fullmatch(
            r"all 3 hedged calls to <tests\.test_hedge\.Replica object at 0x\w+> failed "
            r"\(3 sub-exceptions\)",
            str(caught.value),
        )
        assert [str(exc) for exc in caught.value.exceptions] == [
            "call 0 failed",
            "call 1 failed",
            "call 2 failed",
        ]
        assert replica.starts == [0.0, 1.0, 1.5]
        assert replica.elapsed() == 3.0

    async def test_zero_delay_starts_a_backup_at_once(self) -> None:
        replica = Replica([2.0, 1.0])
        assert await hedge(replica, "row", delays=(0,)) == "row from call 1"
        assert replica.starts == [0.0, 0.0]

    async def test_caller_cancellation_cancels_every_call(self) -> None:
        replica = Replica([10.0, 10.0, 10.0])
        with anyio.move_on_after(0.5) as scope:
            await hedge(replica, "row", delays=(0.25, 1))
        assert scope.cancelled_caught
        assert replica.starts == [0.0, 0.25]
        assert sorted(replica.cancelled) == [0, 1]
        assert sorted(replica.cleaned_up) == [0, 1]
        assert replica.elapsed() == 0.5 + CLEANUP


async def test_returns_the_value_and_passes_the_arguments() -> None:
    assert await hedge(echo, {"a": 1}) == {"a": 1}


async def test_no_delays_means_a_single_call() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        await hedge(boom, "nope", delays=())
    assert str(caught.value) == "all 1 hedged calls to boom failed (1 sub-exception)"
    assert [str(exc) for exc in caught.value.exceptions] == ["nope"]


async def test_a_list_or_generator_of_delays() -> None:
    assert await hedge(echo, 1, delays=[0.5, 1]) == 1
    assert await hedge(echo, 2, delays=(d for d in (0.5, 1))) == 2


async def test_first_success_wins_even_without_a_checkpoint() -> None:
    calls: list[int] = []

    async def answer(value: int) -> int:
        calls.append(value)
        return value

    assert await hedge(answer, 7, delays=(0,)) == 7
    # The backup started at the same instant, and may have answered as well; the
    # first answer recorded is the one returned.
    assert calls in ([7], [7, 7])


async def test_a_loser_that_ignores_cancellation_does_not_change_the_winner() -> None:
    calls = 0
    loser_finished = anyio.Event()

    async def stubborn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
            loser_finished.set()
            return "late"
        return "first"

    assert await hedge(stubborn, delays=(0,)) == "first"
    assert loser_finished.is_set()


async def test_a_loser_that_fails_on_cancellation_is_ignored() -> None:
    started = 0

    async def fail_when_cancelled() -> str:
        nonlocal started
        started += 1
        if started == 1:
            try:
                await anyio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")
        await anyio.wait_all_tasks_blocked()
        return "ok"

    assert await hedge(fail_when_cancelled, delays=(0, 1000)) == "ok"
    assert started == 2  # the failure on cancellation started no backup


async def test_a_base_exception_propagates_and_cancels_the_others() -> None:
    class Fatal(BaseException):
        pass

    cancelled = anyio.Event()

    async def call() -> None:
        if not cancelled.is_set() and not hasattr(call, "started"):
            call.started = True  # type: ignore[attr-defined]
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
        await anyio.wait_all_tasks_blocked()
        raise Fatal

    with pytest.raises(BaseExceptionGroup) as caught:
        await hedge(call, delays=(0,))
    assert caught.group_contains(Fatal)
    assert cancelled.is_set()


async def test_cancelled_from_another_task() -> None:
    replica = Replica([math.inf, math.inf])
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            await hedge(replica, "row", delays=(0,))

        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert len(replica.starts) == 2
        tg.cancel_scope.cancel()
    assert sorted(replica.cleaned_up) == [0, 1]


class TestCheckpoints:
    async def test_cancel_point_calls_nothing(self) -> None:
        called = False

        async def fn() -> None:
            nonlocal called
            called = True

        await assert_cancel_point(lambda: hedge(fn))
        assert not called

    async def test_schedule_point_when_the_answer_is_immediate(self) -> None:
        async def immediate() -> int:
            return 3

        assert await assert_schedule_point(lambda: hedge(immediate)) == 3
        assert await assert_schedule_point(lambda: hedge(immediate, delays=())) == 3


async def not_callable_yet() -> None:
    pass  # pragma: no cover


BAD_INPUT: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: hedge(42), TypeError, "fn must be an async function, got 42"),  # type: ignore[arg-type]
    (
        lambda: hedge(not_callable_yet()),  # type: ignore[arg-type]
        TypeError,
        "fn must be an async function, got the awaitable <coroutine object",
    ),
    (
        lambda: hedge(echo, 1, delays=0.05),  # type: ignore[arg-type]
        TypeError,
        "delays must be an iterable of numbers of seconds, such as (0.05, 0.2), got 0.05",
    ),
    (
        lambda: hedge(echo, 1, delays="0.05"),  # type: ignore[arg-type]
        TypeError,
        "delays must be an iterable of numbers of seconds, such as (0.05, 0.2), got '0.05'",
    ),
    (
        lambda: hedge(echo, 1, delays=(0.05, "0.2")),  # type: ignore[arg-type]
        TypeError,
        "delays[1] must be a number of seconds, got '0.2'",
    ),
    (
        lambda: hedge(echo, 1, delays=(True,)),
        TypeError,
        "delays[0] must be a number of seconds, got True",
    ),
    (
        lambda: hedge(echo, 1, delays=(-0.5,)),
        ValueError,
        "delays[0] must be a finite number of seconds >= 0, got -0.5",
    ),
    (
        lambda: hedge(echo, 1, delays=(0.1, math.nan)),
        ValueError,
        "delays[1] must be a finite number of seconds >= 0, got nan",
    ),
    (
        lambda: hedge(echo, 1, delays=(math.inf,)),
        ValueError,
        "delays[0] must be a finite number of seconds >= 0, got inf",
    ),
    (
        lambda: hedge(echo, 1, delays=(0.2, 0.1)),
        ValueError,
        "delays must be strictly increasing (offsets from the start of the first call, "
        "not gaps between calls), but delays[1] is 0.1 after 0.2",
    ),
    (
        lambda: hedge(echo, 1, delays=(0.1, 0.1)),
        ValueError,
        "delays must be strictly increasing (offsets from the start of the first call, "
        "not gaps between calls), but delays[1] is 0.1 after 0.1",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_INPUT)
async def test_bad_input(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        await call()


# A model of the schedule, checked against the real thing on a virtual clock.


def model(
    delays: Sequence[float], durations: Sequence[float], ok: Sequence[bool]
) -> tuple[list[float], int | None]:
    """The instants the calls start at, and which call wins (None: all fail)."""
    calls = len(delays) + 1
    starts = [0.0]
    kicks = 0  # failures that have started a backup
    while True:
        ends = [(starts[i] + durations[i], i) for i in range(len(starts))]
        win = min(((end, i) for end, i in ends if ok[i]), default=None)
        if len(starts) == calls:
            break
        failures = sorted(end for end, i in ends if not ok[i])
        following = delays[len(starts) - 1]
        by_failure = kicks < len(failures) and failures[kicks] < following
        at = failures[kicks] if by_failure else following
        if win is not None and win[0] < at:
            break
        starts.append(at)
        kicks += by_failure
    return starts, None if win is None else win[1]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[float], list[float], list[bool]]:
    """Delays are whole seconds; call i lasts a whole number of seconds plus 2**-(i+2).

    Each call's end then has its own binary fraction, distinct from the others' and from
    the timers' (none): no two events happen at the same instant, so the winner and the
    instants are well defined; and every sum is exact in floating point.
    """
    calls = draw(st.integers(1, 5))
    delays = sorted(draw(st.sets(st.integers(0, 12), min_size=calls - 1, max_size=calls - 1)))
    durations = [draw(st.integers(0, 12)) + 2.0 ** -(i + 2) for i in range(calls)]
    ok = draw(st.lists(st.booleans(), min_size=calls, max_size=calls))
    return [float(d) for d in delays], durations, ok


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None)
@given(scenario=scenarios())
def test_matches_the_model(
    backend: str, scenario: tuple[list[float], list[float], list[bool]]
) -> None:
    delays, durations, ok = scenario
    expected_starts, expected_winner = model(delays, durations, ok)

    async def run() -> None:
        replica = Replica(durations, ok)
        if expected_winner is None:
            with pytest.raises(ExceptionGroup) as caught:
                await hedge(replica, "x", delays=delays)
            assert [str(e) for e in caught.value.exceptions] == [
                f"call {i} failed" for i in range(len(durations))
            ]
        else:
            assert await hedge(replica, "x", delays=delays) == f"x from call {expected_winner}"
        assert replica.starts == expected_starts

    if backend == "asyncio":
        import async_solipsism

        anyio.run(
            run, backend="asyncio", backend_options={"loop_factory": async_solipsism.EventLoop}
        )
    else:
        import trio.testing

        anyio.run(
            run,
            backend="trio",
            backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
        )
