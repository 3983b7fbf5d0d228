"""The designs under test, each written the way a competent user would write it.

Every design has the same signature: it runs ``body(key, index)`` once for every
``(key, index)`` in *jobs*, at most *limit* bodies at once where the design has a global
cap, and returns when every body has finished. An *ordered* design must start the
bodies of one key in the order of *jobs* and never run two of them at once; the harness
checks that after every run.

The designs must not yield between jobs more than the design needs: they are timed on
the same body, so the differences are the costs of the designs themselves.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiometer
import anyio

from anyio_keyq import KeyedLanes

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

#: One job: its key and its index in the workload (unique, increasing).
JobSpec = tuple[int, int]
#: The body every design runs for every job.
Body = Callable[[int, int], Coroutine[Any, Any, None]]
#: The common signature of every design.
RunFn = Callable[[Sequence[JobSpec], Body, int], Coroutine[Any, Any, None]]


# -- KeyedLanes ----------------------------------------------------------------------------


async def keyed_lanes(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """``KeyedLanes(limit=100)``; ``submit_nowait`` every job; leaving the block waits."""
    async with KeyedLanes[int](limit=limit) as lanes:
        for key, index in jobs:
            lanes.submit_nowait(key, body, key, index)


# -- a dict of anyio.Lock, reference counted, one task per job ------------------------------


class _LockEntry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


async def dict_of_locks(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """One task per job; a reference-counted ``anyio.Lock`` per key; a CapacityLimiter.

    Per-key order on every backend: the job's task is started with ``await tg.start()``
    and reports ``started()`` just before ``lock.acquire()``, which takes the lock or
    joins its FIFO queue of waiters without yielding first. So the tasks of one key
    queue on the lock in submission order, whatever order the scheduler runs them in
    (trio runs the tasks spawned in one batch in a random order).
    """
    limiter = anyio.CapacityLimiter(limit)
    locks: dict[int, _LockEntry] = {}

    async def one(
        key: int, index: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        entry = locks.get(key)
        if entry is None:
            entry = locks[key] = _LockEntry()
        entry.users += 1
        try:
            task_status.started()
            async with entry.lock, limiter:
                await body(key, index)
        finally:
            entry.users -= 1
            if not entry.users:
                del locks[key]

    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            await tg.start(one, key, index)


async def dict_of_locks_naive(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """The same with ``start_soon`` (not in the default set): NOT ordered on trio.

    trio runs the tasks made ready in one batch in reverse order half of the time, so
    the tasks of one key can reach the lock in any order. On asyncio, tasks start in
    the order they were spawned and this happens to keep per-key order.
    """
    limiter = anyio.CapacityLimiter(limit)
    locks: dict[int, _LockEntry] = {}

    async def one(key: int, index: int, entry: _LockEntry) -> None:
        try:
            async with entry.lock, limiter:
                await body(key, index)
        finally:
            entry.users -= 1
            if not entry.users:
                del locks[key]

    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            entry = locks.get(key)
            if entry is None:
                entry = locks[key] = _LockEntry()
            entry.users += 1
            tg.start_soon(one, key, index, entry)


# -- one worker task per key, spawned on demand, draining a memory stream ------------------


async def worker_per_key(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """A worker task per key with work, fed by a memory stream; a CapacityLimiter.

    No reuse: the worker is spawned when its key appears and exits, removing its entry,
    as soon as its stream is empty. Per-key order holds by construction: one task drains
    the key's FIFO stream.
    """
    limiter = anyio.CapacityLimiter(limit)
    streams: dict[int, MemoryObjectSendStream[int]] = {}

    async def worker(key: int, receive: MemoryObjectReceiveStream[int]) -> None:
        with receive:
            while True:
                try:
                    index = receive.receive_nowait()
                except anyio.WouldBlock:
                    streams.pop(key).close()  # no await since the check: no job is lost
                    return
                async with limiter:
                    await body(key, index)

    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            send = streams.get(key)
            if send is None:
                send, receive = anyio.create_memory_object_stream[int](math.inf)
                streams[key] = send
                tg.start_soon(worker, key, receive)
            send.send_nowait(index)


# -- the JavaScript pattern: a chain of futures per key (asyncio only) ----------------------


async def promise_chain(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """One task per job that awaits the future of the key's previous job; a CapacityLimiter.

    asyncio only: it uses asyncio futures. Per-key order holds by construction.
    """
    loop = asyncio.get_running_loop()
    limiter = anyio.CapacityLimiter(limit)
    tails: dict[int, asyncio.Future[None]] = {}

    async def one(
        key: int, index: int, previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        try:
            if previous is not None:
                await previous
            async with limiter:
                await body(key, index)
        finally:
            done.set_result(None)
            if tails.get(key) is done:
                del tails[key]

    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            previous = tails.get(key)
            tails[key] = done = loop.create_future()
            tg.start_soon(one, key, index, previous, done)


# -- aiometer.amap: a plain bounded runner that ignores keys -------------------------------


async def aiometer_amap(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """``aiometer.amap(..., max_at_once=100)``. Ignores keys: no per-key order."""

    async def one(job: JobSpec) -> None:
        await body(*job)

    async with aiometer.amap(one, jobs, max_at_once=limit) as results:
        async for _ in results:
            pass


# -- just spawn it: one task per job, no order ---------------------------------------------


async def spawn(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """One task per job under a CapacityLimiter, nothing else. No per-key order."""
    limiter = anyio.CapacityLimiter(limit)

    async def one(key: int, index: int) -> None:
        async with limiter:
            await body(key, index)

    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            tg.start_soon(one, key, index)


async def spawn_uncapped(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """One task per job and no cap at all (not in the default set). No per-key order."""
    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            tg.start_soon(body, key, index)


# -- the floor: the event loop running the bodies in a fixed pool of tasks -----------------


async def bare(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """*limit* tasks calling the bodies in a loop: no design at all. No per-key order."""
    pending = iter(jobs)

    async def loop() -> None:
        for key, index in pending:
            await body(key, index)

    async with anyio.create_task_group() as tg:
        for _ in range(limit):
            tg.start_soon(loop)


# -- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Design:
    """A design under test and what the harness may expect of it."""

    name: str
    run: RunFn
    #: Whether it promises per-key order (and no overlap within a key).
    ordered: bool
    #: Whether it enforces the global cap of *limit* running bodies.
    capped: bool
    #: The backends it runs on (``None``: all of them).
    backends: frozenset[str] | None
    #: Backends on which it is known not to keep per-key order: never timed there.
    unordered_on: frozenset[str]
    #: Whether it spawns a task per job (its N may be capped to save time).
    task_per_job: bool
    #: Whether it spawns a task per key with work (a task per job when keys are distinct).
    task_per_key: bool
    description: str


ASYNCIO_ONLY: Final = frozenset({"asyncio", "uvloop"})
NOWHERE: Final = frozenset[str]()

DESIGNS: Final[dict[str, Design]] = {
    d.name: d
    for d in (
        Design(
            "bare",
            bare,
            ordered=False,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=False,
            task_per_key=False,
            description="100 tasks looping over the bodies: the event loop's own floor",
        ),
        Design(
            "keyed-lanes",
            keyed_lanes,
            ordered=True,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=False,
            task_per_key=False,
            description="KeyedLanes(limit=100), submit_nowait() per job",
        ),
        Design(
            "dict-of-locks",
            dict_of_locks,
            ordered=True,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=True,
            task_per_key=False,
            description="task per job (tg.start), refcounted anyio.Lock per key, CapacityLimiter",
        ),
        Design(
            "dict-of-locks-naive",
            dict_of_locks_naive,
            ordered=True,
            capped=True,
            backends=None,
            unordered_on=frozenset({"trio"}),
            task_per_job=True,
            task_per_key=False,
            description="dict-of-locks spawned with start_soon: ordered on asyncio only",
        ),
        Design(
            "worker-per-key",
            worker_per_key,
            ordered=True,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=False,
            task_per_key=True,
            description="a worker task per key draining a memory stream, CapacityLimiter",
        ),
        Design(
            "promise-chain",
            promise_chain,
            ordered=True,
            capped=True,
            backends=ASYNCIO_ONLY,
            unordered_on=NOWHERE,
            task_per_job=True,
            task_per_key=False,
            description="task per job awaiting the key's previous future, CapacityLimiter",
        ),
        Design(
            "aiometer",
            aiometer_amap,
            ordered=False,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=True,
            task_per_key=False,
            description="aiometer.amap(max_at_once=100), keys ignored",
        ),
        Design(
            "spawn",
            spawn,
            ordered=False,
            capped=True,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=True,
            task_per_key=False,
            description="task per job under a CapacityLimiter, keys ignored",
        ),
        Design(
            "spawn-uncapped",
            spawn_uncapped,
            ordered=False,
            capped=False,
            backends=None,
            unordered_on=NOWHERE,
            task_per_job=True,
            task_per_key=False,
            description="task per job, no cap, keys ignored",
        ),
    )
}

#: The designs of a default run, in the order of the tables.
DEFAULT_DESIGNS: Final = (
    "bare",
    "keyed-lanes",
    "dict-of-locks",
    "dict-of-locks-naive",
    "worker-per-key",
    "promise-chain",
    "aiometer",
    "spawn",
)
