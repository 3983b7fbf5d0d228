"""Static type checks of Retry, Backoff and retry(), read by mypy and pyright."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Protocol, assert_type

from anyio_keyq import Backoff, Retry, RetryStatistics, retry

if TYPE_CHECKING:
    from collections.abc import Coroutine


async def fetch(url: str, attempt: int) -> bytes:
    return url.encode() * attempt


async def check_retry() -> None:
    policy = Retry(attempts=5, backoff=Backoff(base=0.2, cap=5.0), retry_on=OSError)
    assert_type(await retry(fetch, "https://example.org", 2), bytes)
    assert_type(await retry(fetch, "https://example.org", 2, policy=policy), bytes)
    assert_type(await retry(fetch, "https://example.org", 2, policy=None), bytes)
    await retry(fetch, "https://example.org")  # type: ignore[arg-type]
    await retry(fetch, "https://example.org", "2")  # type: ignore[arg-type]
    await retry(fetch, "u", 2, policy=Backoff())  # type: ignore[arg-type]
    await retry(fetch, "u", 2, attempts=3)  # type: ignore[call-arg]


def check_policy() -> None:
    Retry(attempts=math.inf, jitter="decorrelated", rng=random.Random(1))
    Retry(retry_on=(OSError, TimeoutError))
    Retry(retry_on=lambda exc: isinstance(exc, OSError) and exc.errno == 111)
    Retry(jitter="random")  # type: ignore[arg-type]
    Retry(retry_on=KeyboardInterrupt)  # type: ignore[arg-type]
    Retry(retry_on=lambda exc: exc.errno)  # type: ignore[attr-defined]
    Retry(3)  # type: ignore[call-arg]
    policy = Retry()
    assert_type(policy.next_delay(1, OSError()), float | None)
    assert_type(policy.next_delay(2, OSError(), previous=0.5), float | None)
    assert_type(policy.retryable(ValueError()), bool)
    assert_type(policy.statistics(), RetryStatistics)
    assert_type(policy.statistics().retries, int)
    assert_type(policy.attempts, float)
    assert_type(policy.backoff, Backoff)
    assert_type(Backoff().delay(3), float)
    assert_type(Backoff(base=0.5, factor=1.5, cap=2).cap, float)
    Backoff(0.5)  # type: ignore[call-arg]
    policy.next_delay(1.5, OSError())  # type: ignore[arg-type]
    policy.next_delay(1, "error")  # type: ignore[arg-type]


class SendLike(Protocol):
    def __call__(
        self, channel: str, message: bytes, *, urgent: bool = ...
    ) -> Coroutine[Any, Any, int]: ...


def takes_send(fn: SendLike) -> None: ...


@Retry(attempts=3)
async def send(channel: str, message: bytes, *, urgent: bool = False) -> int:
    return len(message)


async def check_decorator() -> None:
    takes_send(send)  # the decorated function keeps the signature
    takes_send(fetch)  # type: ignore[arg-type]
    assert_type(await send("c", b"m", urgent=True), int)
    await send("c", "m")  # type: ignore[arg-type]
    await send("c", b"m", later=True)  # type: ignore[call-arg]
    await send("c", b"m", True)  # type: ignore[call-arg]
    coro: Coroutine[Any, Any, int] = send("c", b"m")
    assert_type(await coro, int)
