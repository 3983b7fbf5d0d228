"""Concurrency limiters: the protocol the lanes, scopes and adapters accept."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Limiter(Protocol):
    """A concurrency limiter that lanes, scopes and adapters can borrow permits from.

    Every limiter of this package implements it, and so can your own. It follows the
    *on behalf of* methods of :class:`anyio.CapacityLimiter`: a permit is held by a
    *borrower*, any hashable object that is unique to one holder (a task, a job
    handle), and goes back with the same borrower.

    * A borrower holds at most one permit of a limiter at a time: acquiring again
      before releasing raises :exc:`RuntimeError` instead of deadlocking.
    * *weight* is how many units of ``total_tokens`` the permit takes (a heavy query
      can count for more than a light one); a weight above ``total_tokens`` is a
      :exc:`ValueError`. *priority* orders the waiters of limiters that honour it
      (lower first); the others serve their waiters first come, first served.
    * :meth:`acquire_on_behalf_of` is cancellation-safe: a waiter that is cancelled
      leaves no trace and takes no permit, even if it was granted one in the same
      instant.
    * *failed* tells the limiter how the work done under the permit ended, for
      limiters that adapt to it (see :class:`AdaptiveLimiter`); the others ignore it.
    """

    @property
    def total_tokens(self) -> float:
        """How many units of weight may be held at once (it may change over time)."""
        ...

    def acquire_on_behalf_of_nowait(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Take a permit for *borrower* at once, or raise :exc:`anyio.WouldBlock`."""
        ...

    async def acquire_on_behalf_of(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Wait for a permit for *borrower*. This is a checkpoint."""
        ...

    def release_on_behalf_of(self, borrower: object, /, *, failed: bool = False) -> None:
        """Give back the permit of *borrower*. Not a checkpoint; never blocks."""
        ...
