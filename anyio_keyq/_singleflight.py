"""SingleFlight: concurrent calls with the same key share one call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Self, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._util import check_callable, check_seconds, describe, final

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


@final
@dataclass(frozen=True, slots=True)
class SingleFlightStatistics:
    """A snapshot of a :class:`SingleFlight`, from :meth:`SingleFlight.statistics`."""

    #: Shared calls running now (keys with a call in flight).
    in_flight: int
    #: Tasks waiting in :meth:`SingleFlight.run` for a call in flight.
    waiting: int
    #: Results cached now (``ttl``), not yet expired.
    cached: int
    #: Calls of ``fn`` started since the object was created.
    calls: int
    #: Callers that joined a call already in flight instead of starting one.
    shared: int
    #: Callers served from the cache, without a call.
    hits: int


class _Call:
    """One shared call: its waiters, its cancel scope and, at the end, its outcome."""

    __slots__ = ("done", "error", "has_value", "scope", "traceback", "value", "waiters")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.scope = anyio.CancelScope()
        self.waiters = 0
        self.has_value = False
        self.value: object = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None


@final
class SingleFlight(Generic[K, T]):
    """Let concurrent callers with the same key share one call.

    When many tasks ask for the same thing at once (the same user profile, the same
    configuration file, the same token refresh), :meth:`run` makes the first caller for
    a key start ``fn(*args)`` and makes every caller that comes while it runs wait for
    that call and get its result, or its exception. The next caller after it ends
    starts a fresh call, unless *ttl* caches the result for a while: then the cache
    serves a thundering herd with a single call.

    .. code-block:: python

        async with SingleFlight[str, bytes](ttl=5.0) as flights:
            # In many tasks at once: one download per URL, shared by all.
            body = await flights.run(url, download, url)

    Unlike a lock per key (or :class:`KeyedLanes` with ``per_key=1``), which would run
    the callers' calls *one after another*, the callers here share *one* call and its
    outcome; a cache in a dict, without it, would start one call per caller until the
    first one ends.

    **Why a block.** The shared call must not run in the task of the caller that
    started it: that caller may be cancelled while others still wait, and the call must
    go on for them. So the calls run in a task group of the object's own, which
    ``async with`` opens and closes, as structured concurrency asks: no call outlives
    the block. :meth:`run` raises :exc:`RuntimeError` outside it.

    **Cancellation.** A caller's cancellation never cancels the other callers: it
    leaves, and the call goes on as long as another caller waits for it. When the last
    caller leaves, the call is cancelled, and its key is free at once: the next caller
    starts a fresh call. Leaving the block with an exception cancels the calls in
    flight; their callers get :exc:`anyio.ClosedResourceError`.

    **Failures.** When the call raises an exception, every caller waiting for it gets
    the *same* exception object, raised again in each of them (its ``__traceback__``
    shows the call's frames followed by those of the caller that raised it last). A
    failure is never cached: the next caller starts a fresh call.

    Objects can be created before an event loop runs.

    :param ttl: how long, in seconds after the call ends, its successful result is
        cached (a number > 0, ``math.inf`` for ever; default ``None``: no cache).
        Expiry is checked lazily against the event loop's clock: there is no timer
    """

    __slots__ = (
        "__weakref__",
        "_cache",
        "_calls",
        "_closed",
        "_flights",
        "_hits",
        "_shared",
        "_started",
        "_tg",
        "_ttl",
        "_waiting",
    )

    def __init__(self, *, ttl: float | None = None) -> None:
        self._ttl = None if ttl is None else check_seconds("ttl", ttl, allow_zero=False)
        self._tg: TaskGroup | None = None
        self._started = False
        self._closed = False
        self._flights: dict[K, _Call] = {}
        # key -> (result, expiry). All entries share one ttl, so insertion order is
        # expiry order: expired entries are always at the front.
        self._cache: dict[K, tuple[T, float]] = {}
        self._calls = 0
        self._shared = 0
        self._hits = 0
        self._waiting = 0

    @property
    def ttl(self) -> float | None:
        """How long a successful result stays cached, in seconds; ``None`` for no cache."""
        return self._ttl

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the task group of the shared calls. Entry is a checkpoint; exit can block.

        Leaving the block normally waits for the calls still in flight (their callers
        are in other tasks). Leaving it with an exception cancels them.
        """
        if self._started:
            raise RuntimeError("a SingleFlight instance can be entered only once")
        await checkpoint()
        self._started = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        self._closed = True
        if exc_val is not None:
            tg.cancel_scope.cancel()
        try:
            # The calls' tasks never fail (their outcome goes to their callers), so the
            # body's exception is not handed to the task group, which would wrap it.
            await tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            self._cache.clear()

    def _check_open(self) -> TaskGroup:
        tg = self._tg
        if tg is None or self._closed:
            where = "after it was left" if self._started else "before it was entered"
            raise RuntimeError(
                f"SingleFlight.run() was called {where}: call it inside "
                f"'async with SingleFlight() as flights:', whose task group runs the calls"
            )
        return tg

    # -- running -------------------------------------------------------------------

    async def run(
        self, key: K, fn: Callable[[Unpack[PosArgsT]], Awaitable[T]], *args: *PosArgsT
    ) -> T:
        """Return the result of ``fn(*args)``, sharing one call per *key*.

        If a call for *key* is in flight, wait for it (its *fn* and *args* are the
        first caller's; this caller's are not used). Else, with a ``ttl``, return the
        result cached for *key* if it has not expired. Else start a call. The call's
        exception is raised here, the same object in every caller.

        This is a checkpoint, even on a cache hit. If the caller is cancelled, it
        leaves at once; the call goes on for the other callers, and is cancelled if it
        was the last one. *key* can be any hashable value.

        :raises RuntimeError: outside the ``async with`` block
        :raises anyio.ClosedResourceError: if the block was left with an exception
            while the call ran
        """
        check_callable(fn)
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {key!r}") from None
        tg = self._check_open()
        await checkpoint_if_cancelled()
        if self._ttl is not None:
            self._expire(anyio.current_time())
            entry = self._cache.get(key)
            if entry is not None:
                self._hits += 1
                await cancel_shielded_checkpoint()
                return entry[0]
        call = self._flights.get(key)
        if call is None:
            call = _Call()
            self._flights[key] = call
            self._calls += 1
            tg.start_soon(self._host, key, call, fn, args, name=f"SingleFlight {describe(fn)}")
        else:
            self._shared += 1
        call.waiters += 1
        self._waiting += 1
        try:
            await call.done.wait()
        except BaseException:
            call.waiters -= 1
            self._waiting -= 1
            if call.waiters == 0 and not call.done.is_set():
                # The last caller left: nobody wants the result. Free the key now.
                call.scope.cancel()
                del self._flights[key]
            raise
        call.waiters -= 1
        self._waiting -= 1
        if call.error is not None:
            raise call.error.with_traceback(call.traceback)
        return call.value  # type: ignore[return-value]

    async def _host(
        self,
        key: K,
        call: _Call,
        fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
        args: tuple[*PosArgsT],
    ) -> None:
        try:
            with call.scope:
                call.value = await fn(*args)
                call.has_value = True
        except Exception as exc:
            call.error = exc
            call.traceback = exc.__traceback__
        except BaseException:
            call.error = anyio.ClosedResourceError(
                "the SingleFlight block was left, or its task group cancelled, "
                f"while the call for key {key!r} ran"
            )
            raise
        finally:
            if self._flights.get(key) is call:
                del self._flights[key]
                if call.has_value and self._ttl is not None:
                    now = anyio.current_time()
                    self._cache[key] = (call.value, now + self._ttl)  # type: ignore[assignment]
            call.done.set()

    def _expire(self, now: float) -> None:
        cache = self._cache
        while cache:
            key = next(iter(cache))
            if cache[key][1] > now:
                return
            del cache[key]

    def forget(self, key: K) -> None:
        """Drop the result cached for *key*, if any: the next caller starts a call.

        A call in flight for *key* is not affected (its result is cached when it
        ends). Not a checkpoint; never blocks.
        """
        self._cache.pop(key, None)

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> SingleFlightStatistics:
        """Return a :class:`SingleFlightStatistics` snapshot. Not a checkpoint."""
        if self._cache:
            self._expire(anyio.current_time())
        return SingleFlightStatistics(
            in_flight=len(self._flights),
            waiting=self._waiting,
            cached=len(self._cache),
            calls=self._calls,
            shared=self._shared,
            hits=self._hits,
        )

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._started:
            state = "open"
        else:
            state = "not entered"
        return (
            f"<anyio_keyq.SingleFlight at {id(self):#x}: {state}, "
            f"{len(self._flights)} in flight, {self._waiting} waiting, "
            f"{len(self._cache)} cached, ttl={self._ttl!r}>"
        )
