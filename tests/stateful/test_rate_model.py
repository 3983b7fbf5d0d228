"""RateLimiter against a sequential model, driven by Hypothesis on virtual clocks.

Each example is a list of requests: when each arrives, how many tokens it asks for,
and whether its caller gives up (is cancelled) after a while. The model computes, with
exact fractions, when each request is served or gives up: a token bucket (GCRA) whose
waiters are served first come, first served. The limiter must serve the same requests
at exactly the same virtual instants.

Instants are kept on a grid that both virtual clocks represent exactly: arrivals on
eighths of a second, token intervals of 1/16 s or more (so grants fall on sixteenths),
and the moments callers give up on odd 64ths, so they never tie with a grant (nor with
each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anyio_keyq import RateLimiter, RateLimiterStatistics

from ..conftest import _virtual_asyncio, _virtual_trio

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class Request:
    gap: Fraction  # after the previous request's arrival
    n: int
    give_up_after: Fraction | None  # after its own arrival


@dataclass(frozen=True)
class Case:
    rate: int
    per: Fraction
    burst: int
    requests: tuple[Request, ...]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    rate = draw(st.sampled_from([1, 2, 4, 8]))
    per = draw(st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(2)]))
    burst = draw(st.integers(1, 4))
    request = st.builds(
        Request,
        gap=st.integers(0, 8).map(lambda k: Fraction(k, 8)),
        n=st.integers(1, burst),
        give_up_after=st.none() | st.integers(0, 63).map(lambda k: Fraction(2 * k + 1, 64)),
    )
    return Case(rate, per, burst, tuple(draw(st.lists(request, max_size=20))))


def gave_up_instants(case: Case) -> Iterator[Fraction]:
    arrival = Fraction(0)
    for request in case.requests:
        arrival += request.gap
        if request.give_up_after is not None:
            yield arrival + request.give_up_after


def model(case: Case) -> tuple[dict[int, Fraction], dict[int, Fraction]]:
    """When each request is served, or gives up, relative to the first arrival."""
    interval = case.per / case.rate
    full_from: Fraction | None = None  # the bucket is full from then on (None: ever)
    everyone_ahead_gone = Fraction(0)
    arrival = Fraction(0)
    served: dict[int, Fraction] = {}
    gave_up: dict[int, Fraction] = {}
    for i, request in enumerate(case.requests):
        arrival += request.gap
        first_in_line = max(arrival, everyone_ahead_gone)
        due = first_in_line
        if full_from is not None:
            due = max(due, full_from - (case.burst - request.n) * interval)
        give_up = None if request.give_up_after is None else arrival + request.give_up_after
        if give_up is not None and give_up < due:
            gave_up[i] = give_up
            left = give_up
        else:
            served[i] = due
            start = due if full_from is None else max(full_from, due)
            full_from = start + request.n * interval
            left = due
        everyone_ahead_gone = max(everyone_ahead_gone, left)
    return served, gave_up


async def drive(
    case: Case,
) -> tuple[dict[int, Fraction], dict[int, Fraction], RateLimiterStatistics]:
    limiter = RateLimiter(case.rate, float(case.per), burst=case.burst)
    t0 = anyio.current_time()
    served: dict[int, Fraction] = {}
    gave_up: dict[int, Fraction] = {}

    def now() -> Fraction:
        return Fraction(anyio.current_time() - t0)

    async def caller(
        i: int, request: Request, arrival: Fraction, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        deadline = float("inf")
        if request.give_up_after is not None:
            deadline = t0 + float(arrival + request.give_up_after)
        with anyio.CancelScope(deadline=deadline) as scope:
            task_status.started()  # acquire() joins the line before it first yields
            await limiter.acquire(request.n)
            served[i] = now()
        if scope.cancelled_caught:
            gave_up[i] = now()

    arrival = Fraction(0)
    async with anyio.create_task_group() as tg:
        for i, request in enumerate(case.requests):
            arrival += request.gap
            await anyio.sleep(float(arrival - now()))
            assert now() == arrival
            await tg.start(caller, i, request, arrival)
    return served, gave_up, limiter.statistics()


@pytest.mark.parametrize("backend", [_virtual_asyncio, _virtual_trio], ids=["asyncio", "trio"])
@settings(max_examples=150, deadline=None)
@given(case=cases())
def test_grant_instants_match_the_model(backend: Any, case: Case) -> None:
    # Two callers giving up at once would tie: the first one's leaving moves the second
    # up in the same instant as its own deadline, and which comes first is up to the
    # event loop.
    give_ups = list(gave_up_instants(case))
    assume(len(set(give_ups)) == len(give_ups))
    name, options = backend()  # a fresh virtual clock for every example
    served, gave_up, stats = anyio.run(drive, case, backend=name, backend_options=options)
    expected_served, expected_gave_up = model(case)
    assert served == expected_served
    assert gave_up == expected_gave_up
    assert (stats.waiting, stats.waiting_tokens) == (0, 0)
    assert stats.acquired == sum(case.requests[i].n for i in expected_served)
