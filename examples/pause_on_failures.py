"""Write your own limiter: hold new work back for a while after failures in a row.

Anything with the four members of the :class:`~anyio_keyq.Limiter` protocol can be the
``limit`` of :class:`~anyio_keyq.KeyedLanes`, :class:`~anyio_keyq.ConcurrencyScope`,
:func:`~anyio_keyq.amap` and :func:`~anyio_keyq.keyed_amap`. :class:`PauseOnFailures`
wraps another limiter, which does the limiting, and adds a pause: after *threshold*
failures in a row, it grants no permit for *pause* seconds. The lanes tell it how every
job ended, so that a provider that is down is not hit by every queued job in turn.

A payment provider is down for its first 80 ms. Forty charges on ten accounts go
through the lanes, 4 at a time: with a plain :class:`~anyio_keyq.WeightedLimiter`, every
charge that starts during the outage fails; with the pause, only the few that started
before it.

The provider is simulated with ``anyio.sleep``. Run it with
``python examples/pause_on_failures.py``.
"""

from __future__ import annotations

import math

import anyio

from anyio_keyq import Job, KeyedLanes, Limiter, WeightedLimiter

CHARGES, LIMIT = 40, 4
OUTAGE = 0.08  # seconds the provider is down for
THRESHOLD, PAUSE = 3, 0.12  # pause for 0.12 s after 3 failures in a row


class PauseOnFailures:
    """A :class:`~anyio_keyq.Limiter` that pauses after *threshold* failures in a row.

    Each further failure before the next success starts the pause again. The pause
    holds back new permits only: the holders keep theirs.
    """

    def __init__(self, inner: Limiter, *, threshold: int, pause: float) -> None:
        self.inner = inner
        self.threshold = threshold
        self.pause = pause
        self.failures_in_a_row = 0
        self.paused_until = -math.inf  # no clock is read before a loop runs

    @property
    def total_tokens(self) -> float:
        return self.inner.total_tokens

    def acquire_on_behalf_of_nowait(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        if anyio.current_time() < self.paused_until:
            raise anyio.WouldBlock
        self.inner.acquire_on_behalf_of_nowait(borrower, weight=weight, priority=priority)

    async def acquire_on_behalf_of(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        # Sleeping holds nothing, so a cancellation here leaves no trace; the inner
        # limiter is a checkpoint, and safe to cancel, on its own.
        while True:
            # A loop, not an event: more failures may extend the pause while this sleeps.
            while anyio.current_time() < self.paused_until:  # noqa: ASYNC110
                await anyio.sleep_until(self.paused_until)
            await self.inner.acquire_on_behalf_of(borrower, weight=weight, priority=priority)
            if anyio.current_time() >= self.paused_until:
                return
            # A pause began while this waited in the inner limiter: give the permit back
            # (nothing ran on it, so it did not fail) and wait for the pause to end.
            self.inner.release_on_behalf_of(borrower)

    def release_on_behalf_of(self, borrower: object, /, *, failed: bool = False) -> None:
        if not failed:
            self.failures_in_a_row = 0
        else:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= self.threshold:
                self.paused_until = anyio.current_time() + self.pause
        # Last: the inner limiter may hand the permit on at once, to a waiter that must
        # find the pause already set.
        self.inner.release_on_behalf_of(borrower, failed=failed)


class Provider:
    """Every charge takes 10 ms, and fails until the provider is back up."""

    def __init__(self, up_at: float) -> None:
        self.up_at = up_at

    async def charge(self, account: str, cents: int) -> None:
        await anyio.sleep(0.01)
        if anyio.current_time() < self.up_at:
            raise ConnectionError("the payment provider is unavailable")


async def failed_charges(limit: Limiter) -> int:
    """Run every charge through lanes keyed by account; return how many failed."""
    provider = Provider(up_at=anyio.current_time() + OUTAGE)
    jobs: list[Job[None]] = []
    async with KeyedLanes[str](limit=limit) as lanes:
        for n in range(CHARGES):
            account = f"account-{n % 10}"
            jobs.append(lanes.submit_nowait(account, provider.charge, account, 100 * n))
    return sum(job.exception() is not None for job in jobs)


async def main() -> None:
    plain = await failed_charges(WeightedLimiter(LIMIT))
    limiter = PauseOnFailures(WeightedLimiter(LIMIT), threshold=THRESHOLD, pause=PAUSE)
    paused = await failed_charges(limiter)
    print(f"failed charges: {plain} of {CHARGES} without a pause, {paused} with it")

    # Only the charges that started before the pause failed: the 4 running when the
    # failures began, and those that took the permits of the first failures.
    assert THRESHOLD <= paused <= LIMIT + THRESHOLD - 1 < plain


if __name__ == "__main__":
    anyio.run(main)
