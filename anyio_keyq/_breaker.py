"""CircuitBreaker: fail fast while a downstream is failing, and let one trial call probe it."""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeAlias, TypeVar, TypeVarTuple, Unpack, cast

import anyio
from anyio.lowlevel import checkpoint

from ._exceptions import CircuitOpen
from ._util import check_callable, check_positive_int, check_positive_number, describe, final

T = TypeVar("T")
P = ParamSpec("P")
PosArgsT = TypeVarTuple("PosArgsT")

logger = logging.getLogger("anyio_keyq")


class CircuitState(enum.Enum):
    """The state of a :class:`CircuitBreaker`.

    .. attribute:: CLOSED

        Calls go through; failures in a row are counted.
    .. attribute:: OPEN

        Calls fail fast with :exc:`CircuitOpen`, until the recovery time has passed.
    .. attribute:: HALF_OPEN

        The recovery time has passed: the next call is the one *trial* call, and every
        other call fails fast while it is in flight. Its success closes the circuit,
        its failure opens it again.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

#: What decides which exceptions are failures: a class, a tuple of classes, a predicate.
FailureOn: TypeAlias = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
#: ``on_change(breaker, old, new)``, called after each change of state.
OnChange: TypeAlias = Callable[["CircuitBreaker", CircuitState, CircuitState], object]


@final
@dataclass(frozen=True, slots=True)
class CircuitBreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker`, from :meth:`CircuitBreaker.statistics`."""

    #: The state now (an open breaker whose recovery time has passed is half-open).
    state: CircuitState
    #: Failures in a row counted while closed (0 in the other states).
    consecutive_failures: int
    #: Whether the one trial call of the half-open state is in flight.
    trial_in_flight: bool
    #: Successful trial calls in the current half-open state (out of ``success_threshold``).
    trial_successes: int
    #: Calls let through and not finished yet.
    in_flight: int
    #: Calls let through since the breaker was created (trial calls included).
    calls: int
    #: Calls that ended with success (or an exception that ``failure_on`` does not match).
    successes: int
    #: Calls that ended with an exception that ``failure_on`` matches.
    failures: int
    #: Calls refused with :exc:`CircuitOpen`.
    rejections: int
    #: Trial calls started (each half-open period has one or more).
    trials: int
    #: Times the circuit opened: by failures in a row, a failed trial, or
    #: :meth:`~CircuitBreaker.trip`.
    opened: int
    #: When the circuit last opened, on the event loop's clock (``None``: never).
    opened_at: float | None
    #: While open: from when the next trial call may start, on the event loop's clock.
    #: ``None`` in the other states (half-open: the next caller is the trial, unless one
    #: is in flight).
    next_trial_at: float | None


def _check_failure_on(failure_on: object) -> Callable[[Exception], bool]:
    """Return a predicate for *failure_on*, or raise TypeError naming it."""
    if isinstance(failure_on, type):
        if issubclass(failure_on, Exception):
            cls = failure_on
            return lambda exc: isinstance(exc, cls)
    elif isinstance(failure_on, tuple):
        classes: tuple[object, ...] = failure_on  # pyright: ignore[reportUnknownVariableType]
        if classes and all(isinstance(c, type) and issubclass(c, Exception) for c in classes):
            checked: tuple[type[Exception], ...] = classes  # type: ignore[assignment]
            return lambda exc: isinstance(exc, checked)
    elif callable(failure_on):
        return cast("Callable[[Exception], bool]", failure_on)
    raise TypeError(
        f"failure_on must be an Exception subclass, a non-empty tuple of them, or a "
        f"predicate that takes an exception and returns True for a failure, got {failure_on!r}"
    )


