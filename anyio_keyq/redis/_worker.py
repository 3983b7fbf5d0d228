"""The worker side of a queue on Redis: claim heads of lanes, run them, keep leases."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio
import coredis.exceptions
from anyio.abc import TaskStatus  # noqa: TC002 - the API reference resolves it

from .._util import check_positive_int, check_seconds, final
from ._queue import Store, check_name, decode, text

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

logger = logging.getLogger("anyio_keyq.redis")

#: Errors of a call to Redis that a worker survives: it logs them and tries again.
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, TimeoutError)

#: How long the writes after a job (complete, retry, dead-letter, release) may take.
CLEANUP_TIMEOUT = 5.0


class RetryPolicy(Protocol):
    """What a worker needs of a retry policy (:class:`anyio_keyq.Retry` fits)."""

    def next_delay(
        self, attempt: int, exc: BaseException, previous: float | None = None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        ...


@final
@dataclass(frozen=True, slots=True)
class RedisJob:
    """A job as its handler sees it: what to do, and the lease it runs under.

    A handler is an async function that takes one :class:`RedisJob`. It runs while the
    worker holds the lease on the job's key; if the lease is lost (the worker could
    not renew it in time, because it froze or lost Redis), the handler is cancelled,
    and another worker may already be running the same job.

    **Fencing.** :attr:`fence` grows with every lease handed out on the queue: a
    store the handler writes to can keep the largest fence it has seen per key and
    refuse writes with a smaller one, so the writes of a worker that lost its lease
    (and has not noticed yet) cannot overwrite those of the worker that took over.
    """

    #: The job's id, as :meth:`RedisQueue.enqueue` returned it.
    id: str
    #: The job's key.
    key: str
    #: The task name the job was enqueued with.
    task: str
    #: The deserialised payload.
    payload: Any
    #: Which run of the job this is: 1 for the first, then one more per retry and
    #: per run lost with its worker.
    attempt: int
    #: The fencing token of this run's lease: larger than that of every earlier
    #: lease of the queue.
    fence: int
    #: When the job was enqueued, in seconds since the epoch (the server's clock).
    enqueued_at: float


@final
@dataclass(frozen=True, slots=True)
class RedisWorkerStatistics:
    """A snapshot of a :class:`RedisWorker`, from :meth:`RedisWorker.statistics`."""

    #: Jobs running now.
    running: int
    #: Jobs claimed since the worker started.
    claimed: int
    #: Jobs that finished and were removed from their lane.
    completed: int
    #: Failed runs scheduled for a retry.
    retried: int
    #: Jobs this worker moved to the dead letters.
    dead_lettered: int
    #: Runs whose lease was lost: the handler was cancelled, or its result dropped.
    lost: int
    #: Jobs handed back unfinished at shutdown, to run again elsewhere.
    released: int


class _Claimed:
    """A job this worker holds a lease on."""

    __slots__ = (
        "attempt",
        "deadline",
        "enq",
        "error",
        "fails",
        "fmt",
        "id",
        "key",
        "lost",
        "payload",
        "previous_delay",
        "scope",
        "task",
        "token",
    )

    def __init__(self, raw: list[Any], sent: float, lease: float) -> None:
        self.key = text(raw[0])
        self.id = text(raw[1])
        self.token = text(raw[2])
        self.attempt = int(raw[3])
        self.fails = _int(raw[4])
        self.task: bytes | None = raw[5]
        self.payload: bytes | None = raw[6]
        self.fmt: bytes | None = raw[7]
        self.enq = _int(raw[8])
        self.previous_delay = None if raw[9] is None else _int(raw[9]) / 1000
        #: Local time by which the lease surely ended unless renewed.
        self.deadline = sent + lease
        self.scope = anyio.CancelScope()
        self.lost = False
        self.error: Exception | None = None


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return 0


@final
class RedisWorker:
    """Run the jobs of a :class:`RedisQueue`: one at a time per key, across workers.

    .. code-block:: python

        async def send_welcome(job: RedisJob) -> None:
            await mailer.send(job.key, job.payload["lang"])

        async with RedisWorker(url, "emails", {"send_welcome": send_welcome}) as worker:
            await worker.serve()

    A worker claims the head job of a ready key, leases the key (no other worker can
    claim it until the lease ends), runs the job's handler while renewing the lease,
    then removes the job (success), schedules it again after the retry policy's delay
    (failure), or moves it to the dead letters (no retry left, unknown task, payload
    that cannot be read). Any number of workers, in any number of processes, on
    asyncio or trio, can serve one queue; see :doc:`/scaling` for the guarantees.

    **Shutdown.** :meth:`stop` (or SIGTERM/SIGINT with the command line) stops
    claiming, lets running jobs finish for up to *grace* seconds, then cancels the
    rest and hands their keys back at once, the run not counted as an attempt.
    Cancelling :meth:`serve` does the same without the grace period.

    :param url: the Redis URL, as for :class:`RedisQueue`
    :param queue: the queue's name
    :param handlers: task name -> async function taking a :class:`RedisJob`
    :param concurrency: how many jobs this worker runs at once
    :param lease: seconds a lease lasts; it is renewed every ``lease / 3`` while the
        job runs, and a crashed worker's keys are taken over after it expires
    :param retry: the retry policy for failed runs (an :class:`anyio_keyq.Retry`);
        ``None``: a failed job goes to the dead letters at once. Its ``next_delay``
        gets the number of runs of the job that raised so far (runs lost with their
        worker do not count: *max_lost* bounds those) and the previous delay, which
        is kept in Redis with the job. The policy's ``statistics()`` count nothing
        here: the runs of one job may span several workers
    :param max_active: a cap on the jobs running at once on the whole queue, over
        all workers (give every worker the same cap); ``None``: no cap
    :param max_lost: dead-letter a job once this many of its runs were lost with
        their worker (a job that crashes its worker would otherwise run for ever);
        ``None``: no limit
    :param poll_interval: the longest an idle worker waits before it checks the
        queue again (for expired leases and retry delays)
    :param grace: seconds running jobs may take to finish after :meth:`stop`
        (default: *lease*)
    :param accept_pickle: run jobs with pickled payloads (unpickling runs code that
        whoever can write to Redis chooses: only with trusted writers)
    """

    __slots__ = (
        "_accept_pickle",
        "_claimed",
        "_completed",
        "_concurrency",
        "_dead",
        "_grace",
        "_handlers",
        "_jobs",
        "_lease",
        "_lost",
        "_max_active",
        "_max_lost",
        "_poll_interval",
        "_released",
        "_retried",
        "_retry",
        "_serving",
        "_slot_freed",
        "_stopping",
        "_store",
        "_wait_scope",
    )

    def __init__(
        self,
        url: str,
        queue: str,
        handlers: Mapping[str, Callable[[RedisJob], Awaitable[object]]],
        *,
        concurrency: int = 10,
        lease: float = 30.0,
        retry: RetryPolicy | None = None,
        max_active: int | None = None,
        max_lost: int | None = None,
        poll_interval: float = 1.0,
        grace: float | None = None,
        accept_pickle: bool = False,
    ) -> None:
        check_name("url", url)
        check_name("queue", queue)
        if not isinstance(handlers, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"handlers must be a mapping of task names, got {handlers!r}")
        for name, handler in handlers.items():
            check_name("a task name in handlers", name)
            if not callable(handler):
                raise TypeError(f"the handler of task {name!r} must be callable, got {handler!r}")
        if retry is not None and not callable(getattr(retry, "next_delay", None)):
            raise TypeError(f"retry must be a retry policy such as anyio_keyq.Retry, got {retry!r}")
        self._handlers = dict(handlers)
        self._concurrency = check_positive_int("concurrency", concurrency)
        self._lease = check_seconds("lease", lease, allow_zero=False)
        if self._lease < 0.01 or math.isinf(self._lease):
            raise ValueError(f"lease must be >= 0.01 seconds and finite, got {lease!r}")
        self._retry = retry
        self._max_active = 0 if max_active is None else check_positive_int("max_active", max_active)
        self._max_lost = None if max_lost is None else check_positive_int("max_lost", max_lost)
        self._poll_interval = check_seconds("poll_interval", poll_interval, allow_zero=False)
        self._grace = (
            self._lease if grace is None else check_seconds("grace", grace, allow_zero=True)
        )
        self._accept_pickle = bool(accept_pickle)
        self._store = Store(url, queue)
        self._jobs: set[_Claimed] = set()
        self._stopping = False
        self._serving = False
        self._slot_freed = anyio.Event()
        self._wait_scope: anyio.CancelScope | None = None
        self._claimed = self._completed = self._retried = self._dead = 0
        self._lost = self._released = 0

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "serving" if self._serving else "idle"
        return (
            f"<anyio_keyq.redis.RedisWorker {self._store.name!r} at {id(self):#x}: "
            f"{state}, {len(self._jobs)} running>"
        )

    def statistics(self) -> RedisWorkerStatistics:
        """Return a snapshot of the worker's counters (not a checkpoint)."""
        return RedisWorkerStatistics(
            running=len(self._jobs),
            claimed=self._claimed,
            completed=self._completed,
            retried=self._retried,
            dead_lettered=self._dead,
            lost=self._lost,
            released=self._released,
        )

    async def __aenter__(self) -> Self:
        await self._store.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._store.close()

    def stop(self) -> None:
        """Stop claiming jobs and make :meth:`serve` return once the running ones end.

        Running jobs get *grace* seconds to finish; then they are cancelled and their
        keys handed back. Not a checkpoint; safe to call more than once.
        """
        self._stopping = True
        self._slot_freed.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim and run jobs until :meth:`stop` is called, then return.

        After :meth:`stop` (even one called before :meth:`serve`) it returns as soon as
        the running jobs are done; then the worker can serve again.

        With ``task_group.start(worker.serve)``, returns once the worker is ready to
        claim. Cancelling it cancels the running jobs and hands their keys back (in a
        shielded step of at most a few seconds).

        :raises RuntimeError: if the worker is already serving, or not entered
        """
        self._store.client  # noqa: B018 - raises when not entered
        if self._serving:
            raise RuntimeError("this worker is already serving")
        self._serving = True
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                await self._claim_loop(tg)
                with anyio.move_on_after(self._grace):
                    while self._jobs:
                        await self._wait_slot()
                for job in self._jobs:
                    job.scope.cancel()
        finally:
            self._serving = self._stopping = False

    async def _wait_slot(self) -> None:
        await self._slot_freed.wait()
        self._slot_freed = anyio.Event()

    async def _claim_loop(self, tg: TaskGroup) -> None:
        lease_ms = int(self._lease * 1000)
        while not self._stopping:
            free = self._concurrency - len(self._jobs)
            if free <= 0:
                await self._wait_slot()
                continue
            sent = anyio.current_time()
            try:
                out: list[Any] = await self._store.run("CLAIM", lease_ms, free, self._max_active)
            except REDIS_ERRORS as exc:
                logger.warning("claiming from queue %r failed: %r", self._store.name, exc)
                await self._idle(self._poll_interval, block=False)
                continue
            for raw in out[1:]:
                job = _Claimed(raw, sent, self._lease)
                self._claimed += 1
                self._jobs.add(job)
                tg.start_soon(self._run, job, name=f"anyio_keyq.redis job {job.id}")
            if len(out) - 1 < free:
                hint = int(out[0])
                wait = self._poll_interval if hint <= 0 else min(self._poll_interval, hint / 1000)
                await self._idle(wait, block=True)

    async def _idle(self, seconds: float, *, block: bool) -> None:
        """Wait for a wake-up token, *seconds* at most, or for stop()."""
        if self._stopping:
            return
        with anyio.CancelScope() as self._wait_scope:
            try:
                if block:
                    await self._store.client.blpop([self._store.wake_key], timeout=seconds)
                else:
                    await anyio.sleep(seconds)
            except REDIS_ERRORS as exc:
                logger.warning("waiting on queue %r failed: %r", self._store.name, exc)
                await anyio.sleep(seconds)
        self._wait_scope = None

    async def _run(self, job: _Claimed) -> None:
        try:
            await self._run_job(job)
        finally:
            self._jobs.discard(job)
            self._slot_freed.set()

    async def _run_job(self, job: _Claimed) -> None:
        handler = None
        reason = None
        payload: object = None
        task = "" if job.task is None else text(job.task)
        if job.task is None or job.payload is None or job.fmt is None:
            reason = "malformed job: its data is missing from Redis"
        elif (handler := self._handlers.get(task)) is None:
            reason = f"no handler for task {task!r} in this worker"
        elif self._max_lost is not None and job.attempt - 1 - job.fails > self._max_lost:
            reason = f"lost with its worker {job.attempt - 1 - job.fails} times"
        else:
            try:
                payload = decode(job.payload, job.fmt, accept_pickle=self._accept_pickle)
            except ValueError as exc:
                reason = str(exc)
        if handler is None or reason is not None:
            await self._write("DEAD_LETTER", job, reason or "")
            return
        info = RedisJob(
            id=job.id,
            key=job.key,
            task=task,
            payload=payload,
            attempt=job.attempt,
            fence=int(job.token),
            enqueued_at=job.enq / 1000,
        )
        try:
            with job.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_lease, job, tg.cancel_scope)
                    try:
                        await handler(info)
                    except Exception as exc:
                        job.error = exc
                    tg.cancel_scope.cancel()
        except BaseException:
            # serve() was cancelled: hand the key back at once.
            await self._write("RELEASE", job, 0, "", 1)
            raise
        if job.scope.cancelled_caught:
            await self._write("RELEASE", job, 0, "", 1)
        elif job.lost:
            self._lost += 1
            logger.warning("job %s of key %r: lease lost, result dropped", job.id, job.key)
        elif job.error is None:
            await self._write("COMPLETE", job)
        else:
            error = job.error
            delay = None
            if self._retry is not None:
                delay = self._retry.next_delay(job.fails + 1, error, job.previous_delay)
            if delay is None:
                await self._write("DEAD_LETTER", job, f"{type(error).__qualname__}: {error}")
            else:
                await self._write("RELEASE", job, max(0, int(delay * 1000)), repr(error)[:1000], 0)

    async def _write(self, script: str, job: _Claimed, *args: str | int) -> None:
        """Report a job's end to Redis: shielded, bounded, and counted."""
        ok = None
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            try:
                ok = await self._store.run(script, job.key, job.id, job.token, *args)
            except REDIS_ERRORS as exc:
                logger.warning("job %s of key %r: %s failed: %r", job.id, job.key, script, exc)
        if ok is None:
            return  # the lease will expire and the job run again
        if not ok:
            self._lost += 1
            logger.warning("job %s of key %r: lease lost, %s rejected", job.id, job.key, script)
        elif script == "COMPLETE":
            self._completed += 1
        elif script == "DEAD_LETTER":
            self._dead += 1
        elif args[-1] == 1:
            self._released += 1
        else:
            self._retried += 1

    async def _keep_lease(self, job: _Claimed, scope: anyio.CancelScope) -> None:
        """Renew the job's lease every lease/3; cancel *scope* once it is lost."""
        interval = self._lease / 3
        lease_ms = int(self._lease * 1000)
        next_at = job.deadline - self._lease + interval
        while True:
            await anyio.sleep_until(next_at)
            sent = anyio.current_time()
            ok = None
            with anyio.move_on_after(job.deadline - sent):
                try:
                    result: list[int] = await self._store.run("RENEW", lease_ms, job.key, job.token)
                    ok = bool(result[0])
                except REDIS_ERRORS as exc:
                    logger.warning("job %s of key %r: renewal failed: %r", job.id, job.key, exc)
            if ok:
                job.deadline = sent + self._lease
                next_at = sent + interval
            elif ok is False or anyio.current_time() >= job.deadline:
                job.lost = True
                scope.cancel()
                return
            else:
                next_at = min(anyio.current_time() + interval / 4, job.deadline)
