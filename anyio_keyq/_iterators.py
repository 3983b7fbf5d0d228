"""Async-iterator adapters: amap, keyed_amap and batched."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
)
from contextlib import AbstractAsyncContextManager
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, overload

import anyio
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._lanes import KeyedLanes
from ._limiters import Limiter
from ._util import check_positive_int, check_seconds, describe

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from anyio.abc import TaskGroup

T = TypeVar("T")
R = TypeVar("R")

#: ``_take()`` found nothing to hand out yet.
_NOTHING: Any = object()
#: The iteration is over: the source is exhausted and drained, or something failed.
_END: Any = object()

_NEW = "new"
_RUNNING = "running"
_CLOSED = "closed"


# -- validation (at the call site, before anything runs) --------------------------------


def _check_callable(name: str, value: object) -> None:
    if callable(value):
        return
    if isinstance(value, Coroutine):
        value.close()  # silence "never awaited"
    if isinstance(value, Awaitable):
        raise TypeError(
            f"{name} must be a function, got the awaitable {value!r}: pass the function "
            f"itself, as in amap(fetch, urls), not amap(fetch(url), urls)"
        )
    raise TypeError(f"{name} must be a function, got {value!r}")


def _open_source(
    source: Iterable[Any] | AsyncIterable[Any],
) -> tuple[Iterator[Any] | None, AsyncIterator[Any] | None]:
    """Return (sync iterator, None) or (None, async iterator) for *source*."""
    if isinstance(source, AsyncIterable):
        return None, aiter(source)
    try:
        return iter(source), None
    except TypeError:
        hint = "; call it to get an iterable" if callable(source) else ""
        raise TypeError(
            f"source must be an iterable or an async iterable, got {source!r}{hint}"
        ) from None


def _check_limit(limit: object) -> int:
    """Return how many calls *limit* lets run at once."""
    if isinstance(limit, anyio.CapacityLimiter | Limiter):
        tokens = limit.total_tokens
        if tokens == math.inf:
            raise ValueError(
                f"limit must have a finite number of tokens, got a {type(limit).__name__} "
                f"with total_tokens={tokens!r}: they set the number of worker tasks and "
                f"the read-ahead bound"
            )
        return max(1, int(tokens))
    return check_positive_int("limit", limit)


# -- the lifecycle shared by every adapter ---------------------------------------------


class _Adapter(AsyncIterator[R]):
    """An async context manager that runs background work and hands out its results.

    The consumer iterates the object itself, from inside the ``async with`` block, one
    task at a time. Background tasks run in a task group entered by ``__aenter__`` and
    cancelled by ``__aexit__``, so they never outlive the block, and the consumer never
    yields out of a task group. Subclasses implement ``_start`` and ``_take``.
    """

    __slots__ = (
        "_aiter",
        "_consuming",
        "_done",
        "_failure",
        "_iter",
        "_state",
        "_tg",
        "_wakeup",
        "_what",
    )

    def __init__(self, what: str, source: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._what = what
        self._iter, self._aiter = _open_source(source)
        self._state = _NEW
        self._tg: TaskGroup | None = None
        self._consuming = False
        self._done = False  # the consumer has seen the end or the failure
        self._failure: BaseException | None = None
        self._wakeup: anyio.Event | None = None

    # -- subclass hooks ----------------------------------------------------------------

    def _start(self, tg: TaskGroup) -> None:
        raise NotImplementedError

    def _take(self) -> Any:
        """Remove and return the next result, ``_NOTHING`` or ``_END``. Never blocks."""
        raise NotImplementedError

    async def _block(self, event: anyio.Event) -> None:
        """Wait until *event* is set (or, for subclasses, until something is due)."""
        await event.wait()

    def _on_fail(self) -> None:
        """Stop the background work after a failure."""

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _NEW:
            raise RuntimeError(f"{self._what} can be entered only once")
        await checkpoint()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = _RUNNING
        self._start(tg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        self._state = _CLOSED
        self._wake()  # a consumer in another task gets a RuntimeError
        tg.cancel_scope.cancel()
        try:
            # The body's exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup: the background tasks never fail, so it stays bare.
            await tg.__aexit__(None, None, None)
        finally:
            await self._close_source()

    async def _close_source(self) -> None:
        """Close the source iterator: the adapter owns it, like ``aclosing()`` would.

        Not shielded: if the consumer was cancelled, the source's cleanup runs in the
        cancelled scope, exactly as it would under ``async with aclosing(source)``.
        """
        it: object = self._aiter if self._aiter is not None else self._iter
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(it, "close", None)
        if close is not None:
            close()

    # -- consuming -----------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> R:
        """Return the next result. This is a checkpoint."""
        if self._state is not _RUNNING:
            raise RuntimeError(self._misuse())
        if self._consuming:
            raise RuntimeError(
                f"another task is already iterating the results of {self._what}; "
                f"only one task at a time may iterate them"
            )
        await checkpoint_if_cancelled()
        self._consuming = True
        try:
            value = self._poll()
            waited = value is _NOTHING
            if waited:
                value = await self._wait()
        finally:
            self._consuming = False
        if not waited:
            await cancel_shielded_checkpoint()
        if value is _END:
            failure = None if self._done else self._failure
            self._done = True
            if isinstance(failure, StopAsyncIteration):
                # raised as it is, it would end the caller's loop as if all went well
                raise RuntimeError(f"{self._what} got StopAsyncIteration") from failure
            if failure is not None:
                raise failure
            raise StopAsyncIteration
        return value  # type: ignore[no-any-return]

    def _misuse(self) -> str:
        if self._state is _NEW:
            return (
                f"iterate the results of {self._what} inside its 'async with' block: "
                f"'async with {self._what[:-2]}(...) as results: async for ... in results'"
            )
        return (
            f"the 'async with' block of {self._what} has exited, and its background work "
            f"with it; iterate the results inside the block"
        )

    def _poll(self) -> Any:
        if self._done or self._failure is not None:
            return _END
        return self._take()

    async def _wait(self) -> Any:
        while True:
            event = self._wakeup = anyio.Event()
            try:
                await self._block(event)
            finally:
                self._wakeup = None
            if self._state is not _RUNNING:
                raise RuntimeError(self._misuse())
            value = self._poll()
            if value is not _NOTHING:
                return value

    # -- for the background tasks --------------------------------------------------------

    def _wake(self) -> None:
        event = self._wakeup
        if event is not None:
            self._wakeup = None
            event.set()

    def _fail(self, exc: BaseException) -> None:
        """Record the first failure, stop the background work, tell the consumer."""
        if self._failure is None and not self._done:
            self._failure = exc
            self._on_fail()
            self._wake()

    async def _pull(self) -> Any:
        """Read the next item of the source, or ``_END``."""
        it = self._aiter
        if it is None:
            assert self._iter is not None
            return next(self._iter, _END)
        try:
            return await it.__anext__()
        except StopAsyncIteration:
            return _END

    def __repr__(self) -> str:
        return f"<anyio_keyq.{self._what[:-2]} at {id(self):#x}: {self._state}>"


class _Mapped(_Adapter[R]):
    """The bounded result buffer shared by amap and keyed_amap.

    ``_read - _delivered`` items have been read from the source and not yet handed to
    the consumer: running, queued, or finished and buffered. The readers keep it at
    most ``_window``; that is the read-ahead bound.
    """

    __slots__ = (
        "_by_index",
        "_delivered",
        "_exhausted",
        "_fifo",
        "_ordered",
        "_read",
        "_return_exceptions",
        "_unfinished",
        "_window",
    )

    def __init__(
        self,
        what: str,
        source: Iterable[Any] | AsyncIterable[Any],
        window: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        super().__init__(what, source)
        self._window = window
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._by_index: dict[int, Any] = {}  # ordered: finished results by source index
        self._fifo: deque[Any] = deque()  # unordered: finished results, first done first
        self._read: int = 0
        self._delivered: int = 0
        self._unfinished: int = 0  # read, and not yet finished
        self._exhausted = False

    def _on_room(self) -> None:
        """The consumer took a result: the window has room for one more item."""
        raise NotImplementedError

    def _outcome(self, exc: BaseException) -> Any:
        """What a call that raised *exc* yields, or ``_NOTHING`` after failing."""
        if self._return_exceptions and isinstance(exc, Exception):
            return exc
        self._fail(exc)
        return _NOTHING

    def _store(self, index: int, value: Any) -> None:
        self._unfinished -= 1
        if self._ordered:
            self._by_index[index] = value
            if index == self._delivered:
                self._wake()
        else:
            self._fifo.append(value)
            self._wake()

    def _take(self) -> Any:
        if self._ordered:
            value = self._by_index.pop(self._delivered, _NOTHING)
        else:
            value = self._fifo.popleft() if self._fifo else _NOTHING
        if value is _NOTHING:
            return _END if self._exhausted and not self._unfinished else _NOTHING
        self._delivered += 1
        self._on_room()
        return value

    def _source_done(self) -> None:
        self._exhausted = True
        if not self._unfinished:
            self._wake()

    def __repr__(self) -> str:
        ready = len(self._by_index) + len(self._fifo)
        return (
            f"<anyio_keyq.{self._what[:-2]} at {id(self):#x}: {self._state}, "
            f"{self._read} read, {self._unfinished} unfinished, {ready} ready, "
            f"{self._delivered} delivered>"
        )


# -- amap ---------------------------------------------------------------------------------


class _Idle:
    """A worker waiting for its turn to read the source."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class _Amap(_Mapped[R], Generic[T, R]):
    """``limit`` worker tasks, each reading the next item and calling ``fn`` on it.

    One worker at a time holds the *reader role*: it reads one item, passes the role
    on, and calls ``fn``. The role is handed out only while the window has room, so the
    source is read at most ``2 * limit`` items ahead of the consumer. Workers are spawned
    as the work needs them, up to ``limit``, and reused: there is no task per item.
    """

    __slots__ = (
        "_fn",
        "_home",
        "_idle",
        "_limiter",
        "_max_workers",
        "_reading",
        "_scopes",
        "_workers",
    )

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        source: Iterable[Any] | AsyncIterable[Any],
        limit: int | anyio.CapacityLimiter | Limiter,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        _check_callable("fn", fn)
        workers = _check_limit(limit)
        super().__init__("amap()", source, 2 * workers, ordered, return_exceptions)
        self._fn = fn
        self._limiter = None if isinstance(limit, int) else limit
        self._max_workers = workers
        self._workers = 0
        self._reading = False  # the reader role is taken (or promised to a worker)
        self._idle: deque[_Idle] = deque()
        self._scopes: set[anyio.CancelScope] = set()
        self._home: Context | None = None

    def _start(self, tg: TaskGroup) -> None:
        self._home = copy_context()
        self._reading = True
        self._spawn(tg)

    def _spawn(self, tg: TaskGroup) -> None:
        self._workers += 1
        # Every worker starts in the context of the 'async with', not in that of the
        # worker that happens to spawn it, which its calls may have changed.
        assert self._home is not None
        self._home.copy().run(self._start_worker, tg)

    def _start_worker(self, tg: TaskGroup) -> None:
        tg.start_soon(self._worker, name=f"anyio_keyq amap worker {describe(self._fn)}")

    def _can_read(self) -> bool:
        return (
            not self._reading
            and not self._exhausted
            and self._failure is None
            and self._state is _RUNNING
            and self._read - self._delivered < self._window
        )

    def _dispatch(self) -> None:
        """Give the free reader role to an idle worker, or to a new one."""
        if not self._can_read():
            return
        if self._idle:
            waiter = self._idle.popleft()
            waiter.granted = True
            waiter.event.set()
        elif self._workers < self._max_workers:
            assert self._tg is not None
            self._spawn(self._tg)
        else:
            return  # a busy worker takes the role when its call is done
        self._reading = True

    _on_room = _dispatch

    def _on_fail(self) -> None:
        for scope in self._scopes:
            scope.cancel()

    def _release_idle(self) -> None:
        idle, self._idle = self._idle, deque()
        for waiter in idle:
            waiter.event.set()

    async def _worker(self) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await self._work()
            finally:
                self._scopes.discard(scope)
                self._workers -= 1

    async def _call_limited(self, limiter: anyio.CapacityLimiter | Limiter, item: T) -> R:
        """Call ``fn`` under a permit of *limiter*, borrowed for this one call."""
        borrower = object()
        try:
            limiter.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            await limiter.acquire_on_behalf_of(borrower)
        failed = True
        try:
            value = await self._fn(item)
            failed = False
        except anyio.get_cancelled_exc_class():
            failed = False  # cancelled, as the lanes and scopes report it: not a failure
            raise
        finally:
            if isinstance(limiter, anyio.CapacityLimiter):
                limiter.release_on_behalf_of(borrower)
            else:
                limiter.release_on_behalf_of(borrower, failed=failed)
        return value

    async def _work(self) -> None:
        """Started holding the reader role; run until there is nothing left to read."""
        fn = self._fn
        limiter = self._limiter
        cancelled = anyio.get_cancelled_exc_class()
        while True:
            try:
                item = await self._pull()
            except cancelled:
                raise
            except BaseException as exc:
                self._reading = False
                self._fail(exc)
                return
            self._reading = False
            if item is _END:
                self._source_done()
                self._release_idle()
                return
            index = self._read
            self._read += 1
            self._unfinished += 1
            self._dispatch()  # the next item is read while this one is processed
            try:
                if limiter is None:
                    value = await fn(item)
                else:
                    value = await self._call_limited(limiter, item)
            except cancelled:
                raise
            except BaseException as exc:
                value = self._outcome(exc)
                if value is _NOTHING:
                    return
            self._store(index, value)
            if self._can_read():
                self._reading = True
                continue
            if self._exhausted or self._failure is not None:
                return
            waiter = _Idle()
            self._idle.append(waiter)
            await waiter.event.wait()
            if not waiter.granted:
                return


