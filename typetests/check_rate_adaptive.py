"""Static type checks of the rate and adaptive limiters, read by mypy and pyright."""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_type

from anyio_keyq import (
    AdaptiveLimiter,
    AdaptiveLimiterStatistics,
    RateLimiter,
    RateLimiterStatistics,
)

if TYPE_CHECKING:
    from anyio_keyq._limiters import Limiter


def borrow(limiter: Limiter) -> float:
    return limiter.total_tokens


async def check_rate() -> None:
    limiter = RateLimiter(10, per=2.5, burst=4)
    assert_type(await limiter.acquire(), None)
    assert_type(limiter.acquire_nowait(2), None)
    assert_type(limiter.ready_at(3), float)
    assert_type(limiter.statistics(), RateLimiterStatistics)
    assert_type(limiter.burst, int)
    assert_type(limiter.rate, float)
    RateLimiter(10, 1, 4)  # type: ignore[call-arg]
    RateLimiter(10, burst=2.5)  # type: ignore[arg-type]
    await limiter.acquire(n="2")  # type: ignore[arg-type]


async def check_adaptive() -> None:
    limiter = AdaptiveLimiter(10, min=2, max=100, increase=2, decrease=0.7, latency_target=0.5)
    assert_type(borrow(limiter), float)  # it implements the protocol
    assert_type(limiter.total_tokens, int)
    assert_type(limiter.limit, float)
    assert_type(limiter.history, tuple[tuple[float, float], ...])
    assert_type(limiter.statistics(), AdaptiveLimiterStatistics)
    async with limiter.acquire(weight=2) as nothing:
        assert_type(nothing, None)
    with limiter.acquire_nowait():
        pass
    await limiter.acquire_on_behalf_of("b", weight=1, priority=3)
    limiter.release_on_behalf_of("b", failed=True)
    AdaptiveLimiter(10, 2)  # type: ignore[call-arg]
    limiter.release_on_behalf_of("b", True)  # type: ignore[call-arg]
    async with limiter.acquire(2):  # weight, positional as for every limiter
        pass
    with limiter.acquire_nowait(weight=2):
        pass
    limiter.acquire(weight="2")  # type: ignore[arg-type]
