"""The record of one key of a KeyedLanes, carried by the key's first job."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Hashable

    import anyio

    from ._breaker import CircuitBreaker
    from ._job import Job
    from ._lanes import _RoomWaiter
    from ._permits import Credit
    from ._rate import _TokenBucket


class Lane:
    """The bookkeeping of one key: its queue and its counts, and nothing else.

    A lane is not an object of its own: :class:`~anyio_keyq.Job` derives from this
    class, and the job that opens a lane (the first job of an idle key) carries the
    lane's fields too. With many distinct keys, a lane then costs no second object,
    which halves the work of the cyclic garbage collector on a large backlog. Only
    the job that opens a lane has these fields set, by :meth:`open_lane`; the lanes
    clear them when they drop the lane.
    """

    key: Hashable  # a slot of Job

    __slots__ = (
        "current",
        "head",
        "idle_at",
        "idle_event",
        "in_ready",
        "lane_extras",
        "live",
        "queue",
        "queued",
        "room",
        "running",
    )

    def open_lane(self) -> None:
        # Jobs in submission order: the first in `head`, the others in `queue`, made
        # only when needed (most lanes never hold two). Cancelled jobs stay as
        # tombstones until popped.
        self.head: Job[object] | None = None
        self.queue: deque[Job[object]] | None = None
        self.queued = 0
        self.running = 0
        # The running job (per_key=1; with per_key > 1 see LaneExtras.active).
        self.current: Job[object] | None = None
        self.in_ready = False
        self.room: deque[_RoomWaiter] | None = None
        self.idle_at: float | None = None
        self.idle_event: anyio.Event | None = None
        self.live = True
        self.lane_extras: LaneExtras | None = None

    def close_lane(self) -> None:
        """The lane is dropped: let go of what it holds, keep the job's own fields."""
        self.live = False
        self.idle_at = None
        self.queue = None
        self.room = None
        self.lane_extras = None

    @property
    def extras(self) -> LaneExtras:
        """The lane's rarely used fields, made on first use."""
        extras = self.lane_extras
        if extras is None:
            extras = self.lane_extras = LaneExtras()
        return extras


class LaneExtras:
    """What only some lanes need: lent permits, ``per_key > 1`` bookkeeping, rates,
    retries and breakers."""

    __slots__ = (
        "active",
        "breaker",
        "bucket",
        "in_lent_ready",
        "lent",
        "paced",
        "starting",
        "turn",
    )

    def __init__(self) -> None:
        # With per_key > 1: the running jobs.
        self.active: list[Job[object]] = []
        # Credits lent to this lane by jobs waiting for one of its jobs.
        self.lent: list[Credit] = []
        self.in_lent_ready = False
        # With per_key > 1: jobs handed to workers but not yet begun, in order, so
        # that they begin in submission order whatever order their workers wake in.
        self.starting: deque[Job[object]] | None = None
        self.turn: anyio.Event | None = None
        # With a rate per key: the lane's token bucket, and whether the lane waits for
        # a token in the pacer's queue.
        self.bucket: _TokenBucket | None = None
        self.paced = False
        # With breakers per key: the lane's circuit breaker.
        self.breaker: CircuitBreaker | None = None