# -- keyed_amap ---------------------------------------------------------------------------


class _KeyedAmap(_Mapped[R], Generic[T, R]):
    """One feeder task reads the source and submits each item to its key's lane.

    The lanes run the calls in their reused workers; each call stores its own result.
    The feeder waits whenever the window is full, so the source is read at most
    ``2 * limit`` items ahead of the consumer.
    """

    __slots__ = ("_fn", "_key", "_limit", "_per_key", "_pump_scope", "_room")

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        source: Iterable[Any] | AsyncIterable[Any],
        key: Callable[[T], Hashable],
        limit: int | anyio.CapacityLimiter | Limiter,
        per_key: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        _check_callable("fn", fn)
        _check_callable("key", key)
        tokens = _check_limit(limit)
        self._per_key = check_positive_int("per_key", per_key)
        super().__init__("keyed_amap()", source, 2 * tokens, ordered, return_exceptions)
        self._fn = fn
        self._key = key
        self._limit = limit
        self._room: anyio.Event | None = None
        self._pump_scope: anyio.CancelScope | None = None

    def _start(self, tg: TaskGroup) -> None:
        self._pump_scope = anyio.CancelScope()
        tg.start_soon(self._pump, name=f"anyio_keyq keyed_amap feeder {describe(self._fn)}")

    def _on_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    def _on_fail(self) -> None:
        assert self._pump_scope is not None  # failures come from the started work
        self._pump_scope.cancel()  # the lanes cancel every queued and running call

    async def _pump(self) -> None:
        assert self._pump_scope is not None
        with self._pump_scope:
            async with KeyedLanes[Hashable](limit=self._limit, per_key=self._per_key) as lanes:
                await self._feed(lanes)
            # leaving the lanes waited for every call; a failure cancelled them instead

    async def _feed(self, lanes: KeyedLanes[Hashable]) -> None:
        key = self._key
        call = self._call
        cancelled = anyio.get_cancelled_exc_class()
        while True:
            while self._read - self._delivered >= self._window:
                room = self._room = anyio.Event()
                await room.wait()
            try:
                item = await self._pull()
                if item is _END:
                    break
                lanes.submit_nowait(key(item), call, self._read, item)
            except cancelled:
                raise
            except BaseException as exc:
                self._fail(exc)
                return
            self._read += 1
            self._unfinished += 1
        self._source_done()

    async def _call(self, index: int, item: T) -> None:
        try:
            value = await self._fn(item)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            value = self._outcome(exc)
            if value is _NOTHING:
                return
        self._store(index, value)


