"""AdaptiveLimiter: a concurrency limit that finds the capacity of what it protects."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._limiters import _check_borrower, _check_priority, _check_weight, _no_permit
from ._util import check_bound, check_positive_int, check_positive_number, check_seconds, final

#: How many changes of the limit :attr:`AdaptiveLimiter.history` keeps.
HISTORY_SIZE: Final = 1000

# How a permit ended.
_SUCCESS: Final = 0
_FAILURE: Final = 1
_NEUTRAL: Final = 2  # cancelled: says nothing about the downstream
_SLOW: Final = 3  # a success slower than latency_target: a sign of congestion


class _Holding:
    """A permit held: its weight, when it was granted, and in which decrease epoch.

    ``since`` is read from the clock only with a ``latency_target`` (it is 0 otherwise).
    """

    __slots__ = ("epoch", "since", "weight")

    def __init__(self, weight: int, since: float, epoch: int) -> None:
        self.weight = weight
        self.since = since
        self.epoch = epoch


class _Waiter:
    __slots__ = ("event", "granted", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.event = anyio.Event()
        self.granted = False


@final
@dataclass(frozen=True, slots=True)
class AdaptiveLimiterStatistics:
    """A snapshot of an :class:`AdaptiveLimiter`, from :meth:`AdaptiveLimiter.statistics`.

    ``acquired == holders + succeeded + failed + neutral`` always holds.
    """

    #: The current limit, a fraction (see :attr:`AdaptiveLimiter.limit`).
    limit: float
    #: The current limit rounded down: how much weight may be held at once.
    total_tokens: int
    #: The weight of the permits held now (it can exceed ``total_tokens`` for a while
    #: after the limit was lowered).
    borrowed_tokens: int
    #: The borrowers holding a permit, in the order they got it.
    borrowers: tuple[object, ...]
    #: Permits held now: ``len(borrowers)``.
    holders: int
    #: Tasks waiting for a permit.
    waiting: int
    #: Permits granted since the limiter was created.
    acquired: int
    #: Permits given back as successes (the slow ones included).
    succeeded: int
    #: Permits given back as failures.
    failed: int
    #: Successes that took longer than ``latency_target``.
    slow: int
    #: Permits given back with no outcome: their holder was cancelled.
    neutral: int
    #: Times the limit was cut (or would have been, but for ``min``).
    decreases: int


@final
class AdaptiveLimiter:
    """A concurrency limiter whose limit follows what the downstream can take (AIMD).

    It bounds how much runs at once, like :class:`anyio.CapacityLimiter`, but it finds
    the bound by itself, from how the work it admits ends: the limit grows slowly while
    the work succeeds, and is cut by a factor when it fails, times out, or is slower
    than ``latency_target``. Put it in front of a service whose capacity you don't know
    or that changes, and it keeps the load near what the service can serve.

    .. code-block:: python

        limiter = AdaptiveLimiter(10, max=200, latency_target=0.5)

        async def call(request: Request) -> Response:
            async with limiter.acquire():  # an exception in the block is a failure
                with anyio.fail_after(5):
                    return await client.send(request)

    The rule is *additive increase, multiplicative decrease* (AIMD), as TCP's
    congestion control:

    * A success adds ``increase * weight / limit``: the limit grows by ``increase``
      for every limit's worth of successes. It grows only while the limiter is at
      least half used when the permit is given back, so that a light load does not
      inflate it for nothing, and never beyond ``max``.
    * A failure (or a success slower than ``latency_target``) multiplies the limit by
      ``decrease``, down to ``min``. The failures of one window count once: a permit
      granted before the last cut does not cut again, since its trouble was the
      congestion the cut reacted to. So a wave of failures halves the limit once per
      round trip, not once per failure.

    :attr:`limit` is the current limit, a fraction; :attr:`total_tokens` rounds it
    down. Lowering the limit cancels nothing: the work running goes on, and no new
    permit is granted until the weight held is below the new limit. :attr:`history`
    records every change.

    It implements the ``Limiter`` protocol of this package: lanes, scopes and
    adapters can borrow its permits, and report outcomes with
    :meth:`release_on_behalf_of`. Waiters are served first come, first served; permit
    weights count against the limit; priorities are ignored.

    **Cancellation.** A task cancelled while waiting takes no permit and leaves no
    trace, even if a permit was granted to it in the same instant. A holder cancelled
    inside ``async with limiter.acquire():`` gives its permit back with no outcome:
    the cancellation says nothing about the downstream.

    The limiter can be created before an event loop runs, and used outside one as long
    as it needs no clock: it reads the event loop's clock only to time a permit (with a
    ``latency_target``) and to stamp a change of the limit in :attr:`history`. A call
    that needs the clock where there is none raises, and changes nothing.

    :param initial: the limit to start from, between *min* and *max*
    :param min: the lowest the limit goes (an int >= 1)
    :param max: the highest the limit goes (an int >= *min*, or ``math.inf``)
    :param increase: how much the limit grows per limit's worth of successes (> 0)
    :param decrease: the factor applied to the limit on a failure (between 0 and 1)
    :param latency_target: seconds, from the grant to the release of a permit, beyond
        which a success counts as a sign of congestion (``None``: latency is ignored)
    """

    __slots__ = (
        "_acquired",
        "_decrease",
        "_decreases",
        "_epoch",
        "_failed",
        "_history",
        "_holders",
        "_in_use",
        "_increase",
        "_latency_target",
        "_limit",
        "_max",
        "_min",
        "_neutral",
        "_slow",
        "_succeeded",
        "_waiters",
    )

    def __init__(
        self,
        initial: float,
        *,
        min: int = 1,
        max: float = math.inf,
        increase: float = 1,
        decrease: float = 0.5,
        latency_target: float | None = None,
    ) -> None:
        low = check_positive_int("min", min)
        high = check_bound("max", max)
        if high < low:
            raise ValueError(f"max must be >= min ({low}), got {max!r}")
        start = check_positive_number("initial", initial)
        if not low <= start <= high:
            raise ValueError(
                f"initial must be between min ({low}) and max ({high}), got {initial!r}"
            )
        factor = check_positive_number("decrease", decrease)
        if factor >= 1:
            raise ValueError(
                f"decrease must be > 0 and < 1 (the factor applied to the limit on a "
                f"failure), got {decrease!r}"
            )
        self._limit = start
        self._min = low
        self._max = high
        self._increase = check_positive_number("increase", increase)
        self._decrease = factor
        self._latency_target = (
            None
            if latency_target is None
            else check_seconds("latency_target", latency_target, allow_zero=False)
        )
        self._holders: dict[object, _Holding] = {}
        self._waiters: OrderedDict[object, _Waiter] = OrderedDict()
        self._in_use = 0
        self._epoch = 0
        self._history: deque[tuple[float, float]] = deque(maxlen=HISTORY_SIZE)
        self._acquired = 0
        self._succeeded = 0
        self._failed = 0
        self._slow = 0
        self._neutral = 0
        self._decreases = 0

    # -- the limit -------------------------------------------------------------------

    @property
    def limit(self) -> float:
        """The current limit: a fraction, between ``min`` and ``max``."""
        return self._limit

    @property
    def total_tokens(self) -> int:
        """The current limit rounded down: how much weight may be held at once."""
        return int(self._limit)

    @property
    def history(self) -> tuple[tuple[float, float], ...]:
        """The changes of :attr:`limit`, oldest first: ``(time, new limit)`` pairs.

        Times are on the :func:`anyio.current_time` clock. Only the latest 1,000 are
        kept.
        """
        return tuple(self._history)

    # -- the Limiter protocol ----------------------------------------------------------

    def acquire_on_behalf_of_nowait(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Take a permit for *borrower* at once, or raise :exc:`anyio.WouldBlock`.

        Not a checkpoint; never blocks. It does not jump the queue: it fails while
        other tasks wait, even if the limit has room.

        :param borrower: the holder of the permit: any hashable object, unique to it
        :param weight: how much of the limit the permit takes
        :param priority: ignored: waiters are served first come, first served (it is
            checked to be a number, as by every limiter of this package)
        :raises anyio.WouldBlock: if the limit has no room or other tasks are waiting
        :raises ValueError: if *weight* exceeds :attr:`total_tokens`
        :raises RuntimeError: if *borrower* already holds or waits for a permit
        """
        weight = self._check_acquire(borrower, weight, priority)
        if self._waiters or not self._fits(weight):
            raise anyio.WouldBlock
        self._grant(borrower, weight, self._grant_time())

    async def acquire_on_behalf_of(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Wait for a permit for *borrower*, first come, first served.

        This is a checkpoint. If it is cancelled, no permit is taken, even one granted
        in the same instant.

        :param borrower: the holder of the permit: any hashable object, unique to it
        :param weight: how much of the limit the permit takes
        :param priority: ignored: waiters are served first come, first served (it is
            checked to be a number, as by every limiter of this package)
        :raises ValueError: if *weight* exceeds :attr:`total_tokens`
        :raises RuntimeError: if *borrower* already holds or waits for a permit (at
            once, instead of waiting for itself forever)
        """
        weight = self._check_acquire(borrower, weight, priority)
        await checkpoint_if_cancelled()
        if not self._waiters and self._fits(weight):
            self._grant(borrower, weight, self._grant_time())
            try:
                await cancel_shielded_checkpoint()
            except BaseException:  # pragma: no cover - only KeyboardInterrupt lands here
                self._release(borrower, _NEUTRAL)
                raise
            return
        waiter = _Waiter(weight)
        self._waiters[borrower] = waiter
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # granted in the same instant: give it back untouched
                self._release(borrower, _NEUTRAL)
            else:
                del self._waiters[borrower]
                self._wake()  # it may have held back lighter waiters behind it
            raise

    def release_on_behalf_of(self, borrower: object, /, *, failed: bool = False) -> None:
        """Give back the permit of *borrower*, saying how the work went.

        A success may raise the limit; a failure, or a success slower than
        ``latency_target``, may cut it (see the class description). Not a checkpoint;
        never blocks.

        :param failed: whether the work failed or timed out
        :raises RuntimeError: if *borrower* holds no permit of this limiter
        """
        self._release(borrower, _FAILURE if failed else _SUCCESS)

    # -- for tasks ---------------------------------------------------------------------

    def acquire(self, weight: int = 1) -> AbstractAsyncContextManager[None]:
        """Hold a permit for the current task for the duration of an ``async with``.

        Entering is a checkpoint: it waits for a permit, first come, first served.
        Leaving is not a checkpoint and never blocks; it gives the permit back with
        the outcome of the block:

        * no exception: a success (a slow one, past ``latency_target``, is a failure);
        * an :exc:`Exception`, :exc:`TimeoutError` included: a failure;
        * any other :exc:`BaseException`, such as a cancellation: no outcome.

        So put a time limit *inside* the block, for its :exc:`TimeoutError` to count:
        a scope around the block cancels it, which tells nothing. To count outcomes
        yourself, use :meth:`acquire_on_behalf_of` and :meth:`release_on_behalf_of`.

        :param weight: how much of the limit the permit takes
        :raises RuntimeError: on entry, if the task already holds a permit of this
            limiter: one task, one permit
        :raises ValueError: on entry, if *weight* exceeds :attr:`total_tokens`
        """
        return _Acquire(self, weight)

    def acquire_nowait(self, weight: int = 1) -> AbstractContextManager[None]:
        """Like :meth:`acquire`, without waiting: for a plain ``with`` block.

        The permit is taken by the call itself (not on entering the block), and given
        back with the outcome of the block when it is left. Not a checkpoint; never
        blocks.

        :param weight: how much of the limit the permit takes
        :raises ~anyio.WouldBlock: if no permit is free now, or if other tasks are
            waiting
        :raises RuntimeError: if the current task already holds a permit of this limiter
        :raises ValueError: if *weight* exceeds :attr:`total_tokens`
        """
        borrower = anyio.get_current_task()
        self.acquire_on_behalf_of_nowait(borrower, weight=weight)
        return _Held(self, borrower)

    # -- introspection -----------------------------------------------------------------

    def statistics(self) -> AdaptiveLimiterStatistics:
        """Return an :class:`AdaptiveLimiterStatistics` snapshot. Not a checkpoint."""
        return AdaptiveLimiterStatistics(
            limit=self._limit,
            total_tokens=int(self._limit),
            borrowed_tokens=self._in_use,
            borrowers=tuple(self._holders),
            holders=len(self._holders),
            waiting=len(self._waiters),
            acquired=self._acquired,
            succeeded=self._succeeded,
            failed=self._failed,
            slow=self._slow,
            neutral=self._neutral,
            decreases=self._decreases,
        )

    def __repr__(self) -> str:
        return (
            f"<anyio_keyq.AdaptiveLimiter at {id(self):#x}: limit {self._limit:.6g}, "
            f"{self._in_use} borrowed, {len(self._waiters)} waiting>"
        )

    # -- bookkeeping (all synchronous) -------------------------------------------------

    def _check_acquire(self, borrower: object, weight: object, priority: object) -> int:
        limit = self._limit
        checked = _check_weight(
            weight, int(limit), f"total_tokens is the current limit ({limit:.6g}) rounded down"
        )
        _check_priority(priority)
        _check_borrower(
            self, borrower, holds=borrower in self._holders, waits=borrower in self._waiters
        )
        return checked

    def _fits(self, weight: int) -> bool:
        # A permit heavier than a lowered limit goes in alone, not never.
        return not self._in_use or self._in_use + weight <= int(self._limit)

    def _grant_time(self) -> float:
        # The clock is read only when a latency target needs it, so that a limiter
        # without one works outside an event loop too (anyio has no clock there).
        return 0.0 if self._latency_target is None else anyio.current_time()

    def _grant(self, borrower: object, weight: int, since: float) -> None:
        self._holders[borrower] = _Holding(weight, since, self._epoch)
        self._in_use += weight
        self._acquired += 1

    def _wake(self) -> None:
        """Grant permits to the waiters, first come first served, while there is room."""
        waiters = self._waiters
        since: float | None = None
        while waiters:
            borrower = next(iter(waiters))
            waiter = waiters[borrower]
            if not self._fits(waiter.weight):
                break
            del waiters[borrower]
            if since is None:
                since = self._grant_time()
            self._grant(borrower, waiter.weight, since)
            waiter.granted = True
            waiter.event.set()

    def _release(self, borrower: object, outcome: int) -> None:
        holding = self._holders.get(borrower)
        if holding is None:
            raise _no_permit(self, borrower)
        # First decide, reading the clock only if needed (for the latency, or to stamp a
        # change of the limit in the history); then change the state, which cannot fail.
        now: float | None = None
        target = self._latency_target
        if outcome == _SUCCESS and target is not None:
            now = anyio.current_time()
            if now - holding.since > target:
                outcome = _SLOW
        limit = new = self._limit
        # a permit granted before the last cut does not cut again: that cut was for it
        cut = outcome in (_FAILURE, _SLOW) and holding.epoch == self._epoch
        if cut:
            new = limit * self._decrease
            if new < self._min:
                new = self._min
        elif outcome == _SUCCESS and 2 * self._in_use >= limit:  # at least half used
            new = limit + self._increase * holding.weight / limit
            if new > self._max:
                new = self._max
        if new != limit and now is None:
            now = anyio.current_time()

        del self._holders[borrower]
        self._in_use -= holding.weight
        if outcome == _SUCCESS:
            self._succeeded += 1
        elif outcome == _SLOW:
            self._succeeded += 1
            self._slow += 1
        elif outcome == _FAILURE:
            self._failed += 1
        else:
            self._neutral += 1
        if cut:
            self._epoch += 1
            self._decreases += 1
        if new != limit:
            assert now is not None
            self._limit = new
            self._history.append((now, new))
        if self._waiters:
            self._wake()


def _outcome(exc: BaseException | None) -> int:
    if exc is None:
        return _SUCCESS
    return _FAILURE if isinstance(exc, Exception) else _NEUTRAL


class _Acquire(AbstractAsyncContextManager[None]):
    __slots__ = ("_borrower", "_limiter", "_weight")

    def __init__(self, limiter: AdaptiveLimiter, weight: int) -> None:
        self._limiter = limiter
        self._weight = weight
        self._borrower: object = None

    async def __aenter__(self) -> None:
        borrower = anyio.get_current_task()
        await self._limiter.acquire_on_behalf_of(borrower, weight=self._weight)
        self._borrower = borrower

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._limiter._release(self._borrower, _outcome(exc_val))


class _Held(AbstractContextManager[None]):
    """``with limiter.acquire_nowait():`` a permit already taken, given back on exit."""

    __slots__ = ("_borrower", "_limiter")

    def __init__(self, limiter: AdaptiveLimiter, borrower: object) -> None:
        self._limiter = limiter
        self._borrower = borrower

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._limiter._release(self._borrower, _outcome(exc_val))
