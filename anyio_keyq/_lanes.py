"""KeyedLanes: per-key serial lanes under one global limit."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping
from contextvars import Context, copy_context
from dataclasses import dataclass
from types import CoroutineType, MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Protocol,
    Self,
    TypeVar,
    TypeVarTuple,
    Unpack,
)

import anyio
from anyio.abc import ObjectSendStream  # noqa: TC002  # the docs resolve annotations
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._breaker import CircuitBreaker
from ._dead_letter import DeadLetter, Postbox, check_dead_letter
from ._exceptions import LaneDeadlock, LaneFull, LaneHalted, LanesClosed
from ._job import _SPENT, Job, JobStatus, _JobExtras, current_job
from ._lane import Lane
from ._limiters import Limiter
from ._permits import (
    CountedPermits,
    Credit,
    LimiterPermits,
    Permits,
    ProtocolPermits,
    Token,
    priority_of,
)
from ._rate import RateLimiter, _TokenBucket
from ._retry import Retry
from ._util import (
    check_bound,
    check_callable,
    check_positive_int,
    check_seconds,
    final,
    same_context,
)

if TYPE_CHECKING:
    from types import TracebackType


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_QUEUED = JobStatus.QUEUED
_RUNNING = JobStatus.RUNNING
_FINISHED = JobStatus.FINISHED
_FAILED = JobStatus.FAILED
_CANCELLED = JobStatus.CANCELLED

#: Parked workers kept for reuse when there is no global limit.
_MAX_PARKED_UNLIMITED = 1024

_MISSING: Any = object()

#: A token due within this many seconds counts as there: the loop's clock and a rate's
#: instants are sums of floats that may differ in the last bits.
_SLACK = 1e-9


class TaskSpawner(Protocol):
    """Anything that starts tasks like :meth:`anyio.abc.TaskGroup.start_soon`.

    An anyio task group and a trio nursery both qualify.
    """

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], /, *args: Any, name: object = None
    ) -> Any: ...


@final
@dataclass(frozen=True, slots=True)
class LanesStatistics:
    """A consistent snapshot of a :class:`KeyedLanes`, from :meth:`KeyedLanes.statistics`.

    ``submitted == queued + running + completed + failed + timed_out + cancelled``
    always holds.
    """

    #: Live lanes: keys with queued or running jobs, or idle lanes still lingering.
    lanes: int
    #: Jobs running now.
    running: int
    #: Jobs accepted and not yet started.
    queued: int
    #: Jobs accepted since the lanes were created.
    submitted: int
    #: Jobs that returned a value.
    completed: int
    #: Jobs that raised an exception (timeouts not included).
    failed: int
    #: Jobs stopped by their time limit.
    timed_out: int
    #: Jobs cancelled, before or after they started.
    cancelled: int
    #: Callers of ``submit()``/``run()`` waiting for room in a full lane.
    waiting_for_room: int
    #: Worker tasks alive, busy or parked.
    workers: int
    #: Worker tasks parked, waiting for work.
    idle_workers: int
    #: The most jobs that have run at once.
    peak_running: int
    #: The global limit (``math.inf`` when there is none).
    limit: float
    #: Retries that started: attempts of a job after its first.
    retried: int = 0
    #: Jobs handed to the dead-letter.
    dead_lettered: int = 0
    #: Keys whose lane is halted, waiting for :meth:`KeyedLanes.resume`.
    halted: int = 0


class _PriorityReady:
    """The lanes ready to start a job, by the priority of that job, then first come.

    It stands in for the plain deque of ready lanes once a job has a priority.
    """

    __slots__ = ("_heap", "_order")

    def __init__(self, lanes: Iterable[Lane]) -> None:
        self._heap: list[tuple[float, int, Lane]] = []
        self._order = itertools.count()
        for lane in lanes:
            self.append(lane)

    def append(self, lane: Lane) -> None:
        assert lane.head is not None
        heapq.heappush(self._heap, (priority_of(lane.head), next(self._order), lane))

    def popleft(self) -> Lane:
        return heapq.heappop(self._heap)[2]

    def __getitem__(self, index: Literal[0]) -> Lane:
        return self._heap[0][2]

    def __len__(self) -> int:
        return len(self._heap)


class _RoomWaiter:
    __slots__ = ("accepted", "closed", "event", "job", "refused")

    def __init__(self, job: Job[Any]) -> None:
        self.job = job
        self.event = anyio.Event()
        self.accepted = False
        self.closed = False
        self.refused: LaneHalted | None = None


class _Parked:
    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.job: Job[Any] | None = None


@final
class KeyedLanes(Generic[K]):
    """Run jobs one key at a time, in order, and many keys at once under one limit.

    Every key gets a *lane*: its jobs start in submission order and, with
    ``per_key=1``, never overlap. Jobs of different keys run in parallel, at most
    ``limit`` at once, and lanes with work take turns fairly for the free permits.
    An idle lane costs nothing: its bookkeeping is dropped once it has been empty for
    ``idle_timeout`` seconds.

    .. code-block:: python

        async with KeyedLanes(limit=100) as lanes:
            await lanes.run(user_id, handle_message, message)

    Compared with a plain :class:`anyio.CapacityLimiter`, which caps how much runs,
    lanes also order and serialise the work of each key; compared with a dict of
    :class:`anyio.Lock`, no task is spawned or parked per job and nothing lingers per
    key.

    Jobs run in a small pool of reused worker tasks hosted by the lanes' own task group
    (``async with``) or by the ``task_group`` you pass (an anyio task group or a trio
    nursery). Each job runs in a copy of the context of the task that submitted it.

    **Cancellation.** If the caller of :meth:`run` is cancelled, its job is cancelled
    too (it never starts if still queued) and :meth:`run` returns only once the job
    has settled. :meth:`Job.cancel` does the same for a handle. Cancelling the scope
    hosting the lanes cancels every queued and running job, and every handle settles
    as cancelled.

    :param limit: the global cap on running jobs: an int >= 1, a shared
        :class:`anyio.CapacityLimiter` or :class:`Limiter` (such as a
        :class:`WeightedLimiter`), or ``None`` for no cap
    :param per_key: how many jobs of one key may run at once (1: one at a time)
    :param max_pending: per-key bound on accepted jobs not yet started; further
        submissions wait for room (``submit_nowait`` raises :exc:`LaneFull`)
    :param idle_timeout: seconds an empty lane lingers before it is dropped
    :param timeout: the default time limit of a job in seconds, counted from its start
    :param rate: a rate per key: every lane gets a token bucket of its own, with the
        rate, period and burst of this :class:`RateLimiter` (a pattern: the limiter
        itself is not used), and a job starts only with a token of its lane. A lane
        stays until its bucket is full again, so that a key cannot burst by going idle
    :param global_rate: a rate across all lanes: every job takes a token of this
        :class:`RateLimiter`, which other code may share
    :param retry: the default :class:`Retry` policy of every job: a failed attempt is
        retried after the policy's delay, at the head of its lane, so that the key's
        order holds (``None``: no retries)
    :param breaker: a circuit breaker per key: every lane gets a breaker of its own
        with the settings of this :class:`CircuitBreaker` (a pattern: the breaker
        itself is not used); while a key's breaker is open, its jobs fail at once with
        :exc:`CircuitOpen` (and are retried at the next trial, with a retry policy)
    :param dead_letter: where the jobs that failed for good go, as
        :class:`DeadLetter` records: an object send stream (closed when the lanes
        close) or a function, plain or async, called with each in order
    :param on_failure: ``"continue"`` (a failed job does not stop its lane) or
        ``"halt"``: a job that failed for good halts its lane; the jobs queued behind
        it fail with :exc:`LaneHalted` and go to the dead-letter, and new jobs of the
        key are refused until :meth:`resume`
    :param task_group: host the workers in this task group or trio nursery instead of
        using ``async with``; then call :meth:`aclose` to finish
    """

    __slots__ = (
        "__weakref__",
        "_accepting",
        "_breaker",
        "_cancelled",
        "_closed",
        "_closed_reason",
        "_completed",
        "_entered",
        "_failed",
        "_global_at",
        "_global_rate",
        "_halt",
        "_halted",
        "_home",
        "_hooks",
        "_host",
        "_idle_event",
        "_idle_timeout",
        "_lanes",
        "_lent_ready",
        "_limit",
        "_linger",
        "_lingering",
        "_max_parked",
        "_max_pending",
        "_order",
        "_own_tg",
        "_paced",
        "_pacer_scope",
        "_pacer_sleep",
        "_pacer_until",
        "_pacing",
        "_parked",
        "_peak_running",
        "_per_key",
        "_permits",
        "_postbox",
        "_queued",
        "_rate",
        "_ready",
        "_reaper_scope",
        "_retried",
        "_retry",
        "_room_waiting",
        "_running",
        "_shutdown",
        "_submitted",
        "_timed_out",
        "_timeout",
        "_token_waiter_scope",
        "_weighted",
        "_workers",
    )

    def __init__(
        self,
        *,
        limit: int | anyio.CapacityLimiter | Limiter | None = 100,
        per_key: int = 1,
        max_pending: float = math.inf,
        idle_timeout: float = 0.0,
        timeout: float | None = None,
        rate: RateLimiter | None = None,
        global_rate: RateLimiter | None = None,
        retry: Retry | None = None,
        breaker: CircuitBreaker | None = None,
        dead_letter: ObjectSendStream[DeadLetter[K]]
        | Callable[[DeadLetter[K]], Awaitable[object] | object]
        | None = None,
        on_failure: Literal["continue", "halt"] = "continue",
        task_group: TaskSpawner | None = None,
    ) -> None:
        self._permits: Permits
        if limit is None:
            self._permits = Permits()
            self._max_parked = _MAX_PARKED_UNLIMITED
        elif isinstance(limit, anyio.CapacityLimiter):
            self._permits = LimiterPermits(limit)
            self._max_parked = _MAX_PARKED_UNLIMITED
        elif isinstance(limit, Limiter):
            self._permits = ProtocolPermits(limit)
            self._max_parked = _MAX_PARKED_UNLIMITED
        else:
            total = check_positive_int("limit", limit)
            self._permits = CountedPermits(total)
            self._max_parked = total
        self._limit = limit
        self._per_key = check_positive_int("per_key", per_key)
        self._max_pending = check_bound("max_pending", max_pending)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout, allow_zero=True)
        self._timeout = None if timeout is None else _job_timeout("timeout", timeout)
        if task_group is not None and not callable(getattr(task_group, "start_soon", None)):
            raise TypeError(
                f"task_group must be an anyio task group or a trio nursery, got {task_group!r}"
            )
        self._host: TaskSpawner | None = task_group
        _check_rate("rate", rate)
        _check_rate("global_rate", global_rate)
        self._rate = rate
        self._global_rate = global_rate
        self._pacing = rate is not None or global_rate is not None
        # Lanes waiting for a token of their own rate: (instant, order, lane).
        self._paced: list[tuple[float, int, Lane]] = []
        self._global_at: float | None = None  # when the global rate has a token again
        self._pacer_scope: anyio.CancelScope | None = None
        self._pacer_sleep: anyio.CancelScope | None = None
        self._pacer_until = math.inf
        self._home = copy_context()
        if current_job.get() is not None:  # created by a job: workers are not inside it
            self._home.run(current_job.set, None)
        self._own_tg: anyio.abc.TaskGroup | None = None
        self._entered = False
        self._closed = False
        # Open and hosted: new jobs are welcome (the fast path of submit_nowait).
        self._accepting = task_group is not None
        self._closed_reason = "the lanes are closed and accept no new jobs"
        self._shutdown = False
        self._lanes: dict[K, Lane] = {}
        self._ready: deque[Lane] | _PriorityReady = deque()
        self._lent_ready: deque[Lane] = deque()
        self._parked: list[_Parked] = []
        self._workers = 0
        self._token_waiter_scope: anyio.CancelScope | None = None
        # Idle lanes kept for a while: (expiry, idle_at, order, lane), soonest first.
        self._lingering: list[tuple[float, float, int, Lane]] = []
        self._order = itertools.count()
        self._reaper_scope: anyio.CancelScope | None = None
        self._idle_event: anyio.Event | None = None
        self._room_waiting = 0
        self._submitted = 0
        self._queued = 0
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._timed_out = 0
        self._cancelled = 0
        self._peak_running = 0
        self._weighted = False  # some job weighs more than 1
        _check_retry("retry", retry)
        self._retry = retry
        _check_breaker("breaker", breaker)
        self._breaker = breaker
        check_dead_letter(dead_letter)
        self._postbox = None if dead_letter is None else Postbox(dead_letter, self._spawn)
        if on_failure not in ("continue", "halt"):
            raise ValueError(f"on_failure must be 'continue' or 'halt', got {on_failure!r}")
        self._halt = on_failure == "halt"
        # Halted keys, and the exception that halted each.
        self._halted: dict[K, BaseException] = {}
        self._retried = 0
        # Whether a worker calls hooks around every job (else only for jobs with extras).
        self._hooks = retry is not None or breaker is not None
        # Whether an idle lane may linger (else it is dropped the moment it is idle).
        self._linger = bool(self._idle_timeout) or rate is not None or breaker is not None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the lanes' task group. Entry is a checkpoint; exit can block.

        Leaving the block normally closes the lanes and waits for every accepted job.
        Leaving it with an exception cancels every queued and running job, waits for
        them to settle, and propagates the exception, as a task group does.
        """
        if self._entered:
            raise RuntimeError("a KeyedLanes instance can be entered only once")
        if self._host is not None:
            raise RuntimeError(
                "these lanes are hosted by the task_group passed to KeyedLanes(); "
                "do not enter them with 'async with', call 'await lanes.aclose()' instead"
            )
        await checkpoint()
        self._entered = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._own_tg = self._host = tg
        self._accepting = not self._closed
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        tg = self._own_tg
        assert tg is not None
        caught: BaseException | None = None
        if exc_val is None:
            try:
                await self._drain()
            except BaseException as exc:
                caught = exc
        if exc_val is not None or caught is not None:
            tg.cancel_scope.cancel()
        self._stop_workers()
        try:
            # The body's own exception is not handed to the task group, which would
            # wrap it in an ExceptionGroup: the workers never fail, so it stays bare.
            await tg.__aexit__(None, None, None)
        finally:
            self._host_gone("the lanes' task group has exited")
            if self._postbox is not None:
                await self._postbox.finish()  # no job can fail any more
        if caught is not None:
            raise caught

    def close(self) -> None:
        """Refuse new jobs from now on; jobs already accepted still run.

        Callers still waiting for room in a lane get :exc:`LanesClosed`. This is not a
        checkpoint and never blocks. Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        if not self._room_waiting:
            return  # nobody to tell: no need to visit every lane
        for lane in self._lanes.values():
            room = lane.room
            if room:
                for waiter in room:
                    waiter.closed = True
                    waiter.event.set()
                room.clear()

    async def aclose(self) -> None:
        """Close the lanes, wait for every accepted job to settle, and stop the workers.

        For lanes hosted by a ``task_group``; ``async with`` does this on exit. This is
        a checkpoint. Cancelling it cancels nothing but the wait.
        """
        await self._drain()
        self._stop_workers()
        if self._postbox is not None:
            await self._postbox.finish()

    async def _drain(self) -> None:
        self.close()
        await self.wait_idle()

    def _stop_workers(self) -> None:
        self._shutdown = True
        parked, self._parked = self._parked, []
        for p in parked:
            p.event.set()
        for scope in (self._token_waiter_scope, self._reaper_scope):
            if scope is not None:
                scope.cancel()
        for scope in (self._pacer_scope,):
            if scope is not None:
                scope.cancel()
        lingering, self._lingering = self._lingering, []
        for _, _, _, lane in lingering:
            if lane.live and lane.idle_at is not None:
                self._drop(lane)

    def _host_gone(self, reason: str) -> None:
        """The hosting scope was cancelled or exited: settle everything still queued."""
        if not self._closed:
            self._closed_reason = reason
        self.close()
        self._shutdown = True
        for lane in list(self._lanes.values()):
            for job in self._queued_jobs(lane):
                if job._status is _QUEUED:
                    self._cancel_queued(job)
            self._clear_queue(lane)

    # -- submitting ----------------------------------------------------------------

    async def run(
        self,
        key: K,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
        *args: *PosArgsT,
        timeout: float | None = None,
        weight: int = 1,
        priority: float = 0,
        retry: Retry | None = None,
    ) -> T:
        """Run ``fn(*args)`` in the lane of *key* and return its result.

        Waits for room in the lane (see ``max_pending``), then for the job to settle.
        The job's exception is raised here. If the caller is cancelled, the job is
        cancelled (it never starts if still queued), and the cancellation propagates
        once the job has settled. This is a checkpoint.

        :param timeout: the job's time limit in seconds (default: the lanes'
            ``timeout``; ``math.inf`` for none)
        :param weight: how many units of the global limit the job takes while it runs
        :param priority: the job's claim on the next free permit, lower first: it
            orders the lanes waiting for a permit, never the jobs of one key
        :raises LanesClosed: if the lanes are closed
        :raises LaneDeadlock: if called from a job that the lane of *key* must wait for
        :raises TimeoutError: if the job ran past its time limit
        :raises JobCancelled: if the job was cancelled by someone else
        """
        await checkpoint_if_cancelled()
        job = await self._accept(key, fn, args, timeout, weight, priority, retry, "awaiting run()")
        try:
            await job.wait()
        except BaseException:
            job.cancel()
            with anyio.CancelScope(shield=True):
                await job.wait()
            job._mark_retrieved()  # the caller gave up on it: nobody will ask
            raise
        return job.result()

    async def submit(
        self,
        key: K,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
        *args: *PosArgsT,
        timeout: float | None = None,
        weight: int = 1,
        priority: float = 0,
        retry: Retry | None = None,
    ) -> Job[T]:
        """Queue ``fn(*args)`` in the lane of *key* and return its :class:`Job` handle.

        Waits only for room in the lane (see ``max_pending``), in FIFO order with other
        waiters. This is a checkpoint; if it is cancelled, the job is not submitted.

        :param timeout: the job's time limit in seconds (default: the lanes'
            ``timeout``; ``math.inf`` for none)
        :param weight: how many units of the global limit the job takes while it runs
        :param priority: the job's claim on the next free permit, lower first: it
            orders the lanes waiting for a permit, never the jobs of one key
        :raises LanesClosed: if the lanes are closed (also while waiting for room)
        :raises LaneDeadlock: if called from a job that the lane of *key* must wait for
        """
        await checkpoint_if_cancelled()
        job = await self._accept(
            key, fn, args, timeout, weight, priority, retry, "awaiting submit()"
        )
        await cancel_shielded_checkpoint()
        return job

    def submit_nowait(
        self,
        key: K,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
        *args: *PosArgsT,
        timeout: float | None = None,
        weight: int = 1,
        priority: float = 0,
        retry: Retry | None = None,
    ) -> Job[T]:
        """Queue ``fn(*args)`` in the lane of *key* at once and return its handle.

        Never blocks. Allowed from inside a job of the same key, as long as that job
        does not await the handle before it has finished. The options are those of
        :meth:`submit`.

        :raises LaneFull: if the lane has ``max_pending`` queued jobs or other callers
            are waiting for room
        :raises LanesClosed: if the lanes are closed
        """
        if (
            self._accepting
            and timeout is None
            and retry is None
            and weight == 1
            and not priority
            and not self._halted
        ):
            # The common case, kept short: what _new_job() does for default options.
            if not callable(fn):
                check_callable(fn)
            lanes = self._lanes
            try:
                lane = lanes.get(key)
            except TypeError:
                raise _unhashable(key) from None
            ctx = copy_context()
            try:  # same_context(), inlined
                same = ctx == self._home
            except Exception:
                same = False
            if same:
                ctx = self._home
            job: Job[T]
            if lane is None:  # the job opens the lane of its key: see Lane
                job = lanes[key] = lane = Lane(self, key, fn, args, ctx, self._timeout, None)
                # _enqueue(), inlined for a new lane: the path of every job with
                # distinct keys.
                lane.head = job
                lane.queued = 1
                lane.in_ready = True
                self._queued += 1
                self._submitted += 1
                self._ready.append(lane)
                if not self._permits.exhausted or self._lent_ready:
                    self._kick()
                return job
            job = Job(self, lane, key, fn, args, ctx, self._timeout, None)
        else:
            job = self._new_job(key, fn, args, timeout, weight, priority, retry, None)
            lane = job._lane
        if lane.queued >= self._max_pending or (self._room_waiting and lane.room):
            self._forget_if_idle(lane)
            raise LaneFull(key, self._max_pending)
        if self._enqueue(lane, job):
            self._kick()
        return job

    async def _accept(
        self,
        key: K,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        timeout: float | None,
        weight: int,
        priority: float,
        retry: Retry | None,
        what: str,
    ) -> Job[T]:
        job = self._new_job(key, fn, args, timeout, weight, priority, retry, what)
        lane = job._lane
        if lane.queued < self._max_pending and not (self._room_waiting and lane.room):
            if self._enqueue(lane, job):
                self._kick()
            return job
        await self._wait_for_room(lane, job)
        return job

    def _new_job(  # submit_nowait() copies its default-options case: change both
        self,
        key: K,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        timeout: float | None,
        weight: int,
        priority: float,
        retry: Retry | None,
        what: str | None,
    ) -> Job[T]:
        if self._closed:
            raise LanesClosed(self._closed_reason)
        if self._host is None:
            raise RuntimeError(
                "the lanes are not running: use 'async with KeyedLanes() as lanes:' "
                "or pass task_group= to KeyedLanes()"
            )
        if not callable(fn):
            check_callable(fn)
        if timeout is None:
            timeout = self._timeout
        else:
            timeout = _job_timeout("timeout", timeout)
        weighed = weight != 1 or bool(priority)
        if weighed:
            self._check_weight(weight, priority)
        links: tuple[tuple[object, Hashable], ...] | None = None
        if what is not None:
            caller = current_job.get()
            if caller is not None:
                links = caller._chain
                if (self, key) in links:
                    raise LaneDeadlock(key, what)
        try:
            lane = self._lanes.get(key)
        except TypeError:
            raise _unhashable(key) from None
        if self._halted and key in self._halted:
            raise LaneHalted(key, self._halted[key])
        if retry is not None:
            _check_retry("retry", retry)
        ctx = copy_context()
        if same_context(ctx, self._home):
            ctx = self._home  # one shared context instead of a copy per queued job
        job: Job[T]
        if lane is None:  # the job opens the lane of its key: see Lane
            job = self._lanes[key] = Lane(self, key, fn, args, ctx, timeout, links)
        else:
            job = Job(self, lane, key, fn, args, ctx, timeout, links)
        if weighed:
            self._weigh(job, weight, priority)
        if retry is not None:
            job._more.retry = retry
        return job

    def _check_weight(self, weight: object, priority: object) -> None:
        weight = check_positive_int("weight", weight)
        permits = self._permits
        if weight > 1 and not permits.weighted:
            raise ValueError(
                f"weight must be 1 with a CapacityLimiter as the limit, got {weight!r}: "
                f"use a WeightedLimiter or an int limit for weighted jobs"
            )
        if weight > permits.total:
            raise ValueError(
                f"weight must be at most the limit of {permits.total!r}, got {weight!r}: "
                f"such a job could never start"
            )
        if not isinstance(priority, int | float) or isinstance(priority, bool):
            raise TypeError(f"priority must be a number (lower runs first), got {priority!r}")
        if math.isnan(priority):
            raise ValueError(f"priority must be a number (lower runs first), got {priority!r}")

    def _weigh(self, job: Job[Any], weight: int, priority: float) -> None:
        more = job._more
        more.weight = weight
        more.priority = priority
        if weight != 1:
            self._weighted = True
        if priority and type(self._ready) is deque:
            # From the first prioritised job on, ready lanes wait in priority order.
            self._ready = _PriorityReady(self._ready)

    def _forget_if_idle(self, lane: Lane) -> None:
        if lane.live and not lane.queued and not lane.running and lane.idle_at is None:
            self._drop(lane)

    async def _wait_for_room(self, lane: Lane, job: Job[Any]) -> None:
        waiter = _RoomWaiter(job)
        extras = lane.extras
        if extras.room is None:
            extras.room = deque()
        extras.room.append(waiter)
        self._room_waiting += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.accepted:
                job.cancel()  # accepted in the same instant: withdraw it, unstarted
            elif not waiter.closed and waiter.refused is None:  # else it left the line
                extras.room.remove(waiter)
                self._forget_if_idle(lane)
            raise
        finally:
            self._room_waiting -= 1
        if waiter.closed:
            raise LanesClosed(self._closed_reason)
        if waiter.refused is not None:
            raise waiter.refused

    # -- bookkeeping (all synchronous) ------------------------------------------------

    def _queued_jobs(self, lane: Lane) -> list[Job[Any]]:
        if lane.head is None:
            return []
        return [lane.head] if not lane.queue else [lane.head, *lane.queue]

    def _clear_queue(self, lane: Lane) -> None:
        lane.head = None
        if lane.queue:
            lane.queue.clear()

    def _enqueue(self, lane: Lane, job: Job[Any]) -> bool:
        """Queue *job*; return whether its lane has just become ready to start a job."""
        # submit_nowait() has a copy for a new lane: change both.
        if lane.head is None:
            lane.head = job
        elif lane.queue is None:
            lane.queue = deque((job,))
        else:
            lane.queue.append(job)
        lane.queued += 1
        lane.idle_at = None
        self._queued += 1
        self._submitted += 1
        if lane.running < self._per_key and not lane.in_ready:
            lane.in_ready = True
            self._ready.append(lane)
            return True
        return False

    def _admit(self, lane: Lane) -> None:
        """Hand freed room in *lane* to the callers waiting for it, first come first."""
        room = lane.room
        assert room is not None
        while room and lane.queued < self._max_pending:
            waiter = room.popleft()
            waiter.accepted = True
            self._enqueue(lane, waiter.job)
            waiter.event.set()

    def _start(self, lane: Lane, job: Job[Any], token: Token, credit: Credit | None) -> Job[Any]:
        """Take *job*, the first queued job of *lane*, and mark it running on *token*."""
        # _returned_next() has a copy for a plain job on a reused permit: change both.
        queue = lane.queue
        lane.head = queue.popleft() if queue else None
        job._status = _RUNNING
        job._token = token
        job._attempts += 1
        if credit is not None:
            job._more.credit = credit
        lane.queued -= 1
        lane.running += 1
        self._queued -= 1
        self._running += 1
        if self._running > self._peak_running:
            self._peak_running = self._running
        if self._per_key == 1:
            lane.current = job
        else:
            self._start_one_of_many(lane, job)
        if self._room_waiting and lane.room:
            self._admit(lane)
        return job

    def _first_queued(self, lane: Lane) -> Job[Any]:
        """The next job of *lane* to start, past the cancelled jobs left in its queue.

        Cancelled queued jobs stay as tombstones until they reach the head: here.
        """
        job = lane.head
        assert job is not None
        while job._status is not _QUEUED:
            assert lane.queue
            job = lane.head = lane.queue.popleft()
        return job

    def _start_one_of_many(self, lane: Lane, job: Job[Any]) -> None:
        """With per_key > 1: track the running jobs, and the order they must begin in."""
        extras = lane.extras
        extras.active.append(job)
        if extras.starting is None:
            extras.starting = deque()
        extras.starting.append(job)
        job._ordered = True
        if lane.queued and lane.running < self._per_key and not lane.in_ready:
            lane.in_ready = True
            self._ready.append(lane)

    def _next(self, token: Token | None, *, fresh: bool = False) -> Job[Any] | None:
        """Pick the next job to run, fairly, and give it a permit.

        *token* is a free permit the caller holds (or ``None``); it is used or released.
        Lanes with lent credits go first: they are what waiting jobs wait for.
        """
        # _returned_next() has a copy for a plain job on a reused permit: change both.
        if self._lent_ready:
            job = self._next_on_credit(token)
            if job is not None:
                return job
        ready = self._ready
        permits = self._permits
        per_key = self._per_key
        now = anyio.current_time() if self._pacing else 0.0
        while ready:
            lane = ready[0]
            if not lane.queued or lane.running >= per_key:
                ready.popleft()
                lane.in_ready = False
                continue
            if self._pacing and not self._rates_allow(lane, now):
                if self._global_at is not None:
                    break  # no lane may start before the global rate has a token
                ready.popleft()  # the lane waits for its own token, holding no permit
                continue
            job = lane.head
            assert job is not None
            if job._status is not _QUEUED:
                job = self._first_queued(lane)
            if token is not None:
                extras = job._extras
                weight = 1 if extras is None else extras.weight
                if (fresh or permits.reuse) and token.weight == weight:
                    token.holders = 1  # the freed permit serves the next job as it is
                else:
                    permits.release(token)
                    token = None
            if token is None:
                token = permits.try_acquire(job)
                if token is None:
                    if permits.shared:
                        self._wait_for_token(job)
                    return None
            if self._pacing and not self._take_tokens(lane, now):
                permits.release(token)
                return None
            ready.popleft()
            lane.in_ready = False
            return self._start(lane, job, token, None)
        if token is not None:
            permits.release(token)
        return None

    # -- rates -------------------------------------------------------------------------

    def _rates_allow(self, lane: Lane, now: float) -> bool:
        """Whether the rates let *lane* start a job now; else schedule it for later."""
        if self._global_at is not None:
            return False  # the pacer wakes the lanes when the global rate has a token
        head = lane.head
        if head is not None and head._status is not _QUEUED:
            head = self._first_queued(lane)
        if head is not None and head._attempts:  # the head waits to be retried
            assert head._extras is not None
            at = head._extras.due
            if at > now + _SLACK:
                lane.extras.paced = True
                heapq.heappush(self._paced, (at, next(self._order), lane))
                self._pace_at(at)
                return False
        global_rate = self._global_rate
        if global_rate is not None:
            at = global_rate.ready_at(1)
            if at > now + _SLACK:
                self._global_at = at
                self._pace_at(at)
                return False
        if self._rate is not None:
            bucket = lane.extras.bucket
            if bucket is not None:
                at = bucket.ready_at(1)
                if at > now + _SLACK:
                    lane.extras.paced = True
                    heapq.heappush(self._paced, (at, next(self._order), lane))
                    self._pace_at(at)
                    return False
        return True

    def _take_tokens(self, lane: Lane, now: float) -> bool:
        """Take the tokens for a job of *lane* that is about to start."""
        global_rate = self._global_rate
        if global_rate is not None and not global_rate._try_take(1, now, _SLACK):
            # Other users of the limiter wait for tokens: they go first.
            self._global_at = global_rate.ready_at(1)
            self._pace_at(self._global_at)
            return False
        rate = self._rate
        if rate is not None:
            extras = lane.extras
            if extras.bucket is None:
                extras.bucket = _TokenBucket(rate.rate, rate.per, rate.burst)
            extras.bucket.take(1, now)
        return True

    def _pace_at(self, at: float) -> None:
        """Have the pacer wake the waiting lanes at *at* (or earlier)."""
        if self._shutdown:
            return
        if self._pacer_scope is None:
            self._pacer_scope = anyio.CancelScope()
            self._spawn(self._pace, self._pacer_scope)
        elif at < self._pacer_until and self._pacer_sleep is not None:
            self._pacer_sleep.cancel()  # it sleeps too long: let it look again

    async def _pace(self, scope: anyio.CancelScope) -> None:
        """Put lanes back in line as their rates give them tokens again."""
        paced = self._paced
        try:
            with scope:
                while paced or self._global_at is not None:
                    wake = min(
                        paced[0][0] if paced else math.inf,
                        math.inf if self._global_at is None else self._global_at,
                    )
                    if anyio.current_time() + _SLACK < wake:
                        self._pacer_until = wake
                        with anyio.CancelScope() as self._pacer_sleep:
                            await anyio.sleep_until(wake)
                        self._pacer_sleep = None
                        self._pacer_until = math.inf
                        continue
                    now = anyio.current_time() + _SLACK
                    if self._global_at is not None and self._global_at <= now:
                        self._global_at = None
                    while paced and paced[0][0] <= now:
                        self._unpace(heapq.heappop(paced)[2])
                    self._kick()
                    # Let the limiter's own waiters, if any, take their tokens first.
                    await checkpoint()
        except BaseException:
            self._pacer_scope = None
            self._host_gone("the task group hosting the lanes was cancelled")
            raise
        self._pacer_scope = None

    def _unpace(self, lane: Lane) -> None:
        extras = lane.extras
        if not extras.paced:  # put back in line already
            return
        extras.paced = False
        self._back_in_line(lane)
        if extras.lent and not extras.in_lent_ready:
            extras.in_lent_ready = True
            self._lent_ready.append(lane)

    def _back_in_line(self, lane: Lane) -> None:
        """Put a lane that waited in the pacer's queue back among the ready lanes."""
        if lane.in_ready:
            if lane.queued:
                self._ready.append(lane)
            else:  # emptied while it waited (cancelled, or its key halted)
                lane.in_ready = False

    def _next_on_credit(self, token: Token | None) -> Job[Any] | None:
        """Start a job of a lane that waiting jobs have lent their permits to."""
        lent_ready = self._lent_ready
        while lent_ready:
            lane = lent_ready.popleft()
            extras = lane.extras
            extras.in_lent_ready = False
            if extras.lent and lane.queued and lane.running < self._per_key:
                if self._pacing:
                    now = anyio.current_time()
                    if extras.paced or not self._rates_allow(lane, now):
                        continue  # the pacer puts it back when it has a token
                    if not self._take_tokens(lane, now):
                        continue
                credit = extras.lent.pop()
                credit.token.holders += 1
                if extras.lent:
                    extras.in_lent_ready = True
                    lent_ready.append(lane)
                if token is not None:
                    self._permits.release(token)
                return self._start(lane, self._first_queued(lane), credit.token, credit)
        return None

    def _finish(
        self,
        job: Job[Any],
        status: JobStatus,
        value: Any = None,
        exc: BaseException | None = None,
        timed_out: bool = False,
    ) -> Token | None:
        """Settle a running job; return its permit if nobody else holds it now.

        A failed job that its retry policy retries is queued again instead, at the
        head of its lane, to start once the policy's delay has passed.
        """
        if job._ordered:  # settled before its turn to begin came
            self._pass_turn(job)
        extras = job._extras
        retry_at: float | None = None
        if status is _FINISHED:
            if extras is not None:
                if extras.breaker is not None:
                    (breaker, ticket), extras.breaker = extras.breaker, None
                    breaker._exit(ticket, None)
                policy = extras.retry or self._retry
                if policy is not None:
                    policy._record_outcome("succeeded")
            elif self._retry is not None:
                self._retry._record_outcome("succeeded")
            job._settle(status, value, exc)
            self._completed += 1
        elif status is _FAILED:
            assert exc is not None
            try:
                retry_at = self._retry_at(job, exc)
            except Exception as judging:  # its retry_on predicate raised: the job fails
                exc, timed_out = judging, False
            extras = job._extras
            if retry_at is None:
                fn, args = job._fn, job._args
                job._settle(status, value, exc)
                if timed_out:
                    self._timed_out += 1
                else:
                    self._failed += 1
                if isinstance(exc, Exception) and (self._postbox is not None or self._halt):
                    self._failed_for_good(job, fn, args, exc)
        else:
            if job._attempts:  # its policy, if any, counted it as a run
                self._stopped(job)
            job._settle(status, value, exc)
            self._cancelled += 1
        self._running -= 1
        lane = job._lane
        lane.running -= 1
        if self._per_key == 1:
            lane.current = None
        else:
            lane.extras.active.remove(job)
        if retry_at is not None:
            self._requeue(lane, job, retry_at)
        if lane.queued:
            if not lane.in_ready:
                lane.in_ready = True
                self._ready.append(lane)
        elif not lane.running:
            self._lane_idle(lane)
        token = job._token
        assert token is not None
        token.holders -= 1
        token.failed = status is _FAILED  # for a limit that adapts to outcomes
        if retry_at is not None:
            job._token = None
        if extras is not None:
            if retry_at is None:
                self._end_credits(extras)
            else:  # the credits lent for it stay; the one it ran on is free again
                lent, extras.credit = extras.credit, None
                if lent is not None and lent.active:
                    self._offer_credit(lent)
        if not self._running and not self._queued:
            self._wake_idle()
        return token if token.holders == 0 else None

    def _returned(self, job: Job[Any], value: Any) -> Token | None:
        """:meth:`_finish` for a job that returned, with no extras, no retries or
        breakers and ``per_key=1``, its calls inlined (most of them reach it through
        :meth:`_returned_next`)."""
        # Job._settle(), inlined.
        job._status = _FINISHED
        job._outcome = value
        job._scope = None
        job._args = ()
        job._ctx = _SPENT
        if job._event is not None:
            job._event.set()
        self._completed += 1
        self._running -= 1
        lane = job._lane
        lane.running = 0
        lane.current = None
        if lane.queued:
            if not lane.in_ready:
                lane.in_ready = True
                self._ready.append(lane)
        elif lane.head is None and lane.lane_extras is None and not self._linger and lane.live:
            # _lane_idle(), inlined: nothing to tell, nothing to keep; drop the lane.
            lane.live = False
            lane.queue = None
            del lane._lane  # see Lane.close_lane()
            del self._lanes[lane.key]  # type: ignore[arg-type]  # the key of a lane is a K
        else:
            self._lane_idle(lane)
        token = job._token
        assert token is not None
        token.holders -= 1
        token.failed = False
        if not self._running and not self._queued:
            self._wake_idle()
        return token if token.holders == 0 else None

    def _returned_next(self, job: Job[Any], value: Any) -> Job[Any] | None:
        """:meth:`_returned`, then :meth:`_next` on the job's permit: the next job to run.

        Most of the time nothing else claims the permit (no lent credits, weights or
        rates) and the next ready job is plain too: the permit passes to it as it is.
        """
        token = self._returned(job, value)
        if token is None:  # a credit lent from it still runs a job
            return self._next(None)
        if self._lent_ready or self._pacing or self._weighted or not self._permits.reuse:
            return self._next(token)
        # _next() and _start(), inlined for that case: change them and this together.
        ready = self._ready
        while ready:
            lane = ready[0]
            if not lane.queued or lane.running:
                ready.popleft()
                lane.in_ready = False
                continue
            head = lane.head
            assert head is not None
            if head._status is not _QUEUED:
                head = self._first_queued(lane)
            if head._extras is not None:
                break  # it may weigh more than its permit: the general path
            ready.popleft()
            lane.in_ready = False
            queue = lane.queue
            lane.head = queue.popleft() if queue else None
            head._status = _RUNNING
            head._token = token
            head._attempts += 1
            token.holders = 1
            lane.queued -= 1
            lane.running = 1
            lane.current = head
            self._queued -= 1
            self._running += 1
            if self._room_waiting and lane.room:
                self._admit(lane)
            return head
        return self._next(token)

    # -- retries, dead-letter and halted lanes -------------------------------------

    def _retry_at(self, job: Job[Any], exc: BaseException) -> float | None:
        """When to start a failed job again, by its retry policy (``None``: never).

        Counts the job's outcome in the policy's statistics when it is not retried.
        Raises what the policy's ``retry_on`` predicate raised.
        """
        extras = job._extras
        policy = self._policy_of(job)
        if policy is None:
            return None
        if job._cancel_requested or self._shutdown or (self._halted and job.key in self._halted):
            policy._record_outcome("cancelled")  # stopped from outside, not by the policy
            return None
        try:
            delay, outcome = policy._decide(
                job._attempts, exc, None if extras is None else extras.delay
            )
        except Exception:
            policy._record_outcome("not_retryable")
            raise
        if delay is None:
            assert outcome is not None
            policy._record_outcome(outcome)
            return None
        more = job._more
        more.delay = delay
        more.due = anyio.current_time() + delay
        return more.due

    def _note_start(self, job: Job[Any]) -> None:
        """Count a call of a job that has a retry policy: a run, or a retry."""
        policy = self._policy_of(job)
        if policy is None:
            return
        if job._attempts == 1:
            policy._record_call()
            if self._per_key > 1:
                job._more.order = next(self._order)  # its place among retried jobs
        else:
            policy._record_retry()
            self._retried += 1

    def _stopped(self, job: Job[Any]) -> None:
        """Count a run stopped from outside (cancelled, or its lane halted)."""
        policy = self._policy_of(job)
        if policy is not None:
            policy._record_outcome("cancelled")

    def _policy_of(self, job: Job[Any]) -> Retry | None:
        extras = job._extras
        if extras is not None and extras.retry is not None:
            return extras.retry
        return self._retry

    def _requeue(self, lane: Lane, job: Job[Any], at: float) -> None:
        """Queue a job to retry at the head of its lane, not to start before *at*.

        With ``per_key > 1``, several jobs of a key may wait to be retried: they wait
        at the head in the order they were first started, which is submission order.
        """
        job._status = _QUEUED
        job._scope = None  # else cancel() would cancel the scope of its last attempt
        if lane.head is None:
            lane.head = job
        elif self._per_key == 1:
            if lane.queue is None:
                lane.queue = deque()
            lane.queue.appendleft(lane.head)
            lane.head = job
        else:
            self._insert_retry(lane, job)
        lane.queued += 1
        self._queued += 1
        # From the first retry on, lanes may have to wait before they start a job.
        self._pacing = True

    def _insert_retry(self, lane: Lane, job: Job[Any]) -> None:
        order = job._more.order
        queued = self._queued_jobs(lane)
        at = 0
        for at, other in enumerate(queued):  # noqa: B007  # the place is what is left
            if other._status is _QUEUED and not (other._attempts and other._more.order < order):
                break
        else:
            at = len(queued)
        queued.insert(at, job)
        lane.head = queued[0]
        lane.queue = deque(queued[1:])

    def _forget_retry(self, lane: Lane) -> None:
        """The job a lane waited for has gone: let the lane look at its next job now."""
        extras = lane.extras
        if extras.paced:  # the pacer's entry, when it comes, finds it in line already
            extras.paced = False
            self._back_in_line(lane)

    def _failed_for_good(
        self, job: Job[Any], fn: Callable[..., Any], args: tuple[Any, ...], exc: Exception
    ) -> None:
        """Post a job that failed for good to the dead-letter; halt its lane if asked."""
        attempts = job._attempts
        self._post(job, fn, args, exc, f"failed after {attempts} attempt(s): {exc!r}")
        if self._halt:
            self._halt_lane(job._lane, job.key, exc)

    def _post(
        self,
        job: Job[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        exc: BaseException,
        reason: str,
    ) -> None:
        if self._postbox is None:
            return
        self._postbox.post(DeadLetter(job.key, fn, args, job._attempts, exc, reason, job))
        job._mark_retrieved()  # the dead-letter has it

    def _halt_lane(self, lane: Lane, key: Any, cause: BaseException) -> None:
        """Refuse the key's jobs from now on, and fail the ones queued in its lane."""
        self._halted.setdefault(key, cause)
        cause = self._halted[key]
        for queued in self._queued_jobs(lane):
            if queued._status is _QUEUED:
                if queued._attempts:  # it waited to be retried
                    self._stopped(queued)
                fn, args = queued._fn, queued._args
                error = LaneHalted(key, cause)
                self._settle(queued, _FAILED, exc=error)
                queued._mark_retrieved()  # a consequence: the cause is reported
                self._failed += 1
                self._queued -= 1
                lane.queued -= 1
                self._post(queued, fn, args, error, f"its lane was halted by {cause!r}")
        self._clear_queue(lane)
        self._forget_retry(lane)
        room = lane.room
        if room:
            for waiter in room:
                waiter.refused = LaneHalted(key, cause)
                waiter.event.set()
            room.clear()

    def resume(self, key: K) -> None:
        """Accept jobs for *key* again after a failure halted its lane.

        Does nothing if the lane of *key* is not halted. Not a checkpoint.
        """
        self._halted.pop(key, None)

    @property
    def halted(self) -> Mapping[K, BaseException]:
        """The halted keys, each with the exception that halted its lane (read-only)."""
        return MappingProxyType(self._halted)

    def _end_credits(self, extras: _JobExtras) -> None:
        """Take back the credits lent for a settled job; pass on the one it ran on."""
        if extras.credits:
            for credit in extras.credits:
                self._end_credit(credit)
        lent = extras.credit
        if lent is not None and lent.active:
            self._offer_credit(lent)

    async def _take_turn(self, job: Job[Any]) -> None:
        """Wait until every job of the lane handed out before *job* has begun."""
        extras = job._lane.extras
        assert extras.starting is not None
        while extras.starting[0] is not job:
            if extras.turn is None:
                extras.turn = anyio.Event()
            await extras.turn.wait()
        self._pass_turn(job)

    def _pass_turn(self, job: Job[Any]) -> None:
        job._ordered = False
        extras = job._lane.extras
        assert extras.starting is not None
        extras.starting.remove(job)
        if extras.turn is not None:
            extras.turn.set()
            extras.turn = None

    def _cancel_queued(self, job: Job[Any]) -> None:
        lane = job._lane
        self._settle(job, _CANCELLED)
        self._cancelled += 1
        self._queued -= 1
        lane.queued -= 1
        if job._attempts:  # it waited to be retried, at the head: the lane may go on
            self._forget_retry(lane)
            self._stopped(job)
        if self._room_waiting and lane.room:
            self._admit(lane)
        if not lane.queued and not lane.running:
            self._lane_idle(lane)
        if not self._running and not self._queued:
            self._wake_idle()
        self._kick()

    def _settle(
        self, job: Job[Any], status: JobStatus, value: Any = None, exc: BaseException | None = None
    ) -> None:
        """Settle *job* and take back the permits lent to its lane on its behalf."""
        job._settle(status, value, exc)
        extras = job._extras
        if extras is not None and extras.credits:
            for credit in extras.credits:
                self._end_credit(credit)

    def _lane_idle(self, lane: Lane) -> None:
        # _returned() has a copy of the case of a lane dropped at once: change both.
        if lane.head is not None:
            self._clear_queue(lane)  # cancelled jobs left behind
        extras = lane.lane_extras
        if extras is not None and extras.idle_event is not None:
            extras.idle_event.set()
            extras.idle_event = None
        if not lane.live:
            return
        if self._shutdown or not self._linger:
            lane.close_lane()
            del self._lanes[lane.key]  # type: ignore[arg-type]  # the key of a lane is a K
            return
        now = anyio.current_time()
        expiry = now + self._idle_timeout
        extras = lane.lane_extras
        if extras is not None:
            if extras.bucket is not None:
                # A lane that forgot its bucket would let a new burst through: it
                # stays until its bucket is full again.
                expiry = max(expiry, extras.bucket.ready_at(extras.bucket.burst))
            breaker = extras.breaker
            if breaker is not None and not breaker._at_rest:
                # Its breaker is remembered for a recovery time after the last job.
                expiry = max(expiry, now + breaker.recovery_time)
        if expiry <= now:
            lane.close_lane()
            del self._lanes[lane.key]  # type: ignore[arg-type]
            return
        lane.idle_at = now
        heapq.heappush(self._lingering, (expiry, now, next(self._order), lane))
        if self._reaper_scope is None:
            self._reaper_scope = anyio.CancelScope()
            self._spawn(self._reap, self._reaper_scope)

    def _drop(self, lane: Lane) -> None:
        lane.close_lane()
        del self._lanes[lane.key]  # type: ignore[arg-type]  # the key of a lane is a K

    def _wake_idle(self) -> None:
        event = self._idle_event
        if event is not None:
            self._idle_event = None
            event.set()

    # -- lending permits to awaited jobs ----------------------------------------------

    def _lend(self, waiter: Job[Any], job: Job[Any]) -> Credit | None:
        """*waiter* (a running job) is about to wait for *job*: check and lend."""
        if job._status is _QUEUED:
            if (self, job.key) in waiter._chain:
                raise LaneDeadlock(job.key, "awaiting a job that has not started")
            if self._waits_for(job, waiter):
                raise LaneDeadlock(job.key, "awaiting a job queued behind jobs that wait for it")
        chain = job._chain
        extra = tuple(link for link in waiter._chain if link not in chain)
        if extra:
            more = job._more
            more.links = extra if more.links is None else more.links + extra
        token = waiter._token
        if (
            waiter._owner is not self
            or token is None
            or job._status is not _QUEUED
            or waiter._status is not _RUNNING
            or type(self._permits) is Permits
        ):
            return None
        credit = Credit(token, job._lane)
        more = job._more
        if more.credits is None:
            more.credits = []
        more.credits.append(credit)
        self._offer_credit(credit)
        self._kick()
        return credit

    def _waits_for(self, job: Job[Any], target: Job[Any]) -> bool:
        """Whether queued *job* can start only after *target* has finished.

        Follows the wait-for graph: a queued job waits for the running jobs of its
        full lane, and a running job for the job it awaits.
        """
        seen: set[int] = set()
        stack = [job]
        while stack:
            current = stack.pop()
            if current is target:
                return True
            if id(current) in seen or current._owner is not self:
                continue
            seen.add(id(current))
            if current._status is _QUEUED:
                lane = current._lane
                if lane.running >= self._per_key:
                    if self._per_key > 1:
                        stack.extend(lane.extras.active)
                    elif lane.current is not None:
                        stack.append(lane.current)
            elif current._extras is not None and current._extras.awaiting is not None:
                stack.append(current._extras.awaiting)
        return False

    def _offer_credit(self, credit: Credit) -> None:
        lane = credit.lane
        extras = lane.extras
        extras.lent.append(credit)
        if not extras.in_lent_ready:
            extras.in_lent_ready = True
            self._lent_ready.append(lane)

    def _end_credit(self, credit: Credit) -> None:
        if credit.active:
            credit.active = False
            extras = credit.lane.lane_extras
            if extras is not None and credit in extras.lent:  # else a running job uses it
                extras.lent.remove(credit)

    # -- workers ---------------------------------------------------------------------

    def _kick(self) -> None:
        """Start as much ready work as the free permits allow."""
        if self._shutdown or (self._permits.exhausted and not self._lent_ready):
            return
        while (job := self._next(None)) is not None:
            if self._parked:
                parked = self._parked.pop()
                parked.job = job
                parked.event.set()
            else:
                self._spawn(self._worker, job)

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        host = self._host
        assert host is not None
        # Tasks start in the lanes' home context, whoever triggered the spawn.
        self._home.copy().run(
            host.start_soon, fn, *args, name=f"anyio_keyq lane worker {id(self):#x}"
        )

    async def _worker(self, job: Job[Any] | None) -> None:
        """Run jobs, one after another, for as long as there is ready work."""
        self._workers += 1
        free: Token | None = None
        # Jobs submitted from a context equal to this worker's run right here, with no
        # per-step context switch; a job that changes the context retires the worker,
        # so that nothing it set leaks into the next job.
        home = copy_context()
        if same_context(home, self._home):
            home = self._home  # most jobs' context: equal by identity, the fast check
        plain = not self._hooks and self._per_key == 1  # see _returned()
        dirty = False
        # Locals that hold a job's things: cleared before the worker parks.
        value: Any = None
        expected: Context | None = None
        ctx: Context | None = None
        extras: _JobExtras | None = None
        awaitable: Any = None
        try:
            while True:
                if dirty:
                    if free is not None:
                        self._permits.release(free)
                    self._kick()
                    return
                if job is None:
                    job = self._next(free)
                    free = None
                    if self._weighted:
                        self._kick()
                with anyio.CancelScope() as scope:
                    while True:
                        if job is None:
                            # Park in the scope: nothing has cancelled it and it has no
                            # deadline, so the next job needs no new one (entering and
                            # leaving a scope costs 5 µs on asyncio, 12 on trio). Let go
                            # of the last job (context, snapshot, extras, value) first.
                            if current_job.get() is not None:
                                current_job.set(None)
                            expected = ctx = extras = awaitable = value = None
                            job = await self._park()
                            if job is None:
                                return
                        timeout = job._timeout
                        if job._cancel_requested:  # cancelled between hand-off and start
                            job._attempts -= 1  # its function was not called
                            free = self._finish(job, _CANCELLED)
                            timeout = None
                        else:
                            if timeout is not None:
                                scope.deadline = anyio.current_time() + timeout
                            job._scope = scope
                            try:
                                extras = job._extras
                                if job._ordered:
                                    await self._take_turn(job)
                                if extras is not None or self._hooks:
                                    if self._retry is not None or extras is not None:
                                        self._note_start(job)  # its function is called now
                                    if self._breaker is not None:
                                        self._enter_breaker(job)
                                ctx = job._ctx
                                if ctx is home or same_context(ctx, home):
                                    # Set, never reset: the next job sets its own (a
                                    # reset costs as much as a set), and a parked
                                    # worker lets go of it.
                                    current_job.set(job)
                                    expected = copy_context()
                                    try:
                                        awaitable = job._fn(*job._args)
                                        if type(awaitable) is CoroutineType:
                                            value = await awaitable  # pyright: ignore[reportUnknownVariableType]
                                        else:
                                            value = await job._adapt(awaitable)
                                    finally:
                                        try:  # same_context(), inlined
                                            dirty = copy_context() != expected
                                        except Exception:
                                            dirty = True
                                else:
                                    value = await job._call()
                            except BaseException as exc:
                                free = self._finish_exc(job, exc, scope)
                                job = None
                                if not isinstance(exc, Exception):
                                    raise
                            else:
                                if not plain or job._extras is not None:
                                    free = self._finish(job, _FINISHED, value)
                                elif timeout is None and not dirty and not job._cancel_requested:
                                    # The scope needs no reset: straight on to the next
                                    # job, or to parking.
                                    job = self._returned_next(job, value)
                                    continue
                                else:
                                    free = self._returned(job, value)
                        if dirty:
                            job = None
                            break
                        # Only a cancel or a deadline calls for a fresh scope.
                        check = timeout is not None or job is None or job._cancel_requested
                        job = self._next(free)
                        free = None
                        if self._weighted:  # a heavy job's permit may fit more than one
                            self._kick()
                        if check and scope.cancel_called:
                            break  # a new scope, for the next job or to park in
                        if timeout is not None:
                            scope.deadline = math.inf
        except BaseException:
            if free is not None:
                self._permits.release(free)
            self._host_gone("the task group hosting the lanes was cancelled")
            raise
        finally:
            self._workers -= 1

    def _finish_exc(
        self, job: Job[Any], exc: BaseException, scope: anyio.CancelScope
    ) -> Token | None:
        """Settle a job that raised: failed, timed out, or cancelled."""
        status = _FAILED
        error: BaseException | None = exc
        timed_out = False
        if not isinstance(exc, Exception) and isinstance(exc, anyio.get_cancelled_exc_class()):
            if job._cancel_requested or not scope.cancel_called:
                status, error = _CANCELLED, None
            else:
                timed_out = True
                error = TimeoutError(
                    f"the job of key {job.key!r} ran past its time limit of {job._timeout} s"
                )
        extras = job._extras
        if extras is not None and extras.breaker is not None:
            (breaker, ticket), extras.breaker = extras.breaker, None
            try:
                breaker._exit(ticket, exc if error is None else error)  # cancelled: no outcome
            except Exception as judging:  # its failure_on predicate raised: the job fails
                status, error, timed_out = _FAILED, judging, False
        return self._finish(job, status, exc=error, timed_out=timed_out)

    def _enter_breaker(self, job: Job[Any]) -> None:
        """Pass the breaker of the job's key, or raise :exc:`CircuitOpen`."""
        extras = job._lane.extras
        breaker = extras.breaker
        if breaker is None:
            assert self._breaker is not None
            breaker = extras.breaker = self._breaker._copy(job.key)
        job._more.breaker = (breaker, breaker._enter())

    async def _park(self) -> Job[Any] | None:
        """Wait for work as a spare worker; ``None`` means exit."""
        if self._shutdown or len(self._parked) >= self._max_parked:
            return None
        parked = _Parked()
        self._parked.append(parked)
        try:
            await parked.event.wait()
        except BaseException:
            job = parked.job
            if job is None:
                if not parked.event.is_set():  # not yet woken by _stop_workers()
                    self._parked.remove(parked)
            else:  # handed a job in the same instant as the cancellation
                job._attempts -= 1  # its function was not called
                free = self._finish(job, _CANCELLED)
                if free is not None:
                    self._permits.release(free)
            raise
        return parked.job

    def _wait_for_token(self, job: Job[Any]) -> None:
        """Have one task wait on the shared limiter for a permit for the ready lanes.

        It asks with the weight and priority of *job*, the next job to start.
        """
        if self._token_waiter_scope is None and not self._shutdown:
            self._token_waiter_scope = anyio.CancelScope()
            self._spawn(self._token_waiter, self._token_waiter_scope, job)

    async def _token_waiter(self, scope: anyio.CancelScope, job: Job[Any]) -> None:
        token = None
        try:
            with scope:
                token = await self._permits.acquire(job)
        except BaseException:
            self._token_waiter_scope = None
            self._host_gone("the task group hosting the lanes was cancelled")
            raise
        self._token_waiter_scope = None
        if token is None:
            return
        first = self._next(token, fresh=True)
        self._kick()
        if first is not None:
            await self._worker(first)

    async def _reap(self, scope: anyio.CancelScope) -> None:
        """Drop lanes that stayed idle for ``idle_timeout`` seconds (or until full)."""
        lingering = self._lingering
        try:
            with scope:
                while lingering:
                    expiry, idle_at, _, lane = lingering[0]
                    if anyio.current_time() + _SLACK < expiry:
                        await anyio.sleep_until(expiry)
                        continue
                    heapq.heappop(lingering)
                    if lane.idle_at == idle_at and lane.live:
                        self._drop(lane)
        except BaseException:
            self._reaper_scope = None
            self._host_gone("the task group hosting the lanes was cancelled")
            raise
        self._reaper_scope = None

    # -- waiting and introspection ------------------------------------------------------

    async def wait_idle(self, key: K = _MISSING) -> None:
        """Wait until no job is queued or running (for *key*, or for any key).

        Returns at once if already idle. Without a *key*, it also waits until the
        dead-letter has received every job that failed for good. This is a checkpoint.

        :raises LaneDeadlock: if called from inside a job that would be waited for
        """
        caller = current_job.get()
        if key is _MISSING:
            if caller is not None and any(lanes is self for lanes, _ in caller._chain):
                raise LaneDeadlock(caller.key, "waiting for the lanes to be idle")
            if not self._queued and not self._running and not self._delivering:
                await checkpoint()
                return
            # A dead-letter function may submit jobs again: wait until both are done.
            while self._queued or self._running or self._delivering:
                if self._queued or self._running:
                    if self._idle_event is None:
                        self._idle_event = anyio.Event()
                    await self._idle_event.wait()
                else:
                    assert self._postbox is not None
                    await self._postbox.wait_delivered()
            return
        if caller is not None and (self, key) in caller._chain:
            raise LaneDeadlock(key, "waiting for the lane to be idle")
        lane = self._lanes.get(key)
        if lane is None or (not lane.queued and not lane.running):
            await checkpoint()
            return
        extras = lane.extras
        if extras.idle_event is None:
            extras.idle_event = anyio.Event()
        await extras.idle_event.wait()

    @property
    def _delivering(self) -> bool:
        return self._postbox is not None and self._postbox.busy

    def pending(self, key: K) -> int:
        """Return how many jobs of *key* are accepted and not yet settled.

        Callers waiting for room in the lane are not counted. 0 for an unknown key.
        """
        lane = self._lanes.get(key)
        return 0 if lane is None else lane.queued + lane.running

    def keys(self) -> tuple[K, ...]:
        """Return a snapshot of the keys of the live lanes."""
        return tuple(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)

    def __contains__(self, key: object) -> bool:
        return key in self._lanes

    @property
    def closed(self) -> bool:
        """Whether the lanes refuse new jobs."""
        return self._closed

    @property
    def limit(self) -> int | anyio.CapacityLimiter | Limiter | None:
        """The global limit the lanes were created with."""
        return self._limit

    def statistics(self) -> LanesStatistics:
        """Return a :class:`LanesStatistics` snapshot. Not a checkpoint."""
        return LanesStatistics(
            lanes=len(self._lanes),
            running=self._running,
            queued=self._queued,
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            waiting_for_room=self._room_waiting,
            workers=self._workers,
            idle_workers=len(self._parked),
            peak_running=self._peak_running,
            limit=self._permits.total,
            retried=self._retried,
            dead_lettered=0 if self._postbox is None else self._postbox.posted,
            halted=len(self._halted),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<anyio_keyq.KeyedLanes at {id(self):#x}: {state}, {len(self._lanes)} lanes, "
            f"{self._running} running, {self._queued} queued, limit={self._limit!r}>"
        )


def _unhashable(key: object) -> TypeError:
    return TypeError(
        f"key must be hashable, got {key!r} of type {type(key).__name__}; "
        f"use an immutable value such as a str, an int or a tuple"
    )


def _check_retry(name: str, value: object) -> None:
    if value is not None and not isinstance(value, Retry):
        raise TypeError(f"{name} must be a Retry policy or None, got {value!r}")


def _check_breaker(name: str, value: object) -> None:
    if value is not None and not isinstance(value, CircuitBreaker):
        raise TypeError(f"{name} must be a CircuitBreaker or None, got {value!r}")


def _check_rate(name: str, value: object) -> None:
    if value is not None and not isinstance(value, RateLimiter):
        raise TypeError(f"{name} must be a RateLimiter or None, got {value!r}")


def _job_timeout(name: str, value: float) -> float | None:
    seconds = check_seconds(name, value, allow_zero=False)
    return None if seconds == math.inf else seconds