# -- batched ------------------------------------------------------------------------------


class _Batched(_Adapter[list[T]]):
    """One reader task fills the current batch; the consumer takes it when it is due.

    A batch is due when it holds ``size`` items, when ``max_wait`` seconds have passed
    since its first item, or when the source has ended. The reader stops when the
    batch is full, so the source is read at most ``size`` items ahead of the consumer.
    """

    __slots__ = ("_batch", "_exhausted", "_expired", "_first_at", "_max_wait", "_room", "_size")

    def __init__(
        self, source: Iterable[Any] | AsyncIterable[Any], size: int, max_wait: float | None
    ) -> None:
        self._size = check_positive_int("size", size)
        self._max_wait = (
            None if max_wait is None else check_seconds("max_wait", max_wait, allow_zero=False)
        )
        super().__init__("batched()", source)
        self._batch: list[T] = []
        self._first_at = 0.0
        self._expired = False  # the consumer's wait for the current batch timed out
        self._exhausted = False
        self._room: anyio.Event | None = None

    def _start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._fill, name="anyio_keyq batched reader")

    async def _fill(self) -> None:
        size = self._size
        timed = self._max_wait is not None
        cancelled = anyio.get_cancelled_exc_class()
        while True:
            if len(self._batch) >= size:
                room = self._room = anyio.Event()
                await room.wait()
                continue
            try:
                item = await self._pull()
            except cancelled:
                raise
            except BaseException as exc:
                self._fail(exc)
                return
            if item is _END:
                self._exhausted = True
                self._wake()
                return
            batch = self._batch
            batch.append(item)
            if len(batch) == 1:
                self._first_at = anyio.current_time()
                if timed:
                    self._wake()  # the consumer starts the batch's clock
            if len(batch) >= size:
                self._wake()

    def _due(self) -> bool:
        batch = self._batch
        if not batch:
            return False
        if len(batch) >= self._size or self._exhausted or self._expired:
            return True
        return (
            self._max_wait is not None and anyio.current_time() >= self._first_at + self._max_wait
        )

    def _take(self) -> Any:
        if self._due():
            batch, self._batch = self._batch, []
            self._expired = False
            room = self._room
            if room is not None:
                self._room = None
                room.set()
            return batch
        return _END if self._exhausted else _NOTHING

    async def _block(self, event: anyio.Event) -> None:
        if not self._batch or self._max_wait is None:
            await event.wait()
            return
        with anyio.move_on_at(self._first_at + self._max_wait) as scope:
            await event.wait()
        # a timer may fire a hair early on real clocks: its batch is due all the same
        self._expired = scope.cancelled_caught