@final
class CircuitBreaker:
    """Fail fast while a downstream is failing, and let exactly one trial call probe it.

    A service that is down costs its callers dearly: each call waits for a timeout or
    an error, holds a connection and a task meanwhile, and the retries pile more load
    on a service that is trying to recover. A circuit breaker counts the failures of
    the calls that go through it; after ``failure_threshold`` failures *in a row*, it
    *opens*, and for ``recovery_time`` seconds every call fails at once with
    :exc:`CircuitOpen`, without touching the downstream. Then it is *half-open*: the
    next call is a *trial*. While the trial is in flight, every other call still fails
    fast: **exactly one trial call at a time**, however many tasks call at once. If
    the trial succeeds, the circuit *closes* and calls flow again; if it fails, the
    circuit opens for another ``recovery_time``.

    .. code-block:: python

        breaker = CircuitBreaker(failure_threshold=5, recovery_time=30.0, name="billing")

        try:
            invoice = await breaker.call(billing.fetch_invoice, invoice_id)
        except CircuitOpen as exc:
            ...  # billing is down: answer from a cache, or ask again in exc.retry_after s

    It can also guard a block, ``async with breaker.guard(): ...``, or decorate an
    async function, ``@breaker.guarded``. One breaker is for one downstream (one host,
    one service); :class:`KeyedLanes` can give each key a breaker of its own.

    **What counts.** A call that returns is a success; a success in the closed state
    resets the count of failures in a row. A call that raises an :exc:`Exception`
    matched by ``failure_on`` (by default, any) is a failure. An exception that
    ``failure_on`` does not match (a "not found", a validation error) is an *answer*
    of the downstream, and counts as a success. An exception group is a failure if any
    exception in it is one, else a success if it holds any other :exc:`Exception`.

    **Cancellation counts as no outcome.** A cancelled call (or one that raises any
    other :exc:`BaseException` that is not an :exc:`Exception`, such as
    :exc:`KeyboardInterrupt`) tells nothing about the downstream: it is neither a
    success nor a failure, and never opens the circuit. A cancelled trial frees the
    trial slot at once: the next caller becomes the trial, without waiting for another
    recovery time. A downstream that *hangs* is therefore not a failure by itself: give
    the calls a time limit *inside* the guarded call (``anyio.fail_after`` in the
    called function), so that they fail with :exc:`TimeoutError`; a time limit around
    the call only cancels it.

    **No timers, no tasks.** The breaker is a few counters and an instant: the change
    from open to half-open is computed from the event loop's clock
    (:func:`anyio.current_time`, so virtual clocks work) when the breaker is used or
    looked at. It needs no task group, and can be created before an event loop runs;
    use it from the event loop's thread only (like anyio's and trio's primitives, it is
    not thread-safe).

    **Observing it.** :attr:`state`, :meth:`statistics`, and *on_change*: a function
    called as ``on_change(breaker, old, new)`` after each change of state, in the task
    that caused it. It must not block; an exception it raises is logged (logger
    ``anyio_keyq``) and does not disturb the call. The change from open to half-open is
    reported when the first trial starts, just before it runs.

    Unlike a retry loop, which makes one caller try harder, a breaker makes all callers
    try *less*: the two compose, and :attr:`CircuitOpen.retry_after` tells a retry
    policy exactly how long to wait.

    :param failure_threshold: failures in a row that open the circuit (an int >= 1)
    :param recovery_time: seconds the circuit stays open before a trial call (a finite
        number > 0)
    :param failure_on: which exceptions are failures: an :exc:`Exception` subclass, a
        tuple of them, or a predicate ``failure_on(exc) -> bool`` (which must not raise:
        if it does, the call counts as a failure and the predicate's exception
        propagates)
    :param success_threshold: successful trial calls, one after another, that close
        the circuit (an int >= 1); a failed trial opens it again
    :param name: a name for messages and reprs (for the breakers of lanes, the key)
    :param on_change: called as ``on_change(breaker, old, new)`` after each change of
        state

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_clock",
        "_consecutive",
        "_epoch",
        "_failure_on",
        "_failure_threshold",
        "_failures",
        "_in_flight",
        "_is_failure",
        "_name",
        "_on_change",
        "_opened",
        "_opened_at",
        "_recovery_time",
        "_rejections",
        "_state",
        "_success_threshold",
        "_successes",
        "_trial",
        "_trial_successes",
        "_trials",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_time: float = 30.0,
        *,
        failure_on: FailureOn = Exception,
        success_threshold: int = 1,
        name: object = None,
        on_change: OnChange | None = None,
    ) -> None:
        self._failure_threshold = check_positive_int("failure_threshold", failure_threshold)
        self._recovery_time = check_positive_number("recovery_time", recovery_time)
        self._is_failure = _check_failure_on(failure_on)
        self._failure_on = failure_on
        self._success_threshold = check_positive_int("success_threshold", success_threshold)
        if on_change is not None and not callable(on_change):
            raise TypeError(
                f"on_change must be None or a function called as "
                f"on_change(breaker, old, new), got {on_change!r}"
            )
        self._on_change = on_change
        self._name = name
        # The event loop's clock; the model-based tests put a fake clock here.
        self._clock: Callable[[], float] = anyio.current_time
        # The stored state. OPEN turns HALF_OPEN by time alone: see _current_state().
        self._state = _CLOSED
        # Every change of state starts a new epoch. A call's ticket is the epoch it was
        # let through in: the outcome of a call from an earlier epoch is counted in the
        # statistics but changes nothing, so a slow call let through while closed can
        # never pass for the trial. While half-open, only the trial is let through.
        self._epoch = 0
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial = False
        self._trial_successes = 0
        self._in_flight = 0
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._rejections = 0
        self._trials = 0
        self._opened = 0

    # -- settings --------------------------------------------------------------------

    @property
    def name(self) -> object:
        """The name given to the breaker (for the breakers of lanes, the key), or ``None``."""
        return self._name

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that open the circuit."""
        return self._failure_threshold

    @property
    def recovery_time(self) -> float:
        """Seconds the circuit stays open before a trial call may start."""
        return self._recovery_time

    @property
    def success_threshold(self) -> int:
        """Successful trial calls, one after another, that close the circuit."""
        return self._success_threshold

    @property
    def failure_on(self) -> FailureOn:
        """What decides which exceptions are failures, as given."""
        return self._failure_on

    # -- state -----------------------------------------------------------------------

    def _current_state(self) -> CircuitState:
        state = self._state
        if state is _OPEN and self._clock() >= self._next_trial_at():
            return _HALF_OPEN
        return state

    def _next_trial_at(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self._recovery_time

    @property
    def state(self) -> CircuitState:
        """The state now: :attr:`~CircuitState.CLOSED`, :attr:`~CircuitState.OPEN` or
        :attr:`~CircuitState.HALF_OPEN`.

        An open breaker reads as half-open as soon as its recovery time has passed, on
        the event loop's clock (so reading it in the open state needs a running loop).
        """
        return self._current_state()

    def _change(self, new: CircuitState) -> CircuitState:
        """Move to *new* in a new epoch; return the old stored state."""
        old = self._state
        self._state = new
        self._epoch += 1
        self._consecutive = 0
        self._trial = False
        self._trial_successes = 0
        return old

    def _open_now(self) -> CircuitState:
        self._opened_at = self._clock()
        self._opened += 1
        return self._change(_OPEN)

    def _notify(self, old: CircuitState, new: CircuitState) -> None:
        on_change = self._on_change
        if on_change is None or old is new:
            return
        try:
            on_change(self, old, new)
        except Exception:
            logger.exception(
                "on_change callback %s of %r raised (%s -> %s)",
                describe(on_change),
                self,
                old.value,
                new.value,
            )

    # -- the hooks of lanes: synchronous, never awaiting -----------------------------

    def _enter(self) -> int:
        """Let a call through, or raise :exc:`CircuitOpen`. Return the call's ticket.

        Every ticket must be handed back to :meth:`_exit` exactly once, when the call
        ends. Takes the trial slot when half-open. Not a checkpoint: the callers are.
        """
        state = self._state
        old: CircuitState | None = None
        if state is not _CLOSED:
            if state is _OPEN:
                now = self._clock()
                due = self._next_trial_at()
                if now < due:
                    self._rejections += 1
                    raise CircuitOpen(self._name, due - now, trial_in_flight=False)
                old = self._change(_HALF_OPEN)
            elif self._trial:
                self._rejections += 1
                raise CircuitOpen(self._name, self._recovery_time, trial_in_flight=True)
            self._trial = True
            self._trials += 1
        self._calls += 1
        self._in_flight += 1
        if old is not None:
            self._notify(old, _HALF_OPEN)
        return self._epoch

    def _judge(self, exc: BaseException) -> bool | None:
        """True: a failure; False: a success; None: no outcome (cancellation and such)."""
        if isinstance(exc, BaseExceptionGroup):
            verdict: bool | None = None
            group = cast("BaseExceptionGroup[BaseException]", exc)
            for inner in group.exceptions:
                inner_verdict = self._judge(inner)
                if inner_verdict:
                    return True
                if inner_verdict is False:
                    verdict = False
            return verdict
        if not isinstance(exc, Exception):
            return None
        return bool(self._is_failure(exc))

    def _exit(self, ticket: int, exc: BaseException | None) -> None:
        """Record the end of the call let through with *ticket*.

        *exc* is ``None`` for a success, else the exception the call raised: judged by
        ``failure_on``, or no outcome for a cancellation. Not a checkpoint.
        """
        self._in_flight -= 1
        error: BaseException | None = None
        if exc is None:
            failed: bool | None = False
        else:
            try:
                failed = self._judge(exc)
            except BaseException as predicate_error:  # the predicate raised: a failure
                failed = True
                error = predicate_error
        current = ticket == self._epoch
        state = self._state
        old: CircuitState | None = None
        if failed is None:
            if current and state is _HALF_OPEN:
                self._trial = False  # a cancelled trial: the next caller may try at once
        elif failed:
            self._failures += 1
            if current:
                if state is _CLOSED:
                    self._consecutive += 1
                    if self._consecutive >= self._failure_threshold:
                        old = self._open_now()
                else:  # the trial failed: open again for another recovery time
                    old = self._open_now()
        else:
            self._successes += 1
            if current:
                if state is _CLOSED:
                    self._consecutive = 0
                else:
                    self._trial = False
                    self._trial_successes += 1
                    if self._trial_successes >= self._success_threshold:
                        old = self._change(_CLOSED)
        if old is not None:
            self._notify(old, self._state)
        if error is not None:
            raise error

    def _copy(self, name: object) -> CircuitBreaker:
        """A new breaker, closed and with no history, with the same settings and *name*."""
        copy = CircuitBreaker(
            self._failure_threshold,
            self._recovery_time,
            failure_on=self._failure_on,
            success_threshold=self._success_threshold,
            name=name,
            on_change=self._on_change,
        )
        copy._clock = self._clock
        return copy

    @property
    def _at_rest(self) -> bool:
        """Closed, with no failure counted and no call in flight: as good as new."""
        return self._state is _CLOSED and self._consecutive == 0 and self._in_flight == 0

    # -- calling -------------------------------------------------------------------

    async def call(self, fn: Callable[[Unpack[PosArgsT]], Awaitable[T]], /, *args: *PosArgsT) -> T:
        """Call ``fn(*args)`` through the breaker and return its result.

        Raises :exc:`CircuitOpen` instead, without calling *fn*, if the breaker is open,
        or half-open with its trial call in flight. Else the call goes through (as the
        trial, if half-open), and its outcome is counted: its exception propagates
        unchanged. Pass keyword arguments with :func:`functools.partial`, or use
        :meth:`guarded`.

        This is a checkpoint before *fn* is called, even when the call is refused: a
        cancel point (in a cancelled scope it raises before looking at the breaker) and
        a schedule point.

        :raises CircuitOpen: if the breaker refuses the call
        """
        check_callable(fn)
        await checkpoint()
        ticket = self._enter()
        try:
            result = await fn(*args)
        except BaseException as exc:
            self._exit(ticket, exc)
            raise
        self._exit(ticket, None)
        return result

    def guard(self) -> AbstractAsyncContextManager[None]:
        """Guard the body of an ``async with`` block as one call.

        .. code-block:: python

            async with breaker.guard():
                response = await client.get(url)
                response.raise_for_status()

        Entering raises :exc:`CircuitOpen` if the breaker refuses the call; entering is
        a checkpoint, even when it refuses. Leaving counts the body's outcome (its
        exception, if any, propagates unchanged) and never blocks. Each
        ``guard()`` is for one ``async with``.
        """
        return _Guard(self)

    def guarded(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an async function so that each call goes through the breaker.

        .. code-block:: python

            @breaker.guarded
            async def fetch(url: str, *, timeout: float = 5.0) -> bytes: ...

        Each call of the decorated function is a checkpoint, as :meth:`call` is.
        """
        check_callable(fn)

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            async with _Guard(self):
                return await fn(*args, **kwargs)

        return wrapper

    # -- by hand -------------------------------------------------------------------

    def trip(self) -> None:
        """Open the circuit now, for ``recovery_time`` seconds, whatever its state.

        For when you know better than the count: a server answered "503, retry after
        a minute", an operator took the downstream down. Tripping an open breaker
        starts its recovery time afresh. A trial in flight no longer counts. Not a
        checkpoint; needs a running event loop (it reads the clock).
        """
        old = self._open_now()
        self._notify(old, _OPEN)

    def reset(self) -> None:
        """Close the circuit now, with no failures counted, whatever its state.

        Calls in flight no longer count. The statistics' totals are kept. Not a
        checkpoint; never blocks.
        """
        old = self._change(_CLOSED)
        self._notify(old, _CLOSED)

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> CircuitBreakerStatistics:
        """Return a :class:`CircuitBreakerStatistics` snapshot. Not a checkpoint."""
        state = self._current_state()
        return CircuitBreakerStatistics(
            state=state,
            consecutive_failures=self._consecutive,
            trial_in_flight=self._trial,
            trial_successes=self._trial_successes,
            in_flight=self._in_flight,
            calls=self._calls,
            successes=self._successes,
            failures=self._failures,
            rejections=self._rejections,
            trials=self._trials,
            opened=self._opened,
            opened_at=self._opened_at,
            next_trial_at=self._next_trial_at() if state is _OPEN else None,
        )

    def __repr__(self) -> str:
        name = "" if self._name is None else f" {self._name!r}"
        state = self._state
        if state is _CLOSED:
            detail = f"closed, {self._consecutive} of {self._failure_threshold} failures in a row"
        elif state is _HALF_OPEN:
            detail = "half-open, trial in flight" if self._trial else "half-open"
        else:
            due = self._next_trial_at()
            try:
                passed = self._clock() >= due
            except Exception:  # no event loop running: say what is stored
                passed = False
            detail = "half-open" if passed else f"open, next trial at {due:g}"
        return f"<anyio_keyq.CircuitBreaker{name} at {id(self):#x}: {detail}>"


class _Guard:
    """The async context manager of :meth:`CircuitBreaker.guard`: the block is one call."""

    __slots__ = ("_breaker", "_ticket")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._ticket: int | None = None

    async def __aenter__(self) -> None:
        if self._ticket is not None:
            raise RuntimeError("a breaker guard can be entered only once: call guard() again")
        await checkpoint()
        self._ticket = self._breaker._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        assert self._ticket is not None
        self._breaker._exit(self._ticket, exc_val)
