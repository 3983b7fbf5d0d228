"""Concurrency limiters: the protocol the lanes, scopes and adapters accept.

The two limiters of this module share one engine, :class:`_QueuedLimiter`: a count of
borrowed weight, the holders by borrower, and a queue of waiters that differ only in how
they are ranked (first come, first served; or by priority, with optional aging).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._util import check_positive_int, check_seconds, final

if TYPE_CHECKING:
    from types import TracebackType


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
      limiters that adapt to it (such as :class:`AdaptiveLimiter`); the others ignore it.

    ``isinstance(obj, Limiter)`` checks that *obj* has these four members.
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


# -- statistics -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class WeightedLimiterStatistics:
    """A snapshot of a :class:`WeightedLimiter`, from :meth:`WeightedLimiter.statistics`."""

    #: The most weight that may be held at once.
    total_tokens: int
    #: The weight held now. It exceeds ``total_tokens`` only after ``total_tokens`` was
    #: lowered below what was already held.
    borrowed_tokens: int
    #: The borrowers holding a permit, in the order they got it.
    borrowers: tuple[object, ...]
    #: Borrowers waiting for a permit.
    waiting: int
    #: The total weight they wait for.
    waiting_weight: int


@final
@dataclass(frozen=True, slots=True)
class PriorityLimiterStatistics:
    """A snapshot of a :class:`PriorityLimiter`, from :meth:`PriorityLimiter.statistics`."""

    #: The most weight that may be held at once.
    total_tokens: int
    #: The weight held now. It exceeds ``total_tokens`` only after ``total_tokens`` was
    #: lowered below what was already held.
    borrowed_tokens: int
    #: The borrowers holding a permit, in the order they got it.
    borrowers: tuple[object, ...]
    #: Borrowers waiting for a permit.
    waiting: int
    #: The total weight they wait for.
    waiting_weight: int
    #: ``(priority, count)`` of the waiters for each priority they asked for (before
    #: aging), best priority first.
    waiting_by_priority: tuple[tuple[float, int], ...]


# -- the rules every limiter of this package shares -------------------------------------
#
# The limiters check a request and word their errors alike, so that the shared contract of
# tests/test_limiters.py pins one wording for all of them (AdaptiveLimiter included).


def _check_weight(
    weight: object, total: int, hint: str = "such a permit could never be granted"
) -> int:
    """Return *weight* if it is an int from 1 to *total*; *hint* ends the error message."""
    weight = check_positive_int("weight", weight)
    if weight > total:
        raise ValueError(f"weight must be <= total_tokens ({total}), got {weight}: {hint}")
    return weight


def _check_priority(priority: object) -> float:
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        raise TypeError(f"priority must be a number, got {priority!r}")
    if math.isnan(priority):
        raise ValueError(f"priority must not be NaN, got {priority!r}")
    return priority


def _check_borrower(limiter: object, borrower: object, *, holds: bool, waits: bool) -> None:
    """Refuse a second permit, or a second wait, for one *borrower* of *limiter*."""
    if holds:
        raise RuntimeError(
            f"{borrower!r} already holds a permit of this {type(limiter).__name__}: "
            f"release it before acquiring again (acquiring one limiter twice in one "
            f"task, as with nested 'async with limiter.acquire()', would deadlock)"
        )
    if waits:
        raise RuntimeError(
            f"{borrower!r} is already waiting for a permit of this "
            f"{type(limiter).__name__}: use one borrower object per holder"
        )


def _no_permit(limiter: object, borrower: object) -> RuntimeError:
    """The error of releasing a permit that *borrower* does not hold."""
    return RuntimeError(
        f"{borrower!r} holds no permit of this {type(limiter).__name__}: "
        f"release only what was acquired, once, with the same borrower"
    )


# -- the shared engine ------------------------------------------------------------------


class _Waiter:
    """A borrower waiting in the queue of a limiter."""

    __slots__ = ("borrower", "event", "granted", "key", "priority", "removed", "weight")

    def __init__(self, borrower: object, weight: int, priority: float, key: float) -> None:
        self.borrower = borrower
        self.weight = weight
        self.priority = priority
        #: The rank in the queue: lower is served first (ties: first come, first served).
        self.key = key
        self.event = anyio.Event()
        #: Set with ``event``: the permit is the waiter's, even if it is never resumed.
        self.granted = False
        #: Left the queue while still in the heap (lazy deletion of PriorityLimiter).
        self.removed = False


class _QueuedLimiter:
    """The engine of WeightedLimiter and PriorityLimiter.

    Subclasses choose how waiters are ranked: ``_rank()`` gives the key of a newcomer,
    and ``_push``/``_head``/``_pop_head``/``_discard`` keep the queue. A newcomer may
    start at once only if no waiter ranks before it and its weight fits; a waiter at the
    head that does not fit holds up the others (strict order, so that it is never
    starved).
    """

    __slots__ = ("__weakref__", "_borrowed", "_holders", "_total", "_waiting_weight")

    def __init__(self, total: int) -> None:
        self._total = check_positive_int("total", total)
        self._borrowed = 0
        self._waiting_weight = 0
        #: borrower -> weight, in the order the permits were granted
        self._holders: dict[object, int] = {}

    # -- queue hooks, for the subclasses ------------------------------------------------

    def _may_start(self, weight: int, priority: float) -> bool:
        """Whether a new request may start at once: it fits and nobody ranks before it."""
        raise NotImplementedError

    def _rank(self, priority: float) -> float:
        """The key of a new request: lower is served first, ties by arrival."""
        raise NotImplementedError

    def _push(self, waiter: _Waiter) -> None:
        raise NotImplementedError

    def _head(self) -> _Waiter | None:
        raise NotImplementedError

    def _pop_head(self) -> None:
        raise NotImplementedError

    def _discard(self, waiter: _Waiter) -> None:
        raise NotImplementedError

    def _is_waiting(self, borrower: object) -> bool:
        raise NotImplementedError

    def _waiting_count(self) -> int:
        raise NotImplementedError

    # -- public members shared by both limiters -----------------------------------------

    @property
    def total_tokens(self) -> int:
        """The most weight that may be held at once: an int >= 1.

        Raising it grants waiters that now fit, in their order. Lowering it takes no
        permit back: the holders keep theirs, and nobody starts until the weight held
        has dropped far enough below the new total. A waiter heavier than the new total
        keeps its place and waits until the total is raised again (while it is at the
        head, it holds up the waiters behind it); a new request heavier than the total
        is a :exc:`ValueError`.
        """
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._total = check_positive_int("total_tokens", value)
        self._wake()

    @property
    def borrowed_tokens(self) -> int:
        """The weight held now by the borrowers."""
        return self._borrowed

    @property
    def available_tokens(self) -> int:
        """The weight that is free now (never negative, even after lowering the total).

        A request that fits may still have to wait, behind the waiters ranked before it.
        """
        return max(0, self._total - self._borrowed)

    def acquire_on_behalf_of_nowait(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Take a permit of *weight* for *borrower* at once, without waiting.

        It succeeds exactly when :meth:`acquire_on_behalf_of` would not have to wait: the
        weight fits, and no waiter is ranked before this request. It never jumps the
        queue.

        :param borrower: any hashable object, held by one holder only; release the
            permit with the same object
        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :param priority: the rank of the request (see the class)
        :raises ~anyio.WouldBlock: if the permit cannot be taken now
        :raises RuntimeError: if *borrower* already holds or awaits a permit of this
            limiter
        :raises ValueError: if *weight* exceeds ``total_tokens``
        """
        weight = self._check(borrower, weight, priority)
        if not self._may_start(weight, priority):
            raise anyio.WouldBlock
        self._grant(borrower, weight)

    async def acquire_on_behalf_of(
        self, borrower: object, /, *, weight: int = 1, priority: float = 0
    ) -> None:
        """Take a permit of *weight* for *borrower*, waiting for one if needed.

        This is a checkpoint, even when the permit is free. If it raises (cancelled,
        say), *borrower* holds nothing and waits for nothing, and a permit granted to it
        in the same instant passes on to the next waiter. If it returns, *borrower*
        holds the permit, even if its scope was cancelled once the permit was granted:
        the cancellation is then raised at the next checkpoint.

        :param borrower: any hashable object, held by one holder only; release the
            permit with the same object
        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :param priority: the rank of the request (see the class)
        :raises RuntimeError: if *borrower* already holds or awaits a permit of this
            limiter
        :raises ValueError: if *weight* exceeds ``total_tokens``
        """
        await checkpoint_if_cancelled()
        weight = self._check(borrower, weight, priority)
        if self._may_start(weight, priority):
            self._grant(borrower, weight)
            try:
                await cancel_shielded_checkpoint()
            except BaseException:
                self._give_back(borrower)
                raise
            return

        waiter = _Waiter(borrower, weight, priority, self._rank(priority))
        self._push(waiter)
        self._waiting_weight += weight
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # granted in the same instant it was cancelled: pass the permit on
                self._give_back(borrower)
            else:
                self._discard(waiter)
                self._waiting_weight -= weight
                # it may have been the head that held up lighter waiters behind it
                self._wake()
            raise

    def release_on_behalf_of(self, borrower: object, /, *, failed: bool = False) -> None:
        """Give back the permit of *borrower*, and grant waiters that now fit.

        Not a checkpoint; never blocks.

        :param borrower: the object the permit was taken for
        :param failed: ignored by this limiter (see :class:`Limiter`)
        :raises RuntimeError: if *borrower* holds no permit of this limiter
        """
        try:
            weight = self._holders.pop(borrower)
        except KeyError:
            raise _no_permit(self, borrower) from None
        self._borrowed -= weight
        self._wake()

    # -- internals ----------------------------------------------------------------------

    def _check(self, borrower: object, weight: object, priority: object) -> int:
        checked = _check_weight(weight, self._total)
        _check_priority(priority)
        _check_borrower(
            self, borrower, holds=borrower in self._holders, waits=self._is_waiting(borrower)
        )
        return checked

    def _grant(self, borrower: object, weight: int) -> None:
        self._holders[borrower] = weight
        self._borrowed += weight

    def _give_back(self, borrower: object) -> None:
        """Return a permit on a cancelled acquire (tolerating one released meanwhile)."""
        weight = self._holders.pop(borrower, None)
        if weight is not None:
            self._borrowed -= weight
            self._wake()

    def _wake(self) -> None:
        """Grant the waiters at the head of the queue, as long as they fit."""
        while (head := self._head()) is not None and self._borrowed + head.weight <= self._total:
            self._pop_head()
            self._waiting_weight -= head.weight
            self._grant(head.borrower, head.weight)
            head.granted = True
            head.event.set()

    def _acquire_cm(self, weight: int, priority: float) -> _Acquire:
        return _Acquire(self, weight, priority)

    def _acquire_nowait_cm(self, weight: int, priority: float) -> _Held:
        borrower = anyio.get_current_task()
        self.acquire_on_behalf_of_nowait(borrower, weight=weight, priority=priority)
        return _Held(self, borrower)

    def _summary(self) -> str:
        return (
            f"{self._borrowed}/{self._total} tokens borrowed by {len(self._holders)}, "
            f"{self._waiting_count()} waiting"
        )