# -- the public functions ---------------------------------------------------------------------


@overload
def amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | anyio.CapacityLimiter | Limiter,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
) -> AbstractAsyncContextManager[AsyncIterator[R]]: ...


@overload
def amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | anyio.CapacityLimiter | Limiter,
    ordered: bool = ...,
    return_exceptions: bool,
) -> AbstractAsyncContextManager[AsyncIterator[R | Exception]]: ...


def amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | anyio.CapacityLimiter | Limiter,
    ordered: bool = True,
    return_exceptions: bool = False,
) -> AbstractAsyncContextManager[AsyncIterator[R | Exception]]:
    """Call ``fn`` on every item of *source*, at most *limit* calls at once.

    .. code-block:: python

        async with amap(fetch, urls, limit=50) as pages:
            async for page in pages:
                ...

    *source* (an iterable or an async iterable) is read lazily, as the calls need items,
    and never more than ``2 * limit`` items ahead of the consumer: a slow consumer slows
    the source down. With ``ordered=True`` the results come in source order; with
    ``ordered=False``, in the order the calls finish.

    Compared with :func:`anyio.amap`, which starts a task per item and returns a list
    once every call has finished, this streams the results with bounded memory and runs
    the calls in at most *limit* reused worker tasks.

    **Failures.** The first exception raised by ``fn`` (or by the source) cancels the
    calls in flight and is raised, as it is, from the iteration; results not yet
    handed out are dropped. With ``return_exceptions=True``, an :exc:`Exception` raised
    by ``fn`` is yielded in place of its result instead (cancellation and other
    :exc:`BaseException`\\ s still end the iteration; so does a failing source).

    **Cancellation and cleanup.** Leaving the ``async with`` block, by ``break``, an
    exception or a cancellation, cancels the calls in flight and closes the source
    iterator (``aclose()``, or ``close()`` for a sync one) before the block exits.
    Entering the block is a checkpoint; leaving it waits for the cancelled calls, so it
    can block. Each step of the iteration is a checkpoint.

    :param fn: an async function taking one item
    :param source: the items, read one at a time from the worker tasks
    :param limit: how many calls may run at once: an int >= 1, or an
        :class:`anyio.CapacityLimiter` shared with other code (then
        ``total_tokens``, as it is when ``amap()`` is called, sets the number of worker
        tasks and the read-ahead bound)
    :param ordered: yield the results in source order (else as they finish)
    :param return_exceptions: yield exceptions raised by ``fn`` instead of raising them
    :return: an async context manager whose value is the async iterator of results
        (of type ``R``, or ``R | Exception`` with ``return_exceptions=True``); iterate
        it inside the block, from one task at a time
    :raises TypeError: at the call, if *fn* is not callable or *source* not iterable
    :raises ValueError: at the call, if *limit* is below 1
    """
    return _Amap(fn, source, limit, ordered, return_exceptions)


