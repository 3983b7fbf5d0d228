"""The job handle shared by every primitive that runs work on behalf of a caller."""

from __future__ import annotations

import enum
import logging
import types
from collections.abc import Awaitable, Callable, Generator, Hashable
from contextvars import Context, ContextVar
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import anyio
from anyio.lowlevel import checkpoint

from ._exceptions import JobCancelled
from ._util import describe, final

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._lane import Lane
    from ._permits import Credit, Token
    from ._retry import Retry

T = TypeVar("T")

logger = logging.getLogger("anyio_keyq")

#: The job whose code is running in the current context, if any. Nested calls read it
#: to detect waits that can never end and to lend the job's permit.
current_job: ContextVar[Job[Any] | None] = ContextVar("anyio_keyq_current_job", default=None)


#: Stands in for the context of a settled job.
_SPENT = Context()


class JobStatus(enum.Enum):
    """Where a :class:`Job` is in its life. A job moves only forward, and settles once.

    .. attribute:: QUEUED

        Accepted and waiting for its turn.
    .. attribute:: RUNNING

        Started and not yet settled.
    .. attribute:: FINISHED

        Settled with a return value.
    .. attribute:: FAILED

        Settled with an exception (a timeout settles as :exc:`TimeoutError`).
    .. attribute:: CANCELLED

        Settled as cancelled: before it started, or while running.
    """

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


_QUEUED = JobStatus.QUEUED
_RUNNING = JobStatus.RUNNING
_FINISHED = JobStatus.FINISHED
_FAILED = JobStatus.FAILED
_CANCELLED = JobStatus.CANCELLED


class JobOwner(Protocol):
    """What a :class:`Job` needs from the primitive that runs it."""

    def _cancel_queued(self, job: Job[Any], /) -> None: ...

    def _lend(self, waiter: Job[Any], job: Job[Any], /) -> Credit | None: ...

    def _end_credit(self, credit: Credit, /) -> None: ...


class _Unretrieved:
    """Logs an exception nobody retrieved when its job handle is garbage-collected."""

    __slots__ = ("exc", "job_repr")

    def __init__(self, exc: BaseException, job_repr: str) -> None:
        self.exc: BaseException | None = exc
        self.job_repr = job_repr

    def __del__(self) -> None:
        if self.exc is not None:
            logger.error("Exception of %s was never retrieved", self.job_repr, exc_info=self.exc)


class _JobExtras:
    """The fields of a job that most jobs never use, kept apart to keep jobs small."""

    __slots__ = (
        "awaiting",
        "breaker",
        "credit",
        "credits",
        "delay",
        "due",
        "links",
        "order",
        "priority",
        "report",
        "retry",
        "weight",
    )

    def __init__(self, links: tuple[tuple[object, Hashable], ...] | None = None) -> None:
        # How much of the global limit the job takes, and its place among ready lanes.
        self.weight = 1
        self.priority: float = 0
        # The lanes that wait, through nested calls, for this job: see Job._chain.
        self.links = links
        # The job this (running) job is waiting for.
        self.awaiting: Job[Any] | None = None
        # The credit this job was started on, and the credits lent to its lane for it.
        self.credit: Credit | None = None
        self.credits: list[Credit] | None = None
        self.report: _Unretrieved | None = None
        # The job's own retry policy, the delay before its last retry (for jitter that
        # depends on it), the instant it may start again, and (with per_key > 1) its
        # place among the retried jobs of its lane.
        self.retry: Retry | None = None
        self.delay: float | None = None
        self.due = 0.0
        self.order = 0
        # The circuit breaker the running attempt has entered, and its ticket, to
        # report the attempt's outcome.
        self.breaker: tuple[CircuitBreaker, int] | None = None


