"""Every exception class of :mod:`anyio_keyq`."""

from __future__ import annotations

from collections.abc import Hashable

import anyio


class LanesClosed(anyio.ClosedResourceError):
    """Raised when a job is submitted to lanes that were closed.

    Subclasses :exc:`anyio.ClosedResourceError`, so code that already handles closed
    anyio resources handles this too.
    """

    def __init__(self, reason: str = "the lanes are closed and accept no new jobs") -> None:
        super().__init__(reason)


class LaneFull(anyio.WouldBlock):
    """Raised by ``submit_nowait()`` when the key's lane has no room.

    Subclasses :exc:`anyio.WouldBlock`, like every ``*_nowait`` call of anyio.

    :ivar key: the key whose lane is full
    :ivar max_pending: the lane's bound on queued jobs
    """

    def __init__(self, key: Hashable, max_pending: float) -> None:
        self.key = key
        self.max_pending = max_pending
        super().__init__(
            f"the lane of key {key!r} is full (max_pending={max_pending}); "
            f"use 'await submit()' to wait for room"
        )


class LaneDeadlock(RuntimeError):
    """Raised instead of waiting forever on a lane that the caller itself blocks.

    A job running on the lane of key ``K`` that waits for another job of ``K`` (or for
    a job whose lane is, through a chain of such waits, waiting for ``K``) can never
    be resumed: the job it waits for starts only after the caller has finished.

    :ivar key: the key whose lane would be waited on
    """

    def __init__(self, key: Hashable, what: str) -> None:
        self.key = key
        super().__init__(
            f"{what} from inside a job that the lane of key {key!r} is waiting for "
            f"would wait forever: that lane runs its jobs one after another, so the "
            f"awaited job can only start after the current one has finished. "
            f"Use submit_nowait() without awaiting the handle, or move the call out "
            f"of the job."
        )


class JobCancelled(Exception):
    """Raised by awaiting (or asking the result of) a job that was cancelled.

    It derives from :exc:`Exception`, not :exc:`BaseException`: it reports the fate of
    *another* task's work, not a cancellation of the awaiting task.

    :ivar key: the key of the cancelled job
    """

    def __init__(self, key: Hashable) -> None:
        self.key = key
        super().__init__(f"the job of key {key!r} was cancelled")


class LaneHalted(RuntimeError):
    """Raised for the jobs of a key whose lane a failure has halted.

    With ``KeyedLanes(on_failure="halt")``, a job that fails for good halts its lane:
    the jobs queued behind it settle with this exception (and go to the dead-letter),
    and new jobs for the key are refused with it until :meth:`KeyedLanes.resume`.

    :ivar key: the key of the halted lane
    :ivar cause: the exception of the job that halted the lane (also ``__cause__``)
    """

    def __init__(self, key: Hashable, cause: BaseException) -> None:
        self.key = key
        self.cause = cause
        super().__init__(
            f"the lane of key {key!r} is halted: a job failed with {cause!r}; "
            f"call resume({key!r}) on the lanes to accept its jobs again"
        )
        self.__cause__ = cause


class PoolClosed(anyio.ClosedResourceError):
    """Raised by :meth:`Pool.acquire` once the pool is closed.

    Subclasses :exc:`anyio.ClosedResourceError`. Tasks that were waiting for a resource
    when the pool was closed get it too.
    """

    def __init__(self, reason: str = "the pool is closed and hands out no resource") -> None:
        super().__init__(reason)


class CircuitOpen(Exception):
    """Raised instead of calling through a :class:`CircuitBreaker` that refuses calls.

    The breaker is open (recent calls failed, and its recovery time has not passed), or
    half-open with its one trial call still in flight. The call was not made: the
    caller fails fast, and the struggling downstream is spared the load.

    .. attribute:: retry_after
        :type: float

        Seconds from now until the next trial call may start: while the breaker is
        open, the rest of its recovery time; while a trial is in flight, the whole
        recovery time (the soonest a next trial could start if the trial failed now; if
        it succeeds sooner, the circuit is closed by then). Always > 0. Retry policies
        that honour an exception's ``retry_after`` wait exactly that long.

    .. attribute:: name
        :type: object

        The breaker's name (for the breakers of lanes, the key), or ``None``.
    """

    def __init__(self, name: object, retry_after: float, *, trial_in_flight: bool) -> None:
        self.name = name
        self.retry_after = retry_after
        which = "the circuit breaker" if name is None else f"the circuit breaker {name!r}"
        if trial_in_flight:
            why = (
                f"{which} is half-open and its one trial call is in flight: calls fail "
                f"fast until it ends (retry_after={retry_after:.3g} s, in case it fails)"
            )
        else:
            why = (
                f"{which} is open: calls fail fast until the next trial call, "
                f"in {retry_after:.3g} s"
            )
        super().__init__(why)