@overload
def keyed_amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    key: Callable[[T], Hashable],
    limit: int | anyio.CapacityLimiter | Limiter,
    per_key: int = ...,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
) -> AbstractAsyncContextManager[AsyncIterator[R]]: ...


@overload
def keyed_amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    key: Callable[[T], Hashable],
    limit: int | anyio.CapacityLimiter | Limiter,
    per_key: int = ...,
    ordered: bool = ...,
    return_exceptions: bool,
) -> AbstractAsyncContextManager[AsyncIterator[R | Exception]]: ...


def keyed_amap(
    fn: Callable[[T], Awaitable[R]],
    source: Iterable[T] | AsyncIterable[T],
    *,
    key: Callable[[T], Hashable],
    limit: int | anyio.CapacityLimiter | Limiter,
    per_key: int = 1,
    ordered: bool = False,
    return_exceptions: bool = False,
) -> AbstractAsyncContextManager[AsyncIterator[R | Exception]]:
    """Call ``fn`` on every item of *source*, one at a time and in order per key.

    .. code-block:: python

        async with keyed_amap(apply, events, key=lambda e: e.account, limit=100) as out:
            async for result in out:
                ...

    Items with the same ``key(item)`` are processed one at a time (``per_key`` at a
    time), starting in source order; items with different keys run in parallel, at most
    *limit* calls at once: the partitions of a Kafka topic, in one process. The calls
    run in a :class:`KeyedLanes`. As with :func:`amap`, *source* is read lazily and
    never more than ``2 * limit`` items ahead of the consumer.

    With ``ordered=False`` (the default) results come as the calls finish; with
    ``ordered=True``, in source order. Failures, ``return_exceptions``, cancellation,
    cleanup and checkpoints behave as for :func:`amap`; an exception raised by *key*
    ends the iteration like one raised by the source.

    :param fn: an async function taking one item
    :param source: the items, read one at a time by a feeder task
    :param key: a function returning the (hashable) key of an item
    :param limit: how many calls may run at once, for all keys: an int >= 1 or an
        :class:`anyio.CapacityLimiter` (then ``total_tokens`` sets the read-ahead bound)
    :param per_key: how many calls of one key may run at once
    :param ordered: yield the results in source order (else as they finish)
    :param return_exceptions: yield exceptions raised by ``fn`` instead of raising them
    :return: an async context manager whose value is the async iterator of results
        (of type ``R``, or ``R | Exception`` with ``return_exceptions=True``)
    :raises TypeError: at the call, if *fn* or *key* is not callable or *source* not
        iterable
    :raises ValueError: at the call, if *limit* or *per_key* is below 1
    """
    return _KeyedAmap(fn, source, key, limit, per_key, ordered, return_exceptions)