class _Acquire:
    """``async with limiter.acquire():`` a permit for the current task, for the block."""

    __slots__ = ("_borrower", "_limiter", "_priority", "_weight")

    def __init__(self, limiter: _QueuedLimiter, weight: int, priority: float) -> None:
        self._limiter = limiter
        self._weight = weight
        self._priority = priority
        self._borrower: object = None

    async def __aenter__(self) -> None:
        if self._borrower is not None:
            raise RuntimeError(
                "this limiter.acquire() context manager is already in use: call "
                "limiter.acquire() for each 'async with'"
            )
        borrower = anyio.get_current_task()
        await self._limiter.acquire_on_behalf_of(
            borrower, weight=self._weight, priority=self._priority
        )
        self._borrower = borrower

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        borrower, self._borrower = self._borrower, None
        self._limiter.release_on_behalf_of(borrower)


class _Held:
    """``with limiter.acquire_nowait():`` a permit already taken, given back on exit."""

    __slots__ = ("_borrower", "_limiter")

    def __init__(self, limiter: _QueuedLimiter, borrower: object) -> None:
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
        self._limiter.release_on_behalf_of(self._borrower)


# -- the limiters -----------------------------------------------------------------------


@final
class WeightedLimiter(_QueuedLimiter):
    """A capacity limiter whose permits have a weight, served strictly first come, first served.

    Like :class:`anyio.CapacityLimiter`, it caps how much runs at once, but each permit
    takes *weight* units of ``total`` rather than one: a heavy query can count for four
    light ones. Waiters are served in arrival order, and a heavy waiter at the head is
    not overtaken by lighter ones behind it, even when they would fit: it gets its
    permit as soon as enough weight is free, so it is never starved. For the same
    reason, a request never jumps the queue, not even with ``acquire_nowait``.

    .. code-block:: python

        limiter = WeightedLimiter(10)

        async def query(sql: str, cost: int) -> None:
            async with limiter.acquire(cost):
                await database.execute(sql)

    The *priority* argument of the :class:`Limiter` methods is ignored (it is checked
    to be a number, so that the call works with a :class:`PriorityLimiter` too); to
    serve some requests first, use a :class:`PriorityLimiter`.

    A borrower holds at most one permit at a time: acquiring again before releasing,
    as in nested ``async with limiter.acquire():`` blocks of one task, raises
    :exc:`RuntimeError` instead of deadlocking.

    **Cancellation.** A cancelled acquire takes no permit and leaves the queue, and any
    waiters it held up may start. A permit granted in the same instant as the
    cancellation passes on to the next waiter.

    The limiter can be created before an event loop runs. It is not thread-safe.

    :param total: the most weight held at once, an int >= 1 (see :attr:`total_tokens`)
    """

    __slots__ = ("_waiters",)

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._waiters: OrderedDict[object, _Waiter] = OrderedDict()

    def acquire(self, weight: int = 1) -> AbstractAsyncContextManager[None]:
        """Hold a permit of *weight* for the current task during an ``async with`` block.

        Entering waits for the permit and is a checkpoint, even when the permit is free
        (see :meth:`acquire_on_behalf_of`); leaving gives it back, never blocks and is not
        a checkpoint.

        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :raises RuntimeError: on entry, if the current task already holds a permit of
            this limiter
        :raises ValueError: on entry, if *weight* exceeds ``total_tokens``
        """
        return self._acquire_cm(weight, 0)

    def acquire_nowait(self, weight: int = 1) -> AbstractContextManager[None]:
        """Take a permit of *weight* for the current task at once, for a ``with`` block.

        The permit is taken by the call itself (not on entering the block) and given
        back when the block is left. Not a checkpoint; never blocks.

        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :raises ~anyio.WouldBlock: if the permit cannot be taken now
        :raises RuntimeError: if the current task already holds a permit of this limiter
        :raises ValueError: if *weight* exceeds ``total_tokens``
        """
        return self._acquire_nowait_cm(weight, 0)

    def statistics(self) -> WeightedLimiterStatistics:
        """Return a snapshot of the limiter. Not a checkpoint."""
        return WeightedLimiterStatistics(
            total_tokens=self._total,
            borrowed_tokens=self._borrowed,
            borrowers=tuple(self._holders),
            waiting=len(self._waiters),
            waiting_weight=self._waiting_weight,
        )

    def __repr__(self) -> str:
        return f"<anyio_keyq.WeightedLimiter at {id(self):#x}: {self._summary()}>"

    # -- a first-come, first-served queue ---------------------------------------------

    def _rank(self, priority: float) -> float:
        return 0.0

    def _may_start(self, weight: int, priority: float) -> bool:
        return not self._waiters and self._borrowed + weight <= self._total

    def _push(self, waiter: _Waiter) -> None:
        self._waiters[waiter.borrower] = waiter

    def _head(self) -> _Waiter | None:
        for waiter in self._waiters.values():
            return waiter
        return None

    def _pop_head(self) -> None:
        self._waiters.popitem(last=False)

    def _discard(self, waiter: _Waiter) -> None:
        del self._waiters[waiter.borrower]

    def _is_waiting(self, borrower: object) -> bool:
        return borrower in self._waiters

    def _waiting_count(self) -> int:
        return len(self._waiters)


