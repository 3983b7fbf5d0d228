"""ConcurrencyScope: a task group that hands out job handles, under a deadline and a limit."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import copy_context
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Self, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._job import Job, JobStatus, current_job
from ._limiters import Limiter
from ._util import check_callable, check_positive_int, check_seconds, describe, final

if TYPE_CHECKING:
    from types import TracebackType

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_QUEUED = JobStatus.QUEUED
_RUNNING = JobStatus.RUNNING
_FINISHED = JobStatus.FINISHED
_FAILED = JobStatus.FAILED
_CANCELLED = JobStatus.CANCELLED

# Where a scope is in its life; the words show up in its repr.
_NEW = "not entered"
_ACTIVE = "active"
_EXITED = "exited"


@final
@dataclass(frozen=True, slots=True)
class ScopeStatistics:
    """A consistent snapshot of a :class:`ConcurrencyScope`, from
    :meth:`ConcurrencyScope.statistics`.

    ``spawned == queued + running + completed + failed + cancelled`` always holds.
    """

    #: Children running now (started and not yet settled).
    running: int
    #: Children spawned and waiting for a permit of the ``limit``.
    queued: int
    #: Children spawned since the scope was entered.
    spawned: int
    #: Children that returned a value.
    completed: int
    #: Children that raised an exception.
    failed: int
    #: Children cancelled, before or after they started.
    cancelled: int
    #: The most children that have run at once.
    peak_running: int
    #: The limit on running children (``math.inf`` when there is none).
    limit: float


class _Permit:
    """One permit of the limit, held by the children running on it.

    ``holders`` counts the child that took it, plus any queued sibling started on it
    while that child waits for the sibling. It goes back to the limit at zero.
    """

    __slots__ = ("failed", "holders")

    def __init__(self) -> None:
        self.holders = 1
        self.failed = False  # how the last child run on it ended, for the limiter


@final
class ConcurrencyScope:
    """Run a few child tasks that belong together, and get a handle on each of them.

    A scope is a task group whose children are :class:`Job` handles: you can await them,
    cancel them one by one, and read their outcomes once the block is over. One
    deadline covers the body and every child, ``limit`` caps how many children run at
    once, and ``fail_fast`` decides what a failure does to the others.

    .. code-block:: python

        async with ConcurrencyScope(timeout=30) as scope:
            user = scope.spawn(fetch_user, order_id)
            stock = scope.spawn(check_inventory, order_id)
        print(user.result(), stock.result())

    **Failures.** With ``fail_fast=True`` (the default), the first child that raises
    cancels its siblings and the body, and the block raises that exception itself, not
    wrapped in an :exc:`ExceptionGroup`: cancelled siblings did not fail. Only when
    several children fail each with an exception of its own does the block raise an
    :exc:`ExceptionGroup` of them (``except*`` catches the exception either way).
    With ``fail_fast=False``, every child runs to its own end: failures stay in their
    handles, and the block does not raise for them.

    Compared with an :class:`anyio.abc.TaskGroup`: children are handles that settle as a
    value, an exception or cancelled; a lone failure is raised bare; failures can be
    collected instead of cancelling everything; and ``limit`` queues children, without
    a task each, until a permit frees.

    **Cancellation.** When the deadline passes, every child is cancelled and the block
    raises :exc:`TimeoutError`. :meth:`cancel` cancels the body and every child without
    raising anything. If an enclosing scope is cancelled, so is everything inside, and
    its cancellation propagates as usual. Children still queued at that point never
    start: they settle as cancelled. Leaving the block always waits for every child to
    settle.

    :param timeout: seconds from entering the block until its deadline (``None`` or
        ``math.inf``: no deadline)
    :param limit: the most children running at once: an int >= 1, an
        :class:`anyio.CapacityLimiter` or :class:`Limiter` shared with other code, or
        ``None`` for no cap
    :param fail_fast: whether the first failure cancels everything and is raised
        (``True``), or every failure is kept in its handle (``False``)
    """

    __slots__ = (
        "__weakref__",
        "_cancel_reason",
        "_cancelled",
        "_completed",
        "_cs",
        "_deadline",
        "_errors",
        "_fail_fast",
        "_failed",
        "_feeder",
        "_held",
        "_host_gone",
        "_idle",
        "_in_use",
        "_jobs",
        "_limit",
        "_limiter",
        "_peak_running",
        "_queue",
        "_running",
        "_state",
        "_tg",
        "_timeout",
        "_total",
    )

    def __init__(
        self,
        *,
        timeout: float | None = None,
        limit: int | anyio.CapacityLimiter | Limiter | None = None,
        fail_fast: bool = True,
    ) -> None:
        seconds = None if timeout is None else check_seconds("timeout", timeout, allow_zero=False)
        self._timeout = None if seconds == math.inf else seconds
        self._limiter = None if limit is None or isinstance(limit, int) else limit
        self._total = _check_limit(limit)
        self._limit = limit
        self._fail_fast = _check_bool("fail_fast", fail_fast)
        self._state = _NEW
        self._tg: anyio.abc.TaskGroup | None = None
        self._cs: anyio.CancelScope | None = None
        self._deadline: float | None = None  # set before entry: replaces the timeout
        self._cancel_reason: str | None = None  # why we cancelled (None: the deadline)
        self._errors: list[BaseException] = []  # what the block will raise, in order
        self._jobs: list[Job[Any]] = []
        self._queue: deque[Job[Any]] = deque()
        self._held: dict[Job[Any], _Permit] = {}
        self._in_use = 0
        self._feeder: anyio.CancelScope | None = None
        self._host_gone = False
        self._idle: anyio.Event | None = None
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._peak_running: int = 0

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the scope's task group and its deadline. Entry is a checkpoint.

        Leaving the block waits for every child to settle, so it can block.
        """
        if self._state is not _NEW:
            raise RuntimeError("a ConcurrencyScope can be entered only once")
        await checkpoint()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._cs = cs = tg.cancel_scope
        self._state = _ACTIVE
        if self._deadline is not None:
            cs.deadline = self._deadline
        elif self._timeout is not None:
            cs.deadline = anyio.current_time() + self._timeout
        if self._cancel_reason is not None:  # cancel() was called before entry
            cs.cancel(self._cancel_reason)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        # Not plain bool, which tells type checkers that any exception may be swallowed
        # and names bound in the body may be unbound after it. Only the scope's own
        # cancellation is, after cancel(): the body then stopped where it was cancelled.
        tg = self._tg
        assert tg is not None
        # A cancellation goes to the task group, which swallows it if it is ours. Any
        # other exception of the body is kept here: the task group would wrap it.
        forward = exc_val if isinstance(exc_val, anyio.get_cancelled_exc_class()) else None
        body_error = exc_val if forward is None else None
        if body_error is not None:
            self._errors.append(body_error)
            self._cancel_internally("the body of the scope raised an exception")
        escaped: BaseException | None = None
        swallowed = False
        try:
            if forward is None:
                await tg.__aexit__(None, None, None)
            else:
                swallowed = bool(await tg.__aexit__(type(forward), forward, exc_tb))
        except BaseException as exc:  # an enclosing scope's cancellation
            escaped = exc
        finally:
            self._state = _EXITED
            self._tg = None
        assert not self._queue
        assert not self._running
        errors, self._errors = self._errors, []  # the scope outlives them: let go
        if escaped is None and self._timed_out():  # an outer cancellation wins
            errors.insert(0, TimeoutError(self._timeout_message()))
        if errors == [body_error]:
            return False  # the body's own exception, propagated as it is
        if errors:
            _raise(errors)  # failures win over a cancellation, as in a task group
        if escaped is not None:
            raise escaped
        return swallowed

    def _timed_out(self) -> bool:
        cs = self._cs
        assert cs is not None
        # Not cancelled_caught: on trio nothing is caught when the body had finished and
        # the children swallowed their cancellation. The time test leaves out the task
        # group cancelling its own scope, as it does when its host is cancelled.
        return (
            self._cancel_reason is None and cs.cancel_called and anyio.current_time() >= cs.deadline
        )

    def _timeout_message(self) -> str:
        if self._timeout is not None and self._deadline is None:
            return f"the ConcurrencyScope ran past its timeout of {self._timeout} s"
        return "the ConcurrencyScope ran past its deadline"

    def cancel(self, reason: str | None = None) -> None:
        """Cancel the body and every child; the block then exits without raising.

        Running children are cancelled, queued ones settle as cancelled at once and
        never start, and children spawned from now on are cancelled before they start.
        Works from inside the block or from any other task of the same event loop, and
        before the block is entered (the body is then cancelled at its first
        checkpoint). This is not a checkpoint and never blocks. Cancelling an exited
        scope does nothing.

        :param reason: a message for the cancellation, shown in its traceback
        """
        reason = reason or "ConcurrencyScope.cancel() was called"
        if self._state is _NEW:
            self._cancel_reason = reason
        elif self._state is _ACTIVE:
            self._cancel_internally(reason)

    def _cancel_internally(self, reason: str) -> None:
        cs = self._cs
        assert cs is not None
        if not cs.cancel_called:  # else the deadline (or an earlier reason) came first
            self._cancel_reason = reason
            cs.cancel(reason)
        self._stop_queue()

    # -- spawning --------------------------------------------------------------------

    def spawn(
        self,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
        *args: *PosArgsT,
        name: str | None = None,
    ) -> Job[T]:
        """Start ``fn(*args)`` as a child of the scope and return its :class:`Job` handle.

        Never blocks and is not a checkpoint. The child runs in a copy of the caller's
        context, like a task. With a ``limit`` and no free permit, the handle is
        :attr:`~JobStatus.QUEUED`: the child starts when a permit frees, in spawn
        order. In a cancelled scope, the handle is already cancelled and the child never
        starts. Children may spawn siblings, also while the block is exiting. Pass
        keyword arguments to *fn* with :func:`functools.partial`.

        :param name: the child's name, for its handle's ``key``, reprs and the task
            (default: the function's qualified name)
        :raises RuntimeError: if the block has not been entered yet, or has exited
        """
        if self._state is not _ACTIVE:
            raise RuntimeError(self._not_active_message())
        if not callable(fn):
            check_callable(fn)
        name = describe(fn) if name is None else _check_name(name)
        caller = current_job.get()
        # Keep the chain of lanes the caller runs in: they see through the scope to
        # refuse waits that can never end.
        links = None if caller is None else caller._chain
        job = Job(self, None, name, fn, args, copy_context(), None, links)
        assert self._cs is not None
        if self._host_gone or self._cs.cancel_called:
            self._settle(job, _CANCELLED)
        else:
            try:
                self._admit(job)
            except RuntimeError:
                # trio closes the nursery as its last child ends, an instant before
                # the block exits: a spawn from another task can fall in between.
                raise RuntimeError(self._not_active_message(exited=True)) from None
        self._jobs.append(job)
        return job

    def _admit(self, job: Job[Any]) -> None:
        """Start *job* now, or queue it for a permit."""
        if self._limiter is None and self._total == math.inf:
            self._start(job, None)
        elif not self._queue and (permit := self._try_permit()) is not None:
            try:
                self._start(job, permit)
            except RuntimeError:
                self._release(permit)
                raise
        else:
            if self._limiter is not None:
                self._wait_for_permit()
            self._queue.append(job)

    def _not_active_message(self, *, exited: bool = False) -> str:
        if self._state is _NEW and not exited:
            return (
                "this ConcurrencyScope has not been entered: spawn children inside "
                "'async with ConcurrencyScope() as scope:'"
            )
        return (
            "this ConcurrencyScope has exited and accepts no new children: spawn them "
            "inside its 'async with' block, or open a new scope"
        )

    def _start(self, job: Job[Any], permit: _Permit | None) -> None:
        """Mark *job* running and start its task.

        If the task group refuses the task (it is closed), nothing has changed.
        """
        # Marked before start_soon(): with an eager task factory the child runs in it.
        peak = self._peak_running
        job._status = _RUNNING
        job._attempts = 1
        self._running += 1
        if self._running > peak:
            self._peak_running = self._running
        if permit is not None:
            self._held[job] = permit
        try:
            self._start_task(self._run_child(job, permit), str(job.key))
        except RuntimeError:
            job._status = _QUEUED
            job._attempts = 0
            self._running -= 1
            self._peak_running = peak
            self._held.pop(job, None)
            raise

    def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        try:
            self._tg.create_task(coro, name=name)
        except RuntimeError:
            coro.close()  # refused by a closed task group: silence "never awaited"
            raise

    async def _run_child(self, job: Job[Any], permit: _Permit | None) -> None:
        cancelled_class = anyio.get_cancelled_exc_class()
        try:
            with anyio.CancelScope() as scope:
                job._scope = scope
                if job._cancel_requested:  # cancelled between spawn and start
                    scope.cancel()
                try:
                    await checkpoint_if_cancelled()  # a cancelled scope starts nothing
                    value = await job._call()
                except cancelled_class:
                    self._settle(job, _CANCELLED)
                    raise
                except BaseException as exc:
                    # Kept here, not raised into the task group, which would wrap it.
                    self._settle(job, _FAILED, exc=exc)
                else:
                    self._settle(job, _FINISHED, value)
        except cancelled_class:
            # The job's own scope swallowed its cancel(); this one comes from further out.
            if anyio.current_effective_deadline() == -math.inf:
                self._stop_queue()
                raise
            # No scope around the child is cancelled: a native asyncio cancellation
            # raised in its code. It ended this child, and nothing else.
        finally:
            self._child_done(job, permit)

    def _child_done(self, job: Job[Any], permit: _Permit | None) -> None:
        self._running -= 1
        if permit is not None:
            del self._held[job]
            permit.failed = job._status is _FAILED
            self._release(permit)
            self._kick()
        self._check_idle()

    # -- settling --------------------------------------------------------------------

    def _settle(
        self, job: Job[Any], status: JobStatus, value: Any = None, exc: BaseException | None = None
    ) -> None:
        job._settle(status, value, exc)
        if status is _FINISHED:
            self._completed += 1
        elif status is _CANCELLED:
            self._cancelled += 1
        else:
            assert exc is not None
            self._failed += 1
            # Retrieved either way: the block raises it, or the caller chose to keep
            # failures in their handles.
            job._mark_retrieved()
            if self._fail_fast or not isinstance(exc, Exception):
                self._errors.append(exc)
                self._cancel_internally(f"child {job.key!r} raised {type(exc).__name__}")

    def _check_idle(self) -> None:
        if not self._running and not self._queue and self._idle is not None:
            self._idle.set()
            self._idle = None

    # -- the limit ---------------------------------------------------------------------

    def _try_permit(self) -> _Permit | None:
        permit = _Permit()
        if self._limiter is not None:
            try:
                self._limiter.acquire_on_behalf_of_nowait(permit)
            except anyio.WouldBlock:
                return None
        elif self._in_use < self._total:
            self._in_use += 1
        else:
            return None
        return permit

    def _release(self, permit: _Permit) -> None:
        permit.holders -= 1
        if permit.holders:
            return
        if self._limiter is not None:
            # Back to the limiter, which hands it to its first waiter: ours or not.
            if isinstance(self._limiter, anyio.CapacityLimiter):
                self._limiter.release_on_behalf_of(permit)
            else:
                self._limiter.release_on_behalf_of(permit, failed=permit.failed)
        else:
            self._in_use -= 1

    def _kick(self) -> None:
        """Start queued children, in order, while permits are free."""
        assert self._cs is not None
        if self._cs.cancel_called:
            self._stop_queue()
        while self._queue:
            permit = self._try_permit()
            if permit is None:
                if self._limiter is not None:
                    self._wait_for_permit()
                return
            self._start(self._queue.popleft(), permit)

    def _wait_for_permit(self) -> None:
        """Have one task wait on the shared limiter for the queued children."""
        if self._feeder is None:
            scope = anyio.CancelScope()
            self._start_task(self._feed(scope), "anyio_keyq scope feeder")
            self._feeder = scope

    async def _feed(self, scope: anyio.CancelScope) -> None:
        limiter = self._limiter
        assert limiter is not None
        try:
            with scope:  # cancelled when the queue empties
                while self._queue:
                    permit = _Permit()
                    await limiter.acquire_on_behalf_of(permit)
                    # A child cancelled while we were woken cancels our scope, too late
                    # to stop the acquisition: the queue may be empty now.
                    if self._queue:
                        self._start(self._queue.popleft(), permit)
                    else:
                        self._release(permit)
        except BaseException:  # the host is cancelled
            self._stop_queue()
            raise
        finally:
            if self._feeder is scope:
                self._feeder = None

    def _stop_queue(self) -> None:
        """The scope is cancelled: queued children settle as cancelled, never to start."""
        self._host_gone = True
        queue = self._queue
        while queue:
            self._settle(queue.popleft(), _CANCELLED)
        self._stop_feeder()
        self._check_idle()

    def _stop_feeder(self) -> None:
        # A spawn may need a new feeder before this one has seen its cancellation.
        if self._feeder is not None:
            self._feeder.cancel()
            self._feeder = None

    # -- for Job (the JobOwner protocol) ---------------------------------------------

    def _cancel_queued(self, job: Job[Any]) -> None:
        self._queue.remove(job)
        self._settle(job, _CANCELLED)
        if not self._queue:
            self._stop_feeder()
        self._check_idle()

    def _lend(self, waiter: Job[Any], job: Job[Any]) -> None:
        """*waiter*, a running job, is about to wait for *job*.

        If both are children of this scope and *job* is queued, *job* starts at once on
        the waiter's permit, ahead of its turn: otherwise the waiter could hold the last
        permit while it waits for a child that needs one.
        """
        if job._status is _QUEUED:
            permit = self._held.get(waiter)
            if permit is not None:
                self._queue.remove(job)
                permit.holders += 1
                self._start(job, permit)

    def _end_credit(self, credit: object) -> None:  # pragma: no cover - _lend lends none
        pass

    # -- waiting and introspection ---------------------------------------------------

    async def wait_settled(self) -> tuple[Job[Any], ...]:
        """Wait until every child has settled, and return :attr:`jobs`.

        Children spawned while it waits are waited for too. Returns at once when no
        child is queued or running, for example after the block. This is a checkpoint.
        With ``fail_fast=True``, a failure cancels the body, and this wait with it.

        :raises RuntimeError: if called from a child of the scope, which would wait
            for itself
        """
        caller = current_job.get()
        if caller is not None and any(owner is self for owner, _ in caller._chain):
            raise RuntimeError(
                "a child of a ConcurrencyScope cannot wait for the whole scope to "
                "settle: that includes itself, so the wait would never end"
            )
        if not self._running and not self._queue:
            await checkpoint()
        else:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()
        return self.jobs

    @property
    def jobs(self) -> tuple[Job[Any], ...]:
        """The handle of every child, in spawn order."""
        return tuple(self._jobs)

    @property
    def deadline(self) -> float:
        """The clock time (:func:`anyio.current_time`) at which the scope is cancelled.

        ``math.inf`` means none. The ``timeout`` turns into a deadline when the block
        is entered; set this property to move it, earlier or later, before or during
        the block, as with :attr:`anyio.CancelScope.deadline`. A deadline that has
        already passed cancels the scope at once.
        """
        if self._cs is not None:
            return self._cs.deadline
        return math.inf if self._deadline is None else self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        value = _check_deadline(value)
        if self._cs is None:
            self._deadline = value
        else:
            self._cs.deadline = value

    @property
    def timeout(self) -> float | None:
        """The ``timeout`` the scope was created with (``None``: none)."""
        return self._timeout

    @property
    def limit(self) -> int | anyio.CapacityLimiter | Limiter | None:
        """The ``limit`` the scope was created with."""
        return self._limit

    @property
    def fail_fast(self) -> bool:
        """Whether the first failure cancels everything and is raised."""
        return self._fail_fast

    @property
    def cancel_called(self) -> bool:
        """Whether the scope has been cancelled: by :meth:`cancel`, its deadline, a
        failure (with ``fail_fast``) or an exception of the body."""
        if self._cs is not None:
            return self._cs.cancel_called
        return self._cancel_reason is not None

    def statistics(self) -> ScopeStatistics:
        """Return a :class:`ScopeStatistics` snapshot. Not a checkpoint."""
        return ScopeStatistics(
            running=self._running,
            queued=len(self._queue),
            spawned=len(self._jobs),
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            peak_running=self._peak_running,
            limit=self._total if self._limiter is None else self._limiter.total_tokens,
        )

    def __repr__(self) -> str:
        return (
            f"<anyio_keyq.ConcurrencyScope at {id(self):#x}: {self._state}, "
            f"{self._running} running, {len(self._queue)} queued, "
            f"{len(self._jobs)} spawned, limit={self._limit!r}, fail_fast={self._fail_fast}>"
        )


def _check_limit(limit: object) -> float:
    """Return the number of permits *limit* stands for (a limiter counts its own)."""
    if limit is None or isinstance(limit, anyio.CapacityLimiter | Limiter):
        return math.inf
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            f"limit must be an int >= 1, an anyio.CapacityLimiter, a Limiter or None, got {limit!r}"
        )
    return check_positive_int("limit", limit)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {name!r}")
    return name


def _check_deadline(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"deadline must be a clock time in seconds, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"deadline must not be NaN, got {value!r}")
    return float(value)


def _raise(errors: list[BaseException]) -> NoReturn:
    """Raise the one error bare, or several in a group."""
    error = errors[0] if len(errors) == 1 else BaseExceptionGroup("errors in a scope", errors)
    context = error.__context__
    if context is None and error.__cause__ is None:
        # Raised from __aexit__, it gets the cancellation that woke the body as its
        # context (asyncio may set it again on the way out): noise, not a cause.
        error.__suppress_context__ = True
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
