"""Pool: a bounded pool of reusable resources (connections, sessions, clients)."""

from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Self, TypeVar

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._exceptions import PoolClosed
from ._util import check_positive_int, check_seconds, describe, final

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

R = TypeVar("R")

logger = logging.getLogger("anyio_keyq")


@final
@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`Pool`, from :meth:`Pool.statistics`.

    ``size == idle + borrowed + creating + closing``, and ``size <= max_size`` always.
    """

    #: Resources that exist now, or are being created or closed: what counts against
    #: ``max_size``.
    size: int
    #: Resources in the pool, ready to be borrowed.
    idle: int
    #: Resources held by acquirers (being validated, or in an ``async with`` block).
    borrowed: int
    #: Resources being created: calls of the factory in progress, or about to start
    #: in a task that holds room for one.
    creating: int
    #: Resources being closed.
    closing: int
    #: Tasks waiting in :meth:`Pool.acquire` for a resource or for room to create one.
    waiting: int
    #: Resources the factory returned, since the pool was created.
    created: int
    #: Resources closed (whatever the reason), since the pool was created.
    closed: int
    #: Successful acquisitions: blocks entered with a resource.
    acquired: int
    #: Acquisitions that ran out of ``acquire_timeout``.
    timed_out: int
    #: Calls of the factory that raised an exception.
    failed: int
    #: Resources refused by ``validate`` (returned false, or raised).
    invalid: int
    #: Resources closed because ``idle_timeout`` or ``max_lifetime`` had passed.
    expired: int
    #: Resources closed after their block raised, was cancelled, or called
    #: :meth:`Pool.discard`.
    discarded: int


class _Entry(Generic[R]):
    """One resource with its timestamps."""

    __slots__ = ("created_at", "discard", "resource", "returned_at")

    def __init__(self, resource: R, now: float) -> None:
        self.resource = resource
        self.created_at = now
        self.returned_at = now
        self.discard = False


class _Waiter(Generic[R]):
    """A task waiting in acquire(): woken with a resource, a slot or an error."""

    __slots__ = ("closed", "entry", "event", "slot")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.entry: _Entry[R] | None = None
        self.slot = False  # room to create a resource, counted in Pool._creating
        self.closed = False


async def _default_close(resource: object) -> None:
    aclose = getattr(resource, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    close = getattr(resource, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


def _check_function(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a function, got {value!r}")


def _check_min_size(value: object, max_size: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"min_size must be an int >= 0, got {value!r}")
    if not 0 <= value <= max_size:
        raise ValueError(f"min_size must be >= 0 and <= max_size ({max_size}), got {value!r}")


def _check_optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else check_seconds(name, value, allow_zero=False)


@final
class Pool(Generic[R]):
    """A bounded pool of reusable resources: connections, sessions, clients.

    Opening a connection costs round trips; a server accepts only so many. A
    :class:`Pool` keeps up to *max_size* resources made by *factory*, lends one to each
    task that asks, and takes it back when the task is done with it:

    .. code-block:: python

        async def connect() -> anyio.abc.SocketStream:
            return await anyio.connect_tcp("db.internal", 5432)

        async with Pool(connect, max_size=10, idle_timeout=60) as pool:
            ...
            # In many tasks at once:
            async with pool.acquire() as stream:
                await stream.send(b"query")
                answer = await stream.receive()

    :meth:`acquire` hands out an idle resource if there is one (the most recently
    returned first), else creates one if the pool has fewer than *max_size* (resources
    being created count), else waits, first come first served. A resource that comes
    back is handed straight to the first waiter. Resources past *max_lifetime* since
    their creation, or idle for *idle_timeout*, are closed rather than lent, and
    *validate*, if given, checks each idle resource before it is lent: a resource it
    refuses is closed and replaced (the acquirer keeps its turn).

    Unlike an :class:`anyio.CapacityLimiter` (which bounds how many tasks do something
    at once), a pool also keeps the *things* they use, and decides when a thing is
    broken or too old.

    **Failures.** When the block raises, the resource's state is unknown (a half-sent
    request, a transaction left open): it is closed, not lent again, unless
    *keep_on_error* is true. The exception goes on unchanged. The same holds for a
    block that is cancelled, whatever *keep_on_error* says. :meth:`discard` marks a
    resource to close from inside its block. A failing *factory* frees its room in the
    pool, and its exception is raised in the acquirer that called it; other waiters
    go on waiting (one of them may create in its turn).

    **Cancellation.** An acquirer cancelled while it waits leaves the queue; if a
    resource was handed to it in the same instant, the resource goes to the next
    waiter or back to the pool, never lost. A cancelled factory call frees its room; if
    the factory returns a resource all the same, the resource joins the pool. An
    acquirer cancelled during *validate* closes the resource it was checking: its state
    is unknown.

    **Closing.** Closing a resource is shielded from cancellation and bounded by
    *close_timeout*: a hanging close never hangs the pool. Errors raised by a close
    are logged (``anyio_keyq`` logger) and otherwise ignored.

    **Why a block.** ``async with`` hosts the pool's background work (refilling to
    *min_size*, closing idle and expired resources on time) in a task group of its
    own, and closes every idle resource at the end (see :meth:`aclose`).
    :meth:`acquire` raises :exc:`RuntimeError` outside the block.

    Objects can be created before an event loop runs.

    :param factory: an async function, called without arguments, that returns a new
        resource
    :param max_size: the most resources that exist at once (an int >= 1)
    :param min_size: the resources to create when the block is entered and to keep,
        refilled in the background (an int, 0 to *max_size*)
    :param acquire_timeout: how long, in seconds, :meth:`acquire` may take in all
        (waiting, creating, validating) before it raises :exc:`TimeoutError`
        (default ``None``: no limit)
    :param idle_timeout: a resource idle for this many seconds is closed, but not
        below *min_size* resources (default ``None``: never)
    :param max_lifetime: a resource is closed this many seconds after its creation, at
        the latest when it is next returned (default ``None``: never)
    :param validate: a function or async function called with an idle resource before
        it is lent; a false result or an exception closes the resource
    :param close: a function or async function that closes a resource (default:
        ``await resource.aclose()`` if it has that method, else ``resource.close()``
        if it has that one, awaited if it returns an awaitable, else nothing)
    :param close_timeout: the most time, in seconds, a close may take; then it is
        abandoned (cancelled) and the resource counted as closed (default 5)
    :param keep_on_error: put a resource whose block raised an :exc:`Exception` back
        in the pool instead of closing it (then *validate* checks it before its next
        use; default ``False``)
    """

    __slots__ = (
        "__weakref__",
        "_acquire_timeout",
        "_acquired",
        "_borrowed",
        "_close",
        "_close_timeout",
        "_closed",
        "_closed_count",
        "_closing",
        "_created",
        "_creating",
        "_discarded",
        "_expired",
        "_factory",
        "_failed",
        "_idle",
        "_idle_timeout",
        "_invalid",
        "_keep_on_error",
        "_maint_done",
        "_maint_scope",
        "_max_lifetime",
        "_max_size",
        "_min_size",
        "_refill_ok",
        "_started",
        "_tg",
        "_timed_out",
        "_validate",
        "_waiters",
        "_wake",
    )

    def __init__(
        self,
        factory: Callable[[], Awaitable[R]],
        *,
        max_size: int,
        min_size: int = 0,
        acquire_timeout: float | None = None,
        idle_timeout: float | None = None,
        max_lifetime: float | None = None,
        validate: Callable[[R], bool | Awaitable[bool]] | None = None,
        close: Callable[[R], object] | None = None,
        close_timeout: float = 5.0,
        keep_on_error: bool = False,
    ) -> None:
        _check_function("factory", factory)
        check_positive_int("max_size", max_size)
        _check_min_size(min_size, max_size)
        if validate is not None:
            _check_function("validate", validate)
        if close is not None:
            _check_function("close", close)
        self._factory = factory
        self._max_size = max_size
        self._min_size = min_size
        self._acquire_timeout = _check_optional_seconds("acquire_timeout", acquire_timeout)
        self._idle_timeout = _check_optional_seconds("idle_timeout", idle_timeout)
        self._max_lifetime = _check_optional_seconds("max_lifetime", max_lifetime)
        self._close_timeout = check_seconds("close_timeout", close_timeout, allow_zero=False)
        self._validate = validate
        self._close: Callable[[R], object] = close if close is not None else _default_close
        self._keep_on_error = bool(keep_on_error)
        self._tg: TaskGroup | None = None
        self._maint_scope: anyio.CancelScope | None = None
        self._maint_done: anyio.Event | None = None
        self._started = False
        self._closed = False
        self._wake: anyio.Event | None = None
        self._refill_ok = True
        # Idle resources, least recently returned first: lent from the right end.
        self._idle: deque[_Entry[R]] = deque()
        self._borrowed: dict[int, _Entry[R]] = {}  # id(resource) -> entry
        self._waiters: deque[_Waiter[R]] = deque()
        self._creating = 0
        self._closing = 0
        self._created = 0
        self._closed_count = 0
        self._acquired = 0
        self._timed_out = 0
        self._failed = 0
        self._invalid = 0
        self._expired = 0
        self._discarded = 0

    # -- properties ----------------------------------------------------------------

    @property
    def max_size(self) -> int:
        """The most resources that exist at once."""
        return self._max_size

    @property
    def min_size(self) -> int:
        """The resources kept even when idle."""
        return self._min_size

    @property
    def size(self) -> int:
        """Resources that exist now, or are being created or closed."""
        return len(self._idle) + len(self._borrowed) + self._creating + self._closing

    @property
    def closed(self) -> bool:
        """Whether the pool was closed: it lends nothing any more."""
        return self._closed

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the pool and create *min_size* resources. Entry can block; so can exit.

        Entry is a checkpoint. If the factory fails while creating the first *min_size*
        resources, those already made are closed and the exception is raised. Leaving
        the block, normally or by an exception, calls :meth:`aclose`.
        """
        if self._started:
            raise RuntimeError("a Pool instance can be entered only once")
        await checkpoint()
        self._started = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            for _ in range(self._min_size):
                self._creating += 1
                self._give(await self._create())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            self._tg = None
            await tg.__aexit__(None, None, None)
            raise
        if self._min_size or self._idle_timeout is not None or self._max_lifetime is not None:
            # The background task has a scope of its own: aclose(), called from inside
            # the block, must stop it without cancelling the block (the task group's
            # scope encloses it).
            self._maint_scope = anyio.CancelScope()
            self._maint_done = anyio.Event()
            self._wake = anyio.Event()
            tg.start_soon(self._maintain, name=f"Pool {describe(self._factory)} maintenance")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._shutdown()
        tg = self._tg
        assert tg is not None
        self._tg = None
        # Nothing runs in it any more; the block's exception is not handed to it, which
        # would wrap it in an ExceptionGroup.
        await tg.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the pool. A checkpoint; its work is shielded and bounded in time.

        From then on :meth:`acquire` raises :exc:`PoolClosed`, and so does every task
        waiting in it. The background work stops, and the idle resources are closed,
        all at once, each within *close_timeout*. Borrowed resources are closed when
        their blocks end (in the tasks that borrowed them); resources being created are
        closed as soon as the factory returns them. Calling it again does nothing.
        Leaving the ``async with`` block calls it.
        """
        with anyio.CancelScope(shield=True):
            await self._shutdown()
        await checkpoint()

    async def _shutdown(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.closed = True
            waiter.event.set()
        if self._maint_scope is not None:
            assert self._maint_done is not None
            self._maint_scope.cancel()
            await self._maint_done.wait()
        if self._idle:
            entries = list(self._idle)
            self._idle.clear()
            self._closing += len(entries)
            async with anyio.create_task_group() as closers:
                for entry in entries:
                    closers.start_soon(self._close_entry, entry)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed
        if not self._started:
            raise RuntimeError(
                "Pool.acquire() was called before the pool was entered: call it inside "
                "'async with Pool(...) as pool:', which hosts the pool's background work"
            )

    # -- lending -------------------------------------------------------------------

    def acquire(self) -> AbstractAsyncContextManager[R]:
        """Borrow a resource for the duration of an ``async with`` block.

        .. code-block:: python

            async with pool.acquire() as resource:
                ...

        Entry waits until it can lend an idle resource that is neither expired nor
        refused by *validate*, or create one; it is a checkpoint, even when a resource
        is at hand. Exit puts the resource back (handing it to the first waiter), or
        closes it if the block raised (see *keep_on_error*), was cancelled, called
        :meth:`discard`, or outlived *max_lifetime*, or if the pool is closed. Exit is
        not a checkpoint; it blocks only while closing, shielded and within
        *close_timeout*. The block's exception goes on unchanged.

        :raises TimeoutError: if entry took longer than *acquire_timeout*
        :raises PoolClosed: if the pool is closed, or closes while entry waits
        :raises RuntimeError: outside the pool's ``async with`` block
        :raises Exception: what the factory raised, when this acquirer called it
        """
        return _Lease(self)

    async def _acquire(self) -> _Entry[R]:
        self._check_open()
        await checkpoint_if_cancelled()
        timeout = self._acquire_timeout
        if timeout is None:
            return await self._acquire_loop()
        with anyio.move_on_after(timeout) as scope:
            return await self._acquire_loop()
        assert scope.cancelled_caught
        self._timed_out += 1
        raise TimeoutError(f"{self!r} lent no resource within acquire_timeout={timeout!r} seconds")

    async def _acquire_loop(self) -> _Entry[R]:
        yielded = False
        # Room for one resource, counted in _creating, that this acquirer holds: it
        # keeps the room of a resource it had to close, so as not to lose its turn.
        slot = False
        while True:
            if slot and self._closed:  # closed while this acquirer closed a resource
                self._creating -= 1
                self._free_slot()
                raise PoolClosed
            entry: _Entry[R] | None = None
            if self._idle and (slot or not self._waiters):
                entry = self._idle.pop()
                self._borrowed[id(entry.resource)] = entry
                if slot:
                    slot = False
                    self._creating -= 1
                    self._free_slot()
            elif not slot:
                if not self._waiters and self.size < self._max_size:
                    self._creating += 1
                    slot = True
                else:
                    yielded = True
                    entry, slot = await self._wait()
            if slot:
                slot = False  # handed to _create, which frees it if the factory fails
                return await self._new_entry()
            assert entry is not None
            if self._expired_at(entry, anyio.current_time()):
                await self._retire(entry, "expired", keep_room=True)
                slot = True
                continue
            if self._validate is not None:
                if not await self._check(entry):
                    slot = True
                    continue
                if self._closed:
                    await self._retire(entry, "shutdown")
                    raise PoolClosed
            if not yielded:
                await cancel_shielded_checkpoint()
            self._acquired += 1
            return entry

    async def _new_entry(self) -> _Entry[R]:
        """Create a resource for this acquirer, which holds room for it."""
        entry = await self._create()
        self._refill_ok = True
        self._borrowed[id(entry.resource)] = entry
        try:
            await checkpoint()
        except BaseException:
            # Cancelled as the factory returned: the new resource is not lost.
            if self._closed:
                await self._retire(entry, "shutdown")
            else:
                del self._borrowed[id(entry.resource)]
                self._give(entry)
            raise
        if self._closed:
            await self._retire(entry, "shutdown")
            raise PoolClosed
        self._acquired += 1
        return entry

    async def _wait(self) -> tuple[_Entry[R] | None, bool]:
        waiter: _Waiter[R] = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            entry = waiter.entry
            if entry is not None:
                # Handed a resource in the same instant: pass it on, never lose it.
                waiter.entry = None
                del self._borrowed[id(entry.resource)]
                if self._closed:
                    self._closing += 1
                    await self._close_entry(entry)
                else:
                    self._give(entry)
            elif waiter.slot:
                self._creating -= 1
                self._free_slot()
            elif not waiter.closed:
                self._waiters.remove(waiter)
            raise
        if waiter.closed:
            raise PoolClosed
        return waiter.entry, waiter.slot

    async def _create(self) -> _Entry[R]:
        """Call the factory; the caller has counted it in ``_creating``."""
        try:
            resource = await self._factory()
        except BaseException as exc:
            self._creating -= 1
            if isinstance(exc, Exception):
                self._failed += 1
            self._free_slot()
            raise
        self._creating -= 1
        self._created += 1
        return _Entry(resource, anyio.current_time())

    async def _check(self, entry: _Entry[R]) -> bool:
        """Validate a borrowed entry; retire it and return False if it fails."""
        assert self._validate is not None
        try:
            result = self._validate(entry.resource)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.debug("Pool: validate raised; the resource is closed", exc_info=True)
            result = False
        except BaseException:
            # Cancelled while checking: the resource's state is unknown.
            await self._retire(entry, "discarded")
            raise
        if not result:
            await self._retire(entry, "invalid", keep_room=True)
            return False
        return True

    def _expired_at(self, entry: _Entry[R], now: float) -> bool:
        if self._max_lifetime is not None and now - entry.created_at >= self._max_lifetime:
            return True
        return self._idle_timeout is not None and now - entry.returned_at >= self._idle_timeout

    def _release(self, entry: _Entry[R], exc: BaseException | None) -> str | None:
        """Take back a borrowed entry; return why it must be closed, or None if kept."""
        if entry.discard:
            return "discarded"
        if exc is not None and not (self._keep_on_error and isinstance(exc, Exception)):
            return "discarded"
        if self._closed:
            return "shutdown"
        now = anyio.current_time()
        if self._max_lifetime is not None and now - entry.created_at >= self._max_lifetime:
            return "expired"
        del self._borrowed[id(entry.resource)]
        entry.returned_at = now
        self._give(entry)
        return None

    def discard(self, resource: R) -> None:
        """Close *resource* when its block ends, instead of putting it back.

        For a resource found broken inside its block without an exception to show
        for it. Not a checkpoint; never blocks.

        :raises RuntimeError: if *resource* is not borrowed from this pool
        """
        entry = self._borrowed.get(id(resource))
        if entry is None or entry.resource is not resource:
            raise RuntimeError(
                f"discard() was given {resource!r}, which is not borrowed from this pool"
            )
        entry.discard = True

    # -- bookkeeping (sync: never blocks) --------------------------------------------

    def _give(self, entry: _Entry[R]) -> None:
        """Hand an entry (not counted anywhere yet) to the first waiter, or idle it."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.entry = entry
            self._borrowed[id(entry.resource)] = entry
            waiter.event.set()
        else:
            self._idle.append(entry)
        self._poke()

    def _free_slot(self) -> None:
        """Room for one resource was freed: let the first waiter create one."""
        if self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            waiter.slot = True
            self._creating += 1
            waiter.event.set()
        self._poke()

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            wake.set()

    async def _retire(self, entry: _Entry[R], why: str, *, keep_room: bool = False) -> None:
        """Close a borrowed entry and count why; *keep_room* for the caller to create."""
        del self._borrowed[id(entry.resource)]
        self._closing += 1
        self._count(why)
        await self._close_entry(entry, keep_room=keep_room)

    def _count(self, why: str) -> None:
        if why == "expired":
            self._expired += 1
        elif why == "invalid":
            self._invalid += 1
        elif why == "discarded":
            self._discarded += 1

    async def _close_entry(self, entry: _Entry[R], *, keep_room: bool = False) -> None:
        """Close an entry counted in ``_closing``: shielded, bounded, never raises.

        Its room goes to the first waiter, or with *keep_room* to the caller (counted
        in ``_creating``).
        """
        try:
            with anyio.move_on_after(self._close_timeout, shield=True) as scope:
                result = self._close(entry.resource)
                if inspect.isawaitable(result):
                    await result
            if scope.cancelled_caught:
                logger.warning(
                    "Pool: closing %r took longer than close_timeout=%r seconds; abandoned",
                    entry.resource,
                    self._close_timeout,
                )
        except Exception:
            logger.warning("Pool: closing %r raised", entry.resource, exc_info=True)
        finally:
            self._closing -= 1
            self._closed_count += 1
            if keep_room:
                self._creating += 1
            else:
                self._free_slot()

    # -- background work -----------------------------------------------------------

    async def _maintain(self) -> None:
        assert self._maint_scope is not None
        assert self._maint_done is not None
        try:
            with self._maint_scope:
                await self._maintain_loop()
        finally:
            self._maint_done.set()

    async def _maintain_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            wake = self._wake
            await self._evict(anyio.current_time())
            if self._refill_ok and self.size < self._min_size:
                self._creating += 1
                try:
                    entry = await self._create()
                except Exception:
                    # Retried once an acquirer's factory call succeeds.
                    self._refill_ok = False
                    logger.warning("Pool: refilling to min_size failed", exc_info=True)
                else:
                    self._give(entry)
                continue
            deadline = self._next_expiry()
            with anyio.move_on_after(deadline - anyio.current_time()):
                await wake.wait()

    async def _evict(self, now: float) -> None:
        idle = self._idle
        keep = self._min_size
        index = 0
        while index < len(idle):
            entry = idle[index]
            lifetime = self._max_lifetime
            if (lifetime is not None and now - entry.created_at >= lifetime) or (
                self._idle_timeout is not None
                and now - entry.returned_at >= self._idle_timeout
                and self.size > keep
            ):
                del idle[index]
                self._closing += 1
                self._expired += 1
                await self._close_entry(entry)
                now = anyio.current_time()
            else:
                index += 1

    def _next_expiry(self) -> float:
        deadline = math.inf
        for entry in self._idle:
            if self._max_lifetime is not None:
                deadline = min(deadline, entry.created_at + self._max_lifetime)
            if self._idle_timeout is not None and self.size > self._min_size:
                deadline = min(deadline, entry.returned_at + self._idle_timeout)
        return deadline

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Return a :class:`PoolStatistics` snapshot. Not a checkpoint."""
        return PoolStatistics(
            size=self.size,
            idle=len(self._idle),
            borrowed=len(self._borrowed),
            creating=self._creating,
            closing=self._closing,
            waiting=len(self._waiters),
            created=self._created,
            closed=self._closed_count,
            acquired=self._acquired,
            timed_out=self._timed_out,
            failed=self._failed,
            invalid=self._invalid,
            expired=self._expired,
            discarded=self._discarded,
        )

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._started:
            state = "open"
        else:
            state = "not entered"
        return (
            f"<anyio_keyq.Pool at {id(self):#x}: {state}, factory={describe(self._factory)}, "
            f"size {self.size}/{self._max_size}, {len(self._idle)} idle, "
            f"{len(self._borrowed)} borrowed, {len(self._waiters)} waiting>"
        )


@final
class _Lease(Generic[R]):
    """The async context manager returned by :meth:`Pool.acquire`."""

    __slots__ = ("_entry", "_pool", "_used")

    def __init__(self, pool: Pool[R]) -> None:
        self._pool = pool
        self._entry: _Entry[R] | None = None
        self._used = False

    async def __aenter__(self) -> R:
        if self._used:
            raise RuntimeError("the context manager of Pool.acquire() can be entered only once")
        self._used = True
        entry = await self._pool._acquire()
        self._entry = entry
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        assert entry is not None
        self._entry = None
        pool = self._pool
        why = pool._release(entry, exc_val)
        if why is not None:
            await pool._retire(entry, why)
