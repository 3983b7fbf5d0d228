"""Static type checks of CircuitBreaker, read by mypy and pyright."""

from __future__ import annotations

from typing import assert_type

from anyio_keyq import CircuitBreaker, CircuitBreakerStatistics, CircuitOpen, CircuitState


async def fetch(url: str, attempt: int) -> bytes:
    return url.encode() * attempt


def log_change(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
    print(breaker.name, old.value, new.value)


def is_failure(exc: Exception) -> bool:
    return isinstance(exc, ConnectionError)


async def check_breaker() -> None:
    breaker = CircuitBreaker(3, 10.0, failure_on=is_failure, on_change=log_change, name="api")
    CircuitBreaker(failure_on=(ConnectionError, TimeoutError), success_threshold=2)
    CircuitBreaker(failure_on=OSError)
    assert_type(await breaker.call(fetch, "https://example.com", 1), bytes)
    async with breaker.guard():
        pass
    assert_type(breaker.state, CircuitState)
    assert_type(breaker.statistics(), CircuitBreakerStatistics)
    assert_type(breaker.statistics().next_trial_at, float | None)
    assert_type(breaker.trip(), None)
    assert_type(breaker.reset(), None)
    assert_type(breaker.recovery_time, float)

    @breaker.guarded
    async def get(url: str, *, timeout: float = 5.0) -> str:
        return url

    assert_type(await get("a", timeout=1.0), str)

    try:
        await breaker.call(fetch, "x", 1)
    except CircuitOpen as exc:
        assert_type(exc.retry_after, float)

    await breaker.call(fetch, "x")  # type: ignore[arg-type]
    await breaker.call(fetch, "x", "1")  # type: ignore[arg-type]
    await get(1)  # type: ignore[arg-type]
    await get("a", timeout="1")  # type: ignore[arg-type]
    CircuitBreaker(3, 10.0, ConnectionError)  # type: ignore[call-arg]
    CircuitBreaker(failure_on=KeyboardInterrupt)  # type: ignore[arg-type]
    CircuitBreaker(on_change=print)
