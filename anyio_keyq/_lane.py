"""The record of one key of a KeyedLanes, carried by the key's first job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._job import _QUEUED, Job, _JobExtras

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Awaitable, Callable, Hashable
    from contextvars import Context

    import anyio

    from ._breaker import CircuitBreaker
    from ._job import JobOwner
    from ._lanes import _RoomWaiter
    from ._permits import Credit
    from ._rate import _TokenBucket


if TYPE_CHECKING:
    _AnyJob = Job[Any]
else:
    # Not subscripted at run time: an alias made at import would keep the module Job
    # had then (anyio_keyq._job), before the package renames it for its docs.
    _AnyJob = Job


class Lane(_AnyJob):
    """A job that also keeps the bookkeeping of its key: its queue and its counts.

    A lane is not an object of its own: the job that opens a lane (the first job of an
    idle key) is made a :class:`Lane`, and carries the lane's fields besides its own.
    With many distinct keys, a lane then costs no second object, which halves the
    work of the cyclic garbage collector on a large backlog; the other jobs of the key
    are plain jobs, without these fields. The lanes clear them when they drop the
    lane, and the job lives on as a job.
    """

    __slots__ = (
        "current",
        "head",
        "idle_at",
        "in_ready",
        "lane_extras",
        "live",
        "queue",
        "queued",
        "running",
    )

    def __init__(
        self,
        owner: JobOwner,
        key: Hashable,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        ctx: Context,
        timeout: float | None,
        links: tuple[tuple[object, Hashable], ...] | None,
    ) -> None:
        # Job.__init__(), inlined: a key's first job is the path of every job with
        # distinct keys. Change both together.
        self._owner = owner
        self._lane = self
        self.key = key
        self._fn = fn
        self._args = args
        self._ctx = ctx
        self._timeout = timeout
        self._status = _QUEUED
        self._outcome = None
        self._event = None
        self._scope = None
        self._token = None
        self._cancel_requested = False
        self._ordered = False
        self._attempts = 0
        self._extras = None if links is None else _JobExtras(links)
        # Jobs in submission order: the first in `head`, the others in `queue`, made
        # only when needed (most lanes never hold two). Cancelled jobs stay as
        # tombstones until popped.
        self.head: Job[Any] | None = None
        self.queue: deque[Job[Any]] | None = None
        self.queued = 0
        self.running = 0
        # The running job (per_key=1; with per_key > 1 see LaneExtras.active).
        self.current: Job[Any] | None = None
        self.in_ready = False
        # When the lane became idle, while it lingers (idle_timeout, rates, breakers).
        self.idle_at: float | None = None
        self.live = True
        self.lane_extras: LaneExtras | None = None

    def close_lane(self) -> None:
        """The lane is dropped: let go of what it holds, keep the job's own fields."""
        self.live = False
        # A live lane is its own job's lane: a reference cycle that only the cyclic
        # collector could free. Nothing reads the lane of a job whose lane is dropped.
        del self._lane
        self.idle_at = None
        self.queue = None
        self.lane_extras = None

    @property
    def room(self) -> deque[_RoomWaiter] | None:
        """The callers waiting for room in the lane, if any ever waited."""
        extras = self.lane_extras
        return None if extras is None else extras.room

    @property
    def extras(self) -> LaneExtras:
        """The lane's rarely used fields, made on first use."""
        extras = self.lane_extras
        if extras is None:
            extras = self.lane_extras = LaneExtras()
        return extras


class LaneExtras:
    """What only some lanes need: room waiters, an idle event, lent permits,
    ``per_key > 1`` bookkeeping, rates, retries and breakers."""

    __slots__ = (
        "active",
        "breaker",
        "bucket",
        "idle_event",
        "in_lent_ready",
        "lent",
        "paced",
        "room",
        "starting",
        "turn",
    )

    def __init__(self) -> None:
        # Callers waiting for room in the lane (max_pending), first come first.
        self.room: deque[_RoomWaiter] | None = None
        # Set when the lane is next idle, for wait_idle(key).
        self.idle_event: anyio.Event | None = None
        # With per_key > 1: the running jobs.
        self.active: list[Job[Any]] = []
        # Credits lent to this lane by jobs waiting for one of its jobs.
        self.lent: list[Credit] = []
        self.in_lent_ready = False
        # With per_key > 1: jobs handed to workers but not yet begun, in order, so
        # that they begin in submission order whatever order their workers wake in.
        self.starting: deque[Job[Any]] | None = None
        self.turn: anyio.Event | None = None
        # With a rate per key: the lane's token bucket, and whether the lane waits for
        # a token in the pacer's queue.
        self.bucket: _TokenBucket | None = None
        self.paced = False
        # With breakers per key: the lane's circuit breaker.
        self.breaker: CircuitBreaker | None = None
