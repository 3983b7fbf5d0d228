"""RateLimiter: at most *rate* operations per *per* seconds, from a token bucket."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._util import check_positive_int, check_positive_number, final


class _TokenBucket:
    """The arithmetic of a token bucket, on instants given by the caller.

    No clock, no waiters, no validation: a few numbers, cheap enough to keep one per
    key. :class:`RateLimiter` adds the clock, the validation and the FIFO of waiters.

    It is the generic cell rate algorithm (GCRA). A token comes back every
    ``per / rate`` seconds, up to ``burst`` tokens. The whole state is the instant
    ``tat`` (the "theoretical arrival time") from which the bucket is full: before it,
    the bucket holds ``burst - (tat - now) * rate / per`` tokens. Taking *n* tokens
    moves ``tat`` on by ``n * per / rate``, from ``now`` if the bucket was full.

    ``tat`` is kept as ``origin + count * per / rate`` with an integer *count*, and
    every instant is computed in one step from integers: ``origin`` changes only when
    the bucket was full, so rounding errors never add up. With ``rate=10``, the
    instants of a busy bucket are ``origin + k / 10``, correctly rounded.
    """

    __slots__ = ("_count", "_origin", "burst", "per", "rate")

    def __init__(self, rate: float, per: float, burst: int) -> None:
        self.rate = rate
        self.per = per
        self.burst = burst
        self._origin = -math.inf  # a new bucket is full
        self._count = 0

    def instant(self, count: int) -> float:
        """``origin`` plus the time *count* tokens take to come back."""
        return self._origin + count * self.per / self.rate

    def ready_at(self, n: int, ahead: int = 0) -> float:
        """The instant from which *n* tokens are there, once *ahead* tokens are taken.

        It can be in the past (``-math.inf`` for a bucket never used).
        """
        return self.instant(self._count + ahead + n - self.burst)

    def take(self, n: int, now: float) -> None:
        """Take *n* tokens at *now*, whether they are there or not: the caller checks."""
        if now > self.instant(self._count):  # the bucket was full: start afresh from now
            self._origin = now
            self._count = n
        else:
            self._count += n

    def tokens(self, now: float) -> float:
        """How many tokens the bucket holds at *now* (a fraction while refilling)."""
        tat = self.instant(self._count)
        if now >= tat:
            return float(self.burst)
        return max(0.0, self.burst - (tat - now) * self.rate / self.per)


class _Waiter:
    __slots__ = ("event", "n")

    def __init__(self, n: int, event: anyio.Event | None) -> None:
        self.n = n
        # Set when the waiter becomes the first in line; the first has none.
        self.event = event


@final
@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`, from :meth:`RateLimiter.statistics`."""

    #: Operations allowed per ``per`` seconds.
    rate: float
    #: The period of ``rate``, in seconds.
    per: float
    #: The size of the bucket: the most tokens taken at once after an idle spell.
    burst: int
    #: Tokens in the bucket now, from 0 to ``burst``: a fraction while it refills.
    #: They may be promised to the tasks waiting.
    tokens: float
    #: Tasks waiting in :meth:`RateLimiter.acquire`.
    waiting: int
    #: Tokens the waiting tasks ask for, in all.
    waiting_tokens: int
    #: Tokens handed out since the limiter was created.
    acquired: int


