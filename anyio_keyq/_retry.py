"""Retry policies: exponential backoff with jitter, deadlines, and retry-after hints."""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import math
import numbers
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeAlias, TypeVar, TypeVarTuple, Unpack, cast

import anyio
from anyio.lowlevel import checkpoint

from ._util import check_callable, describe, final

T = TypeVar("T")
P = ParamSpec("P")
PosArgsT = TypeVarTuple("PosArgsT")

#: What :class:`Retry` accepts as ``retry_on``.
RetryOn: TypeAlias = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
Jitter: TypeAlias = Literal["full", "equal", "decorrelated", "none"]
# How a run of the retry loop ended, as counted by RetryStatistics.
Outcome: TypeAlias = Literal["succeeded", "exhausted", "out_of_time", "not_retryable", "cancelled"]

logger = logging.getLogger("anyio_keyq")

_JITTERS: tuple[Jitter, ...] = ("full", "equal", "decorrelated", "none")
# The default source of randomness: a generator of the module's own, so that neither
# seeding nor drawing from the global random state changes the delays, nor the reverse.
_RANDOM = random.Random()


def _check_real(name: str, value: object, *, low: float, what: str) -> float:
    """Return *value* as a float if it is a finite number >= *low*; else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not low <= number < math.inf:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a finite number {what}, got {value!r}")
    return number


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff: after failed attempt *n*, ``min(cap, base * factor**(n-1))``.

    With the defaults, the waits before the second, third, fourth... attempts are 0.1,
    0.2, 0.4, 0.8... seconds, and never more than 30 seconds. ``factor=1`` gives a
    constant delay of *base*. This is the delay *before jitter*: :class:`Retry` spreads
    it out at random (see its ``jitter``).

    A small immutable value: compare, hash and share it freely.

    :param base: the delay after the first failed attempt, in seconds (>= 0)
    :param factor: how much each delay grows over the one before (>= 1)
    :param cap: the largest delay, in seconds (>= *base*)
    :raises TypeError: if a parameter is not a number
    :raises ValueError: if a parameter is out of range, infinite or NaN

    .. versionadded:: 0.1.0
    """

    #: The delay after the first failed attempt, in seconds.
    base: float = 0.1
    #: The growth from one delay to the next.
    factor: float = 2.0
    #: The largest delay, in seconds.
    cap: float = 30.0

    def __post_init__(self) -> None:
        base = _check_real("base", self.base, low=0, what=">= 0 (seconds)")
        factor = _check_real("factor", self.factor, low=1, what=">= 1")
        cap = _check_real("cap", self.cap, low=0, what=">= 0 (seconds)")
        if cap < base:
            raise ValueError(f"cap must be >= base ({self.base!r}), got {self.cap!r}")
        # Floats, so that factor**n overflows quickly instead of building a huge int.
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "cap", cap)

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt number *attempt* (1 for the first), before jitter.

        ``min(cap, base * factor**(attempt - 1))``: ``delay(1)`` is *base*, the wait
        between the first attempt and the second. Never raises for a large *attempt*:
        the result is then *cap*.

        :raises TypeError: if *attempt* is not an int
        :raises ValueError: if *attempt* is < 1
        """
        _check_attempt(attempt)
        if self.base == 0:
            return 0.0
        try:
            delay = self.base * self.factor ** (attempt - 1)
        except OverflowError:
            return self.cap
        return min(self.cap, delay)


def _check_instance(name: str, value: object, cls: type, what: str) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what}, got {value!r}")


def _check_attempt(attempt: object) -> int:
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int >= 1, got {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    return attempt


def _check_attempts(attempts: object) -> float:
    if isinstance(attempts, float) and attempts == math.inf:
        return attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int >= 1 or math.inf, got {attempts!r}")
    if attempts < 1:
        raise ValueError(
            f"attempts must be >= 1 (the first attempt counts: 1 means no retry), got {attempts!r}"
        )
    return attempts


def _check_retry_on(retry_on: object) -> RetryOn:
    def check_class(name: str, cls: object) -> None:
        if not isinstance(cls, type) or not issubclass(cls, BaseException):
            raise TypeError(f"{name} must be an exception class, got {cls!r}")
        if not issubclass(cls, Exception):
            raise TypeError(
                f"{name} must be a subclass of Exception, got {cls!r}: cancellation and "
                f"other BaseExceptions are never retried"
            )

    if isinstance(retry_on, tuple):
        classes = cast("tuple[object, ...]", retry_on)
        if not classes:
            raise ValueError("retry_on must not be an empty tuple; to never retry, use attempts=1")
        for index, cls in enumerate(classes):
            check_class(f"retry_on[{index}]", cls)
        return cast("tuple[type[Exception], ...]", retry_on)
    if isinstance(retry_on, type):
        check_class("retry_on", retry_on)
        return cast("type[Exception]", retry_on)
    if callable(retry_on):
        return cast("Callable[[Exception], bool]", retry_on)
    raise TypeError(
        f"retry_on must be an exception class, a tuple of them, or a predicate "
        f"taking the exception, got {retry_on!r}"
    )


def _describe_retry_on(retry_on: object) -> str:
    def name(obj: object) -> str:
        return str(getattr(obj, "__qualname__", None) or repr(obj))

    if isinstance(retry_on, tuple):
        return "(" + ", ".join(name(cls) for cls in cast("tuple[object, ...]", retry_on)) + ")"
    return name(retry_on)


def retry_after_hint(exc: BaseException) -> float | None:
    """The retry-after hint *exc* carries, in seconds, or ``None`` for none or nonsense."""
    try:
        hint: object = getattr(exc, "retry_after", None)
    except Exception:  # a property that fails is no hint
        return None
    if isinstance(hint, datetime.timedelta):
        hint = hint.total_seconds()
    if isinstance(hint, bool) or not isinstance(hint, numbers.Real):
        return None
    try:
        seconds = float(hint)
    except (OverflowError, ValueError):
        return None
    if not 0 <= seconds < math.inf:  # NaN fails both comparisons
        return None
    return seconds


@final
@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """A snapshot of the runs of a :class:`Retry` policy, from :meth:`Retry.statistics`.

    A *run* is one call of :func:`retry`, of a function decorated with the policy, or
    of a job given the policy: its first attempt and all its retries. Every run that
    ended is counted in exactly one of :attr:`succeeded`, :attr:`exhausted`,
    :attr:`out_of_time`, :attr:`not_retryable` and :attr:`cancelled`; so ``calls`` is
    their sum plus :attr:`running`.
    """

    #: Runs started since the policy was created.
    calls: int
    #: Runs in progress now: in an attempt, or waiting before the next one.
    running: int
    #: Attempts after the first (each one started after a wait), over all runs.
    retries: int
    #: Runs that returned a value (at the first attempt or after retries).
    succeeded: int
    #: Runs whose last allowed attempt failed with a retryable exception.
    exhausted: int
    #: Runs that gave up before their last attempt because the wait for the next one
    #: would have ended at or after the enclosing deadline (or the enclosing scope was
    #: already cancelled).
    out_of_time: int
    #: Runs that ended at an exception the policy does not retry (or at an exception
    #: raised by its ``retry_on`` predicate).
    not_retryable: int
    #: Runs ended by cancellation, or by another :exc:`BaseException` that is not an
    #: :exc:`Exception` (such as :exc:`KeyboardInterrupt`).
    cancelled: int


@final
class Retry:
    """A retry policy: which failures to retry, how often, and how long to wait between.

    Networks drop packets, services restart, databases report deadlocks: many failures
    go away if the operation is simply tried again a little later. A :class:`Retry`
    describes how: at most *attempts* attempts in all, the waits between them growing
    exponentially (*backoff*) and spread out at random (*jitter*) so that many clients
    that failed together do not all come back at the same instant, retrying only the
    exceptions *retry_on* accepts. Use it with :func:`retry`, or as a decorator::

        policy = Retry(attempts=5, backoff=Backoff(base=0.2, cap=5.0), retry_on=OSError)

        page = await retry(fetch, url, policy=policy)

        @Retry(attempts=3, retry_on=ConnectionError)
        async def send(message: bytes) -> None: ...

    The policy is immutable configuration: share one object between any number of
    tasks (and event loops); its :meth:`statistics` count the runs of all of them.
    Unlike :func:`hedge`, which runs attempts *concurrently* to cut the latency of slow
    calls, a retry runs one attempt at a time, each after the previous one failed.

    **Cancellation.** The policy itself never blocks. The loops that follow it
    (:func:`retry`, decorated functions) let a cancellation through at once, whether
    it comes during an attempt or during a wait, and start no further attempt.

    **What is retried.** Only an :exc:`Exception` that *retry_on* accepts. Cancellation
    is never retried, nor any other :exc:`BaseException` (:exc:`KeyboardInterrupt`,
    :exc:`SystemExit`, :exc:`GeneratorExit`, a :exc:`BaseExceptionGroup` holding one of
    them). An :exc:`ExceptionGroup` is retried only if *retry_on* accepts the group
    itself: ``retry_on=OSError`` does not retry a group of :exc:`OSError`\\ s, while the
    default, ``Exception``, retries any group of exceptions. A predicate can look
    inside: ``lambda e: isinstance(e, ExceptionGroup) and e.split(OSError)[1] is None``
    retries a group whose exceptions are all :exc:`OSError`\\ s.

    **The waits.** After failed attempt *n*, the policy waits ``d = backoff.delay(n)``
    spread by *jitter*:

    * ``"full"`` (the default): a uniform random delay between 0 and *d*. The best
      spread, and the least total load on a struggling server.
    * ``"equal"``: ``d/2`` plus a uniform random delay between 0 and ``d/2``: never
      less than half the backoff.
    * ``"decorrelated"``: a uniform random delay between ``backoff.base`` and three
      times the previous wait, at most ``backoff.cap`` (*factor* is not used): waits
      grow on average, each drawn from the last one.
    * ``"none"``: exactly *d*. Predictable, but clients that failed together retry
      together.

    **Retry-after hints.** When *retry_after* is true and the exception has an
    attribute ``retry_after`` holding a number of seconds, the policy waits exactly
    that long: not less (no jitter), and not capped by ``backoff.cap``. See
    :doc:`retries` for this small protocol.

    :param attempts: how many attempts in all, the first one included (an int >= 1;
        1 means no retry), or ``math.inf`` to retry until the enclosing deadline
    :param backoff: the delays before jitter (a :class:`Backoff`)
    :param jitter: how to spread the delays: ``"full"``, ``"equal"``,
        ``"decorrelated"`` or ``"none"``
    :param retry_on: which exceptions to retry: an :exc:`Exception` subclass, a tuple
        of them, or a predicate called with the exception (it is called only with
        :exc:`Exception`\\ s; an exception it raises propagates)
    :param retry_after: whether to honour a ``retry_after`` attribute of the exception
    :param rng: the :class:`random.Random` to draw the jitter from (for tests and
        reproducible runs); by default one of the module's own, never the global
        random state
    :raises TypeError: if a parameter has the wrong type
    :raises ValueError: if a parameter is out of range

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_attempts",
        "_backoff",
        "_calls",
        "_cancelled",
        "_exhausted",
        "_jitter",
        "_not_retryable",
        "_out_of_time",
        "_retries",
        "_retry_after",
        "_retry_on",
        "_rng",
        "_succeeded",
    )

    def __init__(
        self,
        *,
        attempts: float = 3,
        backoff: Backoff = Backoff(),
        jitter: Jitter = "full",
        retry_on: RetryOn = Exception,
        retry_after: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self._attempts = _check_attempts(attempts)
        _check_instance(
            "backoff", backoff, Backoff, "a Backoff, such as Backoff(base=0.1, cap=5.0)"
        )
        if jitter not in _JITTERS:
            raise ValueError(
                f"jitter must be one of 'full', 'equal', 'decorrelated' or 'none', got {jitter!r}"
            )
        if jitter == "decorrelated" and backoff.base == 0:
            raise ValueError(
                "jitter='decorrelated' needs a backoff with base > 0, as every wait is "
                f"drawn between base and 3 times the previous one; got {backoff!r}"
            )
        _check_instance("retry_after", retry_after, bool, "a bool")
        if rng is not None:
            _check_instance("rng", rng, random.Random, "a random.Random or None")
        self._backoff = backoff
        self._jitter: Jitter = jitter
        self._retry_on = _check_retry_on(retry_on)
        self._retry_after = retry_after
        self._rng = _RANDOM if rng is None else rng
        self._calls = 0
        self._retries = 0
        self._succeeded = 0
        self._exhausted = 0
        self._out_of_time = 0
        self._not_retryable = 0
        self._cancelled = 0

    # -- configuration -------------------------------------------------------------

    @property
    def attempts(self) -> float:
        """How many attempts in all, the first included (``math.inf``: no limit)."""
        return self._attempts

    @property
    def backoff(self) -> Backoff:
        """The delays before jitter."""
        return self._backoff

    @property
    def jitter(self) -> Jitter:
        """How the delays are spread: ``"full"``, ``"equal"``, ``"decorrelated"``, ``"none"``."""
        return self._jitter

    @property
    def retry_on(self) -> RetryOn:
        """Which exceptions are retried: a class, a tuple of classes, or a predicate."""
        return self._retry_on

    @property
    def retry_after(self) -> bool:
        """Whether a ``retry_after`` hint carried by the exception sets the next wait."""
        return self._retry_after

    # -- decisions -----------------------------------------------------------------

    def retryable(self, exc: BaseException) -> bool:
        """Whether the policy retries *exc* (attempts left permitting).

        Always false for a :exc:`BaseException` that is not an :exc:`Exception`, such
        as cancellation. Calls the *retry_on* predicate, if there is one. Never blocks.

        :raises TypeError: if *exc* is not an exception
        """
        _check_instance("exc", exc, BaseException, "an exception")
        if not isinstance(exc, Exception):
            return False
        retry_on = self._retry_on
        if isinstance(retry_on, type | tuple):
            return isinstance(exc, retry_on)
        return bool(retry_on(exc))

    def next_delay(
        self, attempt: int, exc: BaseException, previous: float | None = None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, after attempt *attempt* failed.

        *attempt* counts from 1: after the first attempt failed, call
        ``next_delay(1, exc)``. Return ``None`` if the policy says to stop: *exc* is not
        retryable (cancellation never is) or *attempt* was the last one. Else return
        the exception's retry-after hint if it has one and *retry_after* is on, else
        ``backoff.delay(attempt)`` with jitter, drawn from the policy's random
        generator.

        *previous* is the wait before the failed attempt (``None`` after the first
        one); only ``jitter="decorrelated"`` uses it, and takes ``backoff.base`` when it
        is ``None`` or smaller.

        This checks no deadline (the caller knows its own), sleeps not, and counts
        nothing in :meth:`statistics`. Never blocks.

        :raises TypeError: if *attempt* is not an int, *exc* not an exception, or
            *previous* not a number
        :raises ValueError: if *attempt* < 1 or *previous* < 0
        """
        return self._decide(attempt, exc, previous)[0]

    def _decide(
        self, attempt: int, exc: BaseException, previous: float | None = None
    ) -> tuple[float, None] | tuple[None, Outcome]:
        """:meth:`next_delay`, and why it stops: ``(delay, None)`` or ``(None, outcome)``.

        For callers that run attempts themselves (``KeyedLanes``): the outcome to pass
        to :meth:`_record_outcome` is ``"not_retryable"`` or ``"exhausted"``.
        """
        _check_attempt(attempt)
        if previous is not None:
            previous = _check_real("previous", previous, low=0, what=">= 0 (seconds)")
        if not self.retryable(exc):
            return None, "not_retryable"
        if attempt >= self._attempts:
            return None, "exhausted"
        if self._retry_after:
            hint = retry_after_hint(exc)
            if hint is not None:
                return hint, None
        return self._jittered(attempt, previous), None

    def _jittered(self, attempt: int, previous: float | None) -> float:
        backoff = self._backoff
        uniform = self._rng.uniform
        jitter = self._jitter
        if jitter == "decorrelated":
            last = backoff.base if previous is None else max(previous, backoff.base)
            return min(backoff.cap, uniform(backoff.base, 3 * last))
        delay = backoff.delay(attempt)
        if jitter == "full":
            return uniform(0, delay)
        if jitter == "equal":
            return delay / 2 + uniform(0, delay / 2)
        return delay

    # -- statistics ----------------------------------------------------------------

    def _record_call(self) -> None:
        """Count a run that starts (before its first attempt)."""
        self._calls += 1

    def _record_retry(self) -> None:
        """Count an attempt after the first, as it starts (after its wait)."""
        self._retries += 1

    def _record_outcome(self, outcome: Outcome) -> None:
        """Count how a run ended; exactly once per :meth:`_record_call`."""
        if outcome == "succeeded":
            self._succeeded += 1
        elif outcome == "exhausted":
            self._exhausted += 1
        elif outcome == "out_of_time":
            self._out_of_time += 1
        elif outcome == "not_retryable":
            self._not_retryable += 1
        elif outcome == "cancelled":
            self._cancelled += 1
        else:
            raise ValueError(f"unknown outcome {outcome!r}")

    def _attempt_note(self, attempt: int, outcome: Outcome, delay: float | None = None) -> str:
        """The note added to the exception that ends a run with *outcome*."""
        if self._attempts == math.inf:
            where = f"attempt {attempt} (no limit on attempts)"
        else:
            where = f"attempt {attempt} of {self._attempts:g}"
        if outcome == "exhausted":
            why = "no attempts left"
        elif outcome == "out_of_time":
            why = f"gave up: the wait for the next one ({delay:.6g} s) would reach the deadline"
        else:
            why = "the policy does not retry this exception"
        return f"anyio_keyq.Retry: {where} failed; {why}"

    def statistics(self) -> RetryStatistics:
        """Return a :class:`RetryStatistics` snapshot of every run so far. Never blocks."""
        ended = (
            self._succeeded
            + self._exhausted
            + self._out_of_time
            + self._not_retryable
            + self._cancelled
        )
        return RetryStatistics(
            calls=self._calls,
            running=self._calls - ended,
            retries=self._retries,
            succeeded=self._succeeded,
            exhausted=self._exhausted,
            out_of_time=self._out_of_time,
            not_retryable=self._not_retryable,
            cancelled=self._cancelled,
        )

    # -- use as a decorator --------------------------------------------------------

    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an async function: each call of the result retries it with this policy.

        The result has the same signature (keyword arguments included), name and
        docstring (:func:`functools.wraps`); calling it is a checkpoint, as
        :func:`retry` is.

        :raises TypeError: if *fn* is not an async function
        """
        check_callable(fn)
        candidate: object = fn
        if inspect.isasyncgenfunction(candidate) or (
            inspect.isroutine(candidate) and not inspect.iscoroutinefunction(candidate)
        ):
            raise TypeError(f"Retry() decorates async functions (async def), got {describe(fn)!r}")

        @functools.wraps(fn)
        async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _run(self, fn, args, kwargs)

        return retrying

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<anyio_keyq.Retry at {id(self):#x}: attempts={self._attempts:g}, "
            f"backoff={self._backoff!r}, jitter={self._jitter!r}, "
            f"retry_on={_describe_retry_on(self._retry_on)}, "
            f"retry_after={self._retry_after!r}; {stats.running} running, "
            f"{stats.retries} retries>"
        )


_DEFAULT_POLICY = Retry()


async def _run(
    policy: Retry,
    fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    kwargs: dict[str, Any],
    on_attempt: Callable[[int], object] | None = None,
) -> T:
    """The retry loop of :func:`retry` and of decorated functions.

    Other code can run it too: ``on_attempt`` is called with the attempt number (1 for
    the first) just before each attempt starts, for a handle that shows it.
    """
    await checkpoint()
    policy._record_call()
    outcome: Outcome | None = None
    attempt = 1
    previous: float | None = None
    try:
        while True:
            if on_attempt is not None:
                on_attempt(attempt)
            try:
                value = await fn(*args, **kwargs)
            except Exception as exc:
                delay, stop = policy._decide(attempt, exc, previous)
                if delay is None:
                    assert stop is not None
                    outcome = stop
                    exc.add_note(policy._attempt_note(attempt, stop))
                    raise
                if anyio.current_time() + delay >= anyio.current_effective_deadline():
                    # The sleep would end at the deadline or after it (or the scope is
                    # already cancelled): sleeping only to be cancelled would hide the
                    # error behind the cancellation. Give up now, with the error.
                    outcome = "out_of_time"
                    exc.add_note(policy._attempt_note(attempt, outcome, delay))
                    raise
                logger.debug(
                    "Retrying %s in %.6g s: attempt %d failed with %r",
                    describe(fn),
                    delay,
                    attempt,
                    exc,
                )
            else:
                outcome = "succeeded"
                return value
            await anyio.sleep(delay)
            attempt += 1
            previous = delay
            policy._record_retry()
    except BaseException as exc:
        if outcome is None:
            # Cancellation, another BaseException, or a retry_on predicate that failed.
            outcome = "not_retryable" if isinstance(exc, Exception) else "cancelled"
        raise
    finally:
        assert outcome is not None
        policy._record_outcome(outcome)


async def retry(
    fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
    /,
    *args: *PosArgsT,
    policy: Retry | None = None,
) -> T:
    """Call ``fn(*args)``, and call it again after a wait while it fails and *policy* allows.

    Return the value of the first attempt that succeeds. After a failed attempt, ask
    ``policy.next_delay()`` how long to wait; if it says to stop, or if the wait would
    end at or after the enclosing deadline (:func:`anyio.current_effective_deadline`),
    raise the attempt's exception at once: there is no point in sleeping until the
    deadline only to be cancelled. Pass keyword arguments to *fn* with
    :func:`functools.partial`, or decorate *fn* with the policy instead::

        response = await retry(client.get, url, policy=Retry(attempts=5))

        with anyio.fail_after(10):  # retries stop in time for this deadline
            response = await retry(client.get, url)

    The exception raised is the last attempt's own, not a wrapper, with a note
    (``BaseException.add_note()``) saying which attempt it was and why it was the
    last, such as ``anyio_keyq.Retry: attempt 3 of 3 failed; no attempts left``.

    **Cancellation** is never retried: cancelled during an attempt or a wait,
    :func:`retry` lets the cancellation propagate at once, and starts no further
    attempt. :func:`retry` is a checkpoint (a cancel point and a schedule point) before
    it calls *fn*, even if *fn* never awaits anything.

    :param policy: the :class:`Retry` policy (default: ``Retry()``: 3 attempts, full
        jitter on ``Backoff()``, every :exc:`Exception` retried)
    :return: the value of the first successful attempt
    :raises TypeError: if *fn* is not callable or *policy* is not a :class:`Retry`

    .. versionadded:: 0.1.0
    """
    check_callable(fn)
    if policy is None:
        policy = _DEFAULT_POLICY
    else:
        _check_instance("policy", policy, Retry, "a Retry or None")
    return await _run(policy, fn, args, {})