@final
class Job(Generic[T]):
    """A handle on one unit of work: await it for the result.

    Jobs are created by the library (for example by
    :meth:`KeyedLanes.submit <anyio_keyq.KeyedLanes.submit>`), never directly.
    Every job settles exactly once, as a return value, an exception, or cancelled;
    ``await job`` then returns the value, raises the exception, or raises
    :exc:`JobCancelled`.

    Awaiting a handle waits for the job but does not own it: if the awaiting task is
    cancelled, the job goes on. Use :meth:`cancel` to cancel the job itself.
    """

    # A large backlog is dominated by the cyclic collector's visits to every queued
    # object, slot by slot: few objects per job, with few slots, is most of the speed.
    # The key's first job also carries the lane's record (see Lane).
    __slots__ = (
        "__weakref__",
        "_args",
        "_attempts",
        "_cancel_requested",
        "_ctx",
        "_event",
        "_extras",
        "_fn",
        "_lane",
        "_ordered",
        "_outcome",
        "_owner",
        "_scope",
        "_status",
        "_timeout",
        "_token",
        "key",
    )

    key: Hashable

    def __init__(
        self,
        owner: JobOwner,
        lane: Any,
        key: Hashable,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        ctx: Context,
        timeout: float | None,
        links: tuple[tuple[object, Hashable], ...] | None,
    ) -> None:
        # Lane.__init__() has a copy of these, for speed: change both.
        self._owner = owner
        # The lane of the job's key (KeyedLanes; a job that opens it is the Lane).
        self._lane: Lane = lane
        self.key = key
        self._fn = fn
        self._args = args
        self._ctx = ctx
        self._timeout = timeout
        self._status = _QUEUED
        # The return value once finished, the exception once failed.
        self._outcome: Any = None
        self._event: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._token: Token | None = None
        self._cancel_requested = False
        # With per_key > 1: the job must wait for its turn to begin (see LaneExtras.turn).
        self._ordered = False
        self._attempts = 0  # times the function was called: retries call it again
        self._extras = None if links is None else _JobExtras(links)

    @property
    def _more(self) -> _JobExtras:
        """The job's rarely used fields, made on first use."""
        extras = self._extras
        if extras is None:
            extras = self._extras = _JobExtras()
        return extras

    # -- public surface ------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        """The job's current :class:`JobStatus`."""
        return self._status

    @property
    def _chain(self) -> tuple[tuple[object, Hashable], ...]:
        """The (lanes, key) pairs this job's code runs inside: waiting on one is fatal."""
        own = ((self._owner, self.key),)
        extras = self._extras
        if extras is None or extras.links is None:
            return own
        return extras.links + own

    @property
    def attempts(self) -> int:
        """How many times the job has started: 1 once it runs, more if it was retried.

        0 while it waits for its first start (or if it never started).
        """
        return self._attempts

    @property
    def timeout(self) -> float | None:
        """The job's time limit in seconds, counted from its start (``None``: none)."""
        return self._timeout

    def done(self) -> bool:
        """Return whether the job has settled (finished, failed or cancelled)."""
        return self._status not in (_QUEUED, _RUNNING)

    def cancel(self) -> None:
        """Cancel the job: a queued job never starts, a running job is cancelled.

        This is not a checkpoint and never blocks. A running job settles as cancelled
        once its code has handled the cancellation (if it returns a value or raises
        anyway, that outcome is kept). Cancelling a settled job does nothing.
        """
        if self._status is _QUEUED:
            self._owner._cancel_queued(self)
        elif self._status is _RUNNING and not self._cancel_requested:
            self._cancel_requested = True
            if self._scope is not None:
                self._scope.cancel()

    def result(self) -> T:
        """Return the job's value, or raise its exception, once it has settled.

        :raises JobCancelled: if the job was cancelled
        :raises RuntimeError: if the job has not settled yet
        """
        if self._status is _FINISHED:
            return cast("T", self._outcome)
        if self._status is _FAILED:
            self._mark_retrieved()
            raise cast("BaseException", self._outcome)
        if self._status is _CANCELLED:
            raise JobCancelled(self.key)
        raise RuntimeError(f"{self!r} has not settled yet; await it first")

    def exception(self) -> BaseException | None:
        """Return the job's exception (``None`` if it returned a value), once settled.

        :raises JobCancelled: if the job was cancelled
        :raises RuntimeError: if the job has not settled yet
        """
        if self._status is _FINISHED:
            return None
        if self._status is _FAILED:
            self._mark_retrieved()
            return cast("BaseException", self._outcome)
        if self._status is _CANCELLED:
            raise JobCancelled(self.key)
        raise RuntimeError(f"{self!r} has not settled yet; await it first")

    async def wait(self) -> None:
        """Wait until the job has settled, without retrieving its outcome.

        This is a checkpoint. If the awaiting task is cancelled, the job goes on.

        :raises LaneDeadlock: if called from inside a job that this job's lane can
            only start after (see :doc:`/lanes`)
        """
        if self._status is not _QUEUED and self._status is not _RUNNING:
            await checkpoint()
            return
        credit = None
        previous: Job[Any] | None = None
        waiter = current_job.get()
        if waiter is not None:
            credit = self._owner._lend(waiter, self)
            more = waiter._more
            previous, more.awaiting = more.awaiting, self
        try:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        finally:
            if waiter is not None:
                waiter._more.awaiting = previous
            if credit is not None:
                self._owner._end_credit(credit)

    def __await__(self) -> Generator[Any, Any, T]:
        return self._wait_result().__await__()

    async def _wait_result(self) -> T:
        await self.wait()
        return self.result()

    def __repr__(self) -> str:
        return (
            f"<anyio_keyq.Job key={self.key!r} fn={describe(self._fn)} status={self._status.value}>"
        )

    # -- for the owner -------------------------------------------------------------

    def _mark_retrieved(self) -> None:
        """Someone has seen (or given up on) the outcome: never report it."""
        extras = self._extras
        if extras is not None and extras.report is not None:
            extras.report.exc = None
            extras.report = None

    def _settle(
        self, status: JobStatus, value: Any = None, exc: BaseException | None = None
    ) -> None:
        # KeyedLanes._returned() has a copy of the FINISHED case: change both.
        self._status = status
        if status is _FINISHED:
            self._outcome = value
        elif exc is not None:
            self._outcome = exc
            self._more.report = _Unretrieved(exc, repr(self))
        self._scope = None
        self._args = ()
        self._ctx = _SPENT  # it refers back to this job: break the cycle
        if self._event is not None:
            self._event.set()

    def _adapt(self, awaitable: object) -> Awaitable[T]:
        """Await what the job's function returned, if it is not a coroutine."""
        return cast("Awaitable[T]", _drive(None, awaitable, self._fn))

    def _call(self) -> Awaitable[T]:
        """Call the job's function in the submitter's context; await the result."""
        ctx = self._ctx
        ctx.run(current_job.set, self)
        return cast("Awaitable[T]", _drive(ctx, ctx.run(self._fn, *self._args), self._fn))


@types.coroutine
def _drive(
    ctx: Context | None, awaitable: Any, fn: Callable[..., object]
) -> Generator[Any, Any, Any]:
    """Drive *awaitable* with every step run in *ctx*.

    Lane workers are reused across jobs, so a job's coroutine does not get a task (and
    a context) of its own. Stepping it inside a copy of the submitter's context gives
    it what a task spawned by the submitter would see, and keeps context variables
    set by one job from leaking into the next job of the same worker.
    """
    it: Any
    if type(awaitable) is CoroutineType:
        it = cast("Any", awaitable)  # a coroutine steps itself: no wrapper needed
    else:
        try:
            it = awaitable.__await__()
        except AttributeError:
            raise TypeError(
                f"fn must be an async function, but {describe(fn)} "
                f"returned {awaitable!r}, which cannot be awaited"
            ) from None
    if ctx is None:
        return cast("Any", (yield from it))
    run = ctx.run
    send = it.send
    try:
        yielded = run(send, None)
    except StopIteration as stop:
        return stop.value
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            run(it.close)
            raise
        except BaseException as exc:
            try:
                yielded = run(it.throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = run(send, value)
            except StopIteration as stop:
                return stop.value