@final
class PriorityLimiter(_QueuedLimiter):
    """A weighted capacity limiter that serves the waiters with the best priority first.

    Each request has a *priority*, a number: lower is served first, and requests of
    equal priority are served first come, first served. The order is strict, as in
    :class:`WeightedLimiter`: the best waiter blocks the others until its weight fits,
    so a heavy urgent request is not overtaken by lighter, less urgent ones. A new
    request starts at once only if its weight fits and no waiter ranks before it: one
    with a strictly better priority than every waiter skips the queue, since it would
    be served first anyway.

    .. code-block:: python

        limiter = PriorityLimiter(4, aging=10)

        async def fetch(url: str, interactive: bool) -> bytes:
            async with limiter.acquire(priority=0 if interactive else 5):
                return await download(url)

    **Aging.** Strict priorities can starve the worse ones forever under a steady load of
    better ones. With ``aging=seconds``, a waiter's priority improves continuously, by
    one level per *aging* seconds waited: a request of priority 5 that has waited 30
    seconds with ``aging=10`` ranks like a request of priority 2 arriving now, and is
    served before it (it came first). Equivalently, waiters are served in the order of
    ``priority * aging + arrival time``, which keeps the queue exact without ever
    re-sorting it.

    A borrower holds at most one permit at a time: acquiring again before releasing, as
    in nested ``async with limiter.acquire():`` blocks of one task, raises
    :exc:`RuntimeError` instead of deadlocking.

    **Cancellation.** A cancelled acquire takes no permit and leaves the queue, and any
    waiters it held up may start. A permit granted in the same instant as the
    cancellation passes on to the next waiter.

    The limiter can be created before an event loop runs. It is not thread-safe.

    :param total: the most weight held at once, an int >= 1 (see :attr:`total_tokens`)
    :param aging: seconds per priority level gained while waiting (> 0), or ``None``
        for fixed priorities
    """

    __slots__ = ("_aging", "_dead", "_heap", "_seq", "_waiters")

    def __init__(self, total: int, *, aging: float | None = None) -> None:
        super().__init__(total)
        if aging is not None:
            aging = check_seconds("aging", aging, allow_zero=False)
            if math.isinf(aging):
                raise ValueError(f"aging must be a finite number of seconds, got {aging!r}")
        self._aging = aging
        #: (key, sequence number, waiter): the best waiter first, ties by arrival
        self._heap: list[tuple[float, int, _Waiter]] = []
        #: waiters in the heap that have left the queue
        self._dead = 0
        self._seq = 0
        self._waiters: dict[object, _Waiter] = {}

    @property
    def aging(self) -> float | None:
        """Seconds per priority level gained while waiting, or ``None`` (read-only)."""
        return self._aging

    def acquire(self, weight: int = 1, *, priority: float = 0) -> AbstractAsyncContextManager[None]:
        """Hold a permit of *weight* for the current task during an ``async with`` block.

        Entering waits for the permit and is a checkpoint, even when the permit is free
        (see :meth:`acquire_on_behalf_of`); leaving gives it back, never blocks and is not
        a checkpoint.

        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :param priority: lower is served first
        :raises RuntimeError: on entry, if the current task already holds a permit of
            this limiter
        :raises ValueError: on entry, if *weight* exceeds ``total_tokens``
        """
        return self._acquire_cm(weight, priority)

    def acquire_nowait(
        self, weight: int = 1, *, priority: float = 0
    ) -> AbstractContextManager[None]:
        """Take a permit of *weight* for the current task at once, for a ``with`` block.

        The permit is taken by the call itself (not on entering the block) and given
        back when the block is left. Not a checkpoint; never blocks.

        :param weight: how much of ``total_tokens`` the permit takes: an int from 1 to
            ``total_tokens``
        :param priority: lower is served first
        :raises ~anyio.WouldBlock: if the permit cannot be taken now
        :raises RuntimeError: if the current task already holds a permit of this limiter
        :raises ValueError: if *weight* exceeds ``total_tokens``
        """
        return self._acquire_nowait_cm(weight, priority)

    def statistics(self) -> PriorityLimiterStatistics:
        """Return a snapshot of the limiter. Not a checkpoint."""
        counts: dict[float, int] = {}
        for waiter in self._waiters.values():
            counts[waiter.priority] = counts.get(waiter.priority, 0) + 1
        return PriorityLimiterStatistics(
            total_tokens=self._total,
            borrowed_tokens=self._borrowed,
            borrowers=tuple(self._holders),
            waiting=len(self._waiters),
            waiting_weight=self._waiting_weight,
            waiting_by_priority=tuple(sorted(counts.items())),
        )

    def __repr__(self) -> str:
        aging = "" if self._aging is None else f", aging={self._aging!r}"
        return f"<anyio_keyq.PriorityLimiter at {id(self):#x}: {self._summary()}{aging}>"

    # -- a priority queue: a heap with lazy deletion ----------------------------------

    def _may_start(self, weight: int, priority: float) -> bool:
        if self._borrowed + weight > self._total:
            return False
        head = self._head()
        return head is None or self._rank(priority) < head.key

    def _rank(self, priority: float) -> float:
        if self._aging is None:
            return priority
        # time-invariant: waiter A goes before B when A's priority, improved by one
        # level per `aging` seconds waited, is better than B's, at any instant
        return priority * self._aging + anyio.current_time()

    def _push(self, waiter: _Waiter) -> None:
        self._waiters[waiter.borrower] = waiter
        heapq.heappush(self._heap, (waiter.key, self._seq, waiter))
        self._seq += 1

    def _head(self) -> _Waiter | None:
        heap = self._heap
        while heap:
            waiter = heap[0][2]
            if not waiter.removed:
                return waiter
            heapq.heappop(heap)
            self._dead -= 1
        return None

    def _pop_head(self) -> None:
        waiter = heapq.heappop(self._heap)[2]
        del self._waiters[waiter.borrower]

    def _discard(self, waiter: _Waiter) -> None:
        del self._waiters[waiter.borrower]
        waiter.removed = True
        self._dead += 1
        if self._dead > len(self._waiters):
            # mostly dead entries: rebuild, so that cancelled waiters cost no memory
            self._heap = [entry for entry in self._heap if not entry[2].removed]
            heapq.heapify(self._heap)
            self._dead = 0

    def _is_waiting(self, borrower: object) -> bool:
        return borrower in self._waiters

    def _waiting_count(self) -> int:
        return len(self._waiters)
