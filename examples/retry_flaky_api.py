"""Fetch items from a flaky API, retrying what is worth retrying.

The "API" is an in-process fake. Like a real service under load, it fails now and
then: with a 503 (try again later), with a 429 that says how long to wait (a
``Retry-After`` header, carried by the exception's ``retry_after`` attribute), or with
a 404 that no retry will fix. Which call fails is drawn from a generator seeded with
the item and the attempt, so the outcome of each fetch, and this program's output, is
the same on every run; only the jittered waits vary.

Run it with ``python examples/retry_flaky_api.py``.
"""

from __future__ import annotations

import random
from collections import Counter

import anyio

from anyio_keyq import Backoff, Retry, retry


class ApiError(Exception):
    def __init__(self, status: int, item: int) -> None:
        super().__init__(f"HTTP {status} for item {item}")
        self.status = status


class ServiceUnavailable(ApiError):
    """503: the server is overloaded or restarting; try again later."""


class TooManyRequests(ApiError):
    """429: slow down. ``retry_after`` is the server's Retry-After, in seconds."""

    def __init__(self, item: int, retry_after: float) -> None:
        super().__init__(429, item)
        self.retry_after = retry_after


class NotFound(ApiError):
    """404: retrying will not make the item exist."""


class FlakyApi:
    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()

    async def get(self, item: int) -> str:
        self.calls[item] += 1
        attempt = self.calls[item]
        await anyio.sleep(0.001)  # the network
        roll = random.Random(f"{item}/{attempt}").random()
        if item == 13:
            raise NotFound(404, item)
        if roll < 0.4:
            raise ServiceUnavailable(503, item)
        if roll < 0.55:
            raise TooManyRequests(item, retry_after=0.005)
        return f"item-{item}"


# Up to 4 attempts; waits of about 2, 4, 8 ms (full jitter), or what a 429 asks for.
POLICY = Retry(
    attempts=4,
    backoff=Backoff(base=0.002, factor=2, cap=0.05),
    retry_on=(ServiceUnavailable, TooManyRequests),
)


async def main() -> None:
    api = FlakyApi()
    results: dict[int, str] = {}

    async def fetch(item: int) -> None:
        try:
            results[item] = await retry(api.get, item, policy=POLICY)
        except ApiError as exc:
            results[item] = f"failed: {exc} ({exc.__notes__[-1]})"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for item in range(10, 20):
                tg.start_soon(fetch, item)
    for item, result in sorted(results.items()):
        print(f"{item}: {result}, {api.calls[item]} attempt(s)")

    # A 429 asking for more time than is left: no sleeping until the deadline, the
    # error comes back at once.
    class Busy(FlakyApi):
        async def get(self, item: int) -> str:
            raise TooManyRequests(item, retry_after=30)

    start = anyio.current_time()
    try:
        with anyio.fail_after(2):
            await retry(Busy().get, 99, policy=POLICY)
    except TooManyRequests as exc:
        elapsed = anyio.current_time() - start
        assert elapsed < 1, elapsed
        print(f"99: {exc}; {exc.__notes__[-1]}")

    stats = POLICY.statistics()
    print(
        f"{stats.calls} runs: {stats.succeeded} succeeded, {stats.exhausted} exhausted, "
        f"{stats.not_retryable} not retryable, {stats.out_of_time} out of time; "
        f"{stats.retries} retries"
    )
    # The same on every run: which calls fail depends only on the item and attempt.
    assert (stats.succeeded, stats.exhausted, stats.not_retryable, stats.out_of_time) == (
        8,
        1,
        1,
        1,
    )
    assert stats.running == 0
    assert stats.retries == sum(api.calls.values()) - len(api.calls)


if __name__ == "__main__":
    anyio.run(main)
