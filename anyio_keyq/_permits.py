"""Global permits: where a job gets the right to run under the global limit.

A *token* is one permit taken from the limit. A job that waits for another job of the
same lanes lends its token to that job's lane as a *credit*, so the awaited job (and the
jobs queued before it) can run even when every permit is held by a waiting job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ._job import Job
    from ._lane import Lane
    from ._limiters import Limiter


class Token:
    """One permit of the global limit, held by the jobs running on it.

    ``holders`` counts the running jobs that use it: the job that took it, plus any
    job started on a credit lent from it. It goes back to the limit at zero, telling
    the limit whether the last job run on it failed.
    """

    __slots__ = ("failed", "holders", "weight")

    def __init__(self, weight: int = 1) -> None:
        self.holders = 1
        self.weight = weight
        self.failed = False


class Credit:
    """A token lent by a waiting job to the lane of the job it waits for."""

    __slots__ = ("active", "lane", "token")

    def __init__(self, token: Token, lane: Lane) -> None:
        self.token = token
        self.lane = lane
        self.active = True


def weight_of(job: Job[object]) -> int:
    extras = job._extras
    return 1 if extras is None else extras.weight


def priority_of(job: Job[object]) -> float:
    extras = job._extras
    return 0 if extras is None else extras.priority


class Permits:
    """A source of tokens. This base class has no limit."""

    __slots__ = ()

    #: Whether a finished job's token may serve the next job of the same weight without
    #: a round trip through the limit (only when nobody outside the lanes competes).
    reuse = True
    #: Whether tokens may be freed by someone else, so that a task must wait for one.
    shared = False
    #: Whether a job may weigh more than 1.
    weighted = True
    total: float = float("inf")
    #: Whether try_acquire() cannot succeed now (False: it might).
    exhausted = False

    def try_acquire(self, job: Job[object]) -> Token | None:
        return Token(weight_of(job))

    async def acquire(self, job: Job[object]) -> Token:  # pragma: no cover - never waits
        raise NotImplementedError

    def release(self, token: Token) -> None:
        pass


class CountedPermits(Permits):
    """``limit=N``: a private count; only the lanes' own jobs take its tokens."""

    __slots__ = ("_used", "exhausted", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self.exhausted = False

    def try_acquire(self, job: Job[object]) -> Token | None:
        extras = job._extras
        if extras is None:  # the common case, kept short
            if self._used < self.total:
                self._used += 1
                self.exhausted = self._used >= self.total
                return Token()
            return None
        weight = extras.weight
        if self._used + weight <= self.total:
            self._used += weight
            self.exhausted = self._used >= self.total
            return Token(weight)
        return None

    def release(self, token: Token) -> None:
        self._used -= token.weight
        self.exhausted = False


class LimiterPermits(Permits):
    """``limit=CapacityLimiter(...)``: tokens borrowed from a limiter others share.

    Every token goes back to the limiter after its job, so that tasks outside the lanes
    waiting on the same limiter get their turn in the limiter's own FIFO order.
    """

    __slots__ = ("limiter",)

    reuse = False
    shared = True
    weighted = False

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter

    @property
    def total(self) -> float:  # type: ignore[override]
        return self.limiter.total_tokens

    def try_acquire(self, job: Job[object]) -> Token | None:
        token = Token()
        try:
            self.limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            return None
        return token

    async def acquire(self, job: Job[object]) -> Token:
        token = Token()
        await self.limiter.acquire_on_behalf_of(token)
        return token

    def release(self, token: Token) -> None:
        self.limiter.release_on_behalf_of(token)


class ProtocolPermits(Permits):
    """``limit=`` any :class:`~anyio_keyq.Limiter`: tokens borrowed with weight and priority.

    As with a :class:`~anyio.CapacityLimiter`, every token goes back after its job,
    with the outcome, so that a limiter that adapts sees every job.
    """

    __slots__ = ("limiter",)

    reuse = False
    shared = True

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    @property
    def total(self) -> float:  # type: ignore[override]
        return self.limiter.total_tokens

    def try_acquire(self, job: Job[object]) -> Token | None:
        token = Token(weight_of(job))
        try:
            self.limiter.acquire_on_behalf_of_nowait(
                token, weight=token.weight, priority=priority_of(job)
            )
        except anyio.WouldBlock:
            return None
        return token

    async def acquire(self, job: Job[object]) -> Token:
        token = Token(weight_of(job))
        await self.limiter.acquire_on_behalf_of(
            token, weight=token.weight, priority=priority_of(job)
        )
        return token

    def release(self, token: Token) -> None:
        self.limiter.release_on_behalf_of(token, failed=token.failed)