def batched(
    source: Iterable[T] | AsyncIterable[T], *, size: int, max_wait: float | None
) -> AbstractAsyncContextManager[AsyncIterator[list[T]]]:
    """Group the items of *source* into lists of at most *size* items.

    .. code-block:: python

        async with batched(rows, size=500, max_wait=0.2) as batches:
            async for batch in batches:
                await db.insert_many(batch)

    A batch is handed out as soon as it holds *size* items, or *max_wait* seconds after
    its first item arrived, whichever comes first (if the consumer is busy then, it gets
    the batch, grown meanwhile up to *size*, as soon as it asks). A last partial batch
    comes at the end of the source; no batch is ever empty. With ``max_wait=None``,
    only *size* (and the end) closes a batch.

    A reader task consumes *source*, so that the time limit holds even while the source
    is slow; it reads at most *size* items ahead of the consumer. Compared with
    :func:`anyio.itertools.batched`, which needs no task, this one adds the time limit.
    Leaving the block stops the reader and closes the source iterator, as for
    :func:`amap`. Entering is a checkpoint, leaving can block, and each step of the
    iteration is a checkpoint.

    :param source: the items
    :param size: the most items in a batch, >= 1
    :param max_wait: the most seconds between the first item of a batch and its
        delivery (> 0), or ``None`` for no limit
    :return: an async context manager whose value is the async iterator of batches
    :raises TypeError: at the call, if *source* is not iterable or an argument has the
        wrong type
    :raises ValueError: at the call, if *size* is below 1 or *max_wait* is not above 0
    """
    return _Batched[T](source, size, max_wait)