@final
class RateLimiter:
    """Let at most *rate* operations start every *per* seconds, with bursts of *burst*.

    Call :meth:`acquire` before each operation: it returns at once while tokens are
    left, and otherwise waits, first come first served, until enough have come back.

    .. code-block:: python

        limiter = RateLimiter(10, per=1.0)  # the API allows 10 requests a second

        async def fetch(url: str) -> bytes:
            await limiter.acquire()
            return await client.get(url)

    It is a token bucket: a token comes back every ``per / rate`` seconds, and the
    bucket holds at most ``burst`` of them (by default ``rate`` rounded down, at least
    1: a whole period's worth). After an idle spell, ``burst`` operations can start at
    once; then they start at the steady pace of one every ``per / rate`` seconds. With
    ``burst=1``, operations are evenly spaced and never closer than ``per / rate``.

    Unlike :class:`anyio.CapacityLimiter`, which bounds how many operations *run at
    once* and takes its tokens back when each ends, a rate limiter bounds how many
    *start* in a span of time: nothing is released, and a token comes back by itself
    after a while. Combine the two for a downstream with both limits.

    It is computed lazily from the event loop's clock (:func:`anyio.current_time`):
    there is no background task, an idle limiter costs nothing, and on a virtual
    clock the instants are exact. It can be created before an event loop runs.

    **Cancellation.** A task cancelled while it waits in :meth:`acquire` takes no
    token and leaves no trace: the tasks behind it move up at once, and are not
    delayed by it.

    :param rate: how many operations may start every *per* seconds (a finite number
        > 0; it need not be whole: ``RateLimiter(0.5)`` lets one start every two
        seconds)
    :param per: the period of *rate*, in seconds (a finite number > 0)
    :param burst: the size of the bucket: the most operations that may start at once
        (an int >= 1; default: *rate* rounded down, at least 1)
    """

    __slots__ = ("_acquired", "_bucket", "_waiters", "_waiting_tokens")

    def __init__(self, rate: float, per: float = 1.0, *, burst: int | None = None) -> None:
        rate = check_positive_number("rate", rate)
        per = check_positive_number("per", per)
        size = max(1, math.floor(rate)) if burst is None else check_positive_int("burst", burst)
        self._bucket = _TokenBucket(rate, per, size)
        self._waiters: deque[_Waiter] = deque()
        self._waiting_tokens = 0
        self._acquired = 0

    @property
    def rate(self) -> float:
        """Operations allowed per :attr:`per` seconds."""
        return self._bucket.rate

    @property
    def per(self) -> float:
        """The period of :attr:`rate`, in seconds."""
        return self._bucket.per

    @property
    def burst(self) -> int:
        """The size of the bucket: the most tokens that may be taken at once."""
        return self._bucket.burst

    def _check_n(self, n: object) -> int:
        checked = check_positive_int("n", n)
        burst = self._bucket.burst
        if checked > burst:
            raise ValueError(
                f"n must be <= burst ({burst}), got {checked}: a bucket of {burst} tokens "
                f"never holds {checked}; create the RateLimiter with burst={checked} or more"
            )
        return checked

    def acquire_nowait(self, n: int = 1) -> None:
        """Take *n* tokens at once, or raise :exc:`anyio.WouldBlock`.

        Not a checkpoint; never blocks. It does not jump the queue: it fails while
        other tasks wait in :meth:`acquire`, even if the bucket holds *n* tokens.

        :raises anyio.WouldBlock: if the bucket holds fewer than *n* tokens, or other
            tasks are waiting
        :raises ValueError: if *n* exceeds :attr:`burst`
        """
        n = self._check_n(n)
        now = anyio.current_time()
        if self._waiters or self._bucket.ready_at(n) > now:
            raise anyio.WouldBlock
        self._bucket.take(n, now)
        self._acquired += n

    async def acquire(self, n: int = 1) -> None:
        """Take *n* tokens, waiting until the bucket holds them.

        Waiting tasks are served first come, first served: a task asking for many
        tokens is not overtaken by later ones asking for fewer. This is a checkpoint.
        If it is cancelled, no token is taken.

        :raises ValueError: if *n* exceeds :attr:`burst` (at once: it could never be
            served)
        """
        n = self._check_n(n)
        await checkpoint_if_cancelled()
        bucket = self._bucket
        waiters = self._waiters
        now = anyio.current_time()
        if not waiters:
            if bucket.ready_at(n) <= now:
                bucket.take(n, now)
                self._acquired += n
                await cancel_shielded_checkpoint()
                return
        waiter = _Waiter(n, anyio.Event() if waiters else None)
        waiters.append(waiter)
        self._waiting_tokens += n
        try:
            if waiter.event is not None:
                await waiter.event.wait()  # until it is the first in line
                now = anyio.current_time()
            # The first in line: its instant cannot change any more, as nobody else
            # takes tokens before it. (A first in line from the start has a delay > 0.)
            delay = bucket.ready_at(n) - now
            if delay > 0:
                await anyio.sleep(delay)
        except BaseException:
            first = waiters[0] is waiter
            waiters.remove(waiter)
            self._waiting_tokens -= n
            if first and waiters:
                self._promote()
            raise
        waiters.popleft()
        self._waiting_tokens -= n
        bucket.take(n, anyio.current_time())
        self._acquired += n
        if waiters:
            self._promote()

    def _try_take(self, n: int, now: float, slack: float) -> bool:
        """Take *n* tokens if they are due by ``now + slack`` and nobody waits.

        For :class:`~anyio_keyq.KeyedLanes`, which schedule their own wake-ups: a
        wake-up on a virtual clock can land a hair before the instant it was set for.
        """
        if self._waiters or self._bucket.ready_at(n) > now + slack:
            return False
        self._bucket.take(n, now)
        self._acquired += n
        return True

    def _promote(self) -> None:
        """Wake the new first in line, to wait for its own instant."""
        event = self._waiters[0].event
        assert event is not None
        event.set()

    def ready_at(self, n: int = 1) -> float:
        """When *n* tokens will be there for a new caller, on :func:`anyio.current_time`.

        It counts the tokens of the tasks already waiting, which are served first, and
        it is never earlier than the current time: it is the current time when the
        tokens are there now. The instant is exact: from then on, ``acquire_nowait(n)``
        succeeds, unless other tasks have taken tokens in between (and it comes
        earlier if waiters are cancelled). Use it to schedule work that must not wait
        inside :meth:`acquire`. Not a checkpoint.

        :raises ValueError: if *n* exceeds :attr:`burst`
        """
        n = self._check_n(n)
        return max(anyio.current_time(), self._bucket.ready_at(n, self._waiting_tokens))

    def statistics(self) -> RateLimiterStatistics:
        """Return a :class:`RateLimiterStatistics` snapshot. Not a checkpoint."""
        bucket = self._bucket
        return RateLimiterStatistics(
            rate=bucket.rate,
            per=bucket.per,
            burst=bucket.burst,
            tokens=bucket.tokens(anyio.current_time()),
            waiting=len(self._waiters),
            waiting_tokens=self._waiting_tokens,
            acquired=self._acquired,
        )

    def __repr__(self) -> str:
        bucket = self._bucket
        return (
            f"<anyio_keyq.RateLimiter at {id(self):#x}: {bucket.rate:g} per {bucket.per:g} s, "
            f"burst {bucket.burst}, {len(self._waiters)} waiting, {self._acquired} acquired>"
        )
