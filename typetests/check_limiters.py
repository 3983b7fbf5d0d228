"""Static type checks of the limiters, read by mypy and pyright, never executed."""

from __future__ import annotations

from typing import assert_type

from anyio_keyq import (
    Limiter,
    PriorityLimiter,
    PriorityLimiterStatistics,
    WeightedLimiter,
    WeightedLimiterStatistics,
)


def takes_a_limiter(limiter: Limiter) -> None: ...


async def check(weighted: WeightedLimiter, prioritised: PriorityLimiter, limiter: Limiter) -> None:
    takes_a_limiter(weighted)
    takes_a_limiter(prioritised)
    assert_type(limiter.total_tokens, float)
    await limiter.acquire_on_behalf_of(object(), weight=2, priority=-1.5)
    limiter.acquire_on_behalf_of_nowait("job-1")
    limiter.release_on_behalf_of("job-1", failed=True)

    async with weighted.acquire(3):
        pass
    with weighted.acquire_nowait():
        pass
    async with prioritised.acquire(2, priority=0.5):
        pass
    with prioritised.acquire_nowait(priority=1):
        pass
    assert_type(weighted.total_tokens, int)
    weighted.total_tokens = 5
    assert_type(weighted.available_tokens, int)
    assert_type(prioritised.borrowed_tokens, int)
    assert_type(prioritised.aging, float | None)
    assert_type(weighted.statistics(), WeightedLimiterStatistics)
    assert_type(prioritised.statistics(), PriorityLimiterStatistics)
    assert_type(prioritised.statistics().waiting_by_priority, tuple[tuple[float, int], ...])
    PriorityLimiter(4, aging=2.5)

    async with weighted.acquire(priority=1):  # type: ignore[call-arg]
        pass
    async with prioritised.acquire(2, 1):  # type: ignore[call-arg]
        pass
    weighted.total_tokens = 2.5  # type: ignore[assignment]
    await limiter.acquire_on_behalf_of("x", 1)  # type: ignore[call-arg]
    PriorityLimiter(4, 2.5)  # type: ignore[call-arg]
