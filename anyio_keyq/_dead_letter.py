"""Dead-letter: the jobs that failed for good, handed to a stream or a callback."""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import ObjectSendStream

from ._job import Job  # noqa: TC001  # the docs resolve annotations
from ._util import final

K = TypeVar("K", bound=Hashable)


@final
@dataclass(frozen=True, slots=True)
class DeadLetter(Generic[K]):
    """A job that failed for good, as handed to ``KeyedLanes(dead_letter=...)``.

    It carries what it takes to inspect the failure, or to submit the job again:
    ``lanes.submit_nowait(letter.key, letter.fn, *letter.args)`` (while the lanes are
    open: once closed, they refuse new jobs, also from a dead-letter function).
    """

    #: The job's key.
    key: K
    #: The job's function.
    fn: Callable[..., Awaitable[Any]]
    #: The job's positional arguments.
    args: tuple[Any, ...]
    #: How many times the job started (0 if it never did: see *reason*).
    attempts: int
    #: The job's last exception (a :exc:`LaneHalted` for a job that never started).
    exception: BaseException
    #: Why the job is here, in words: failed after its attempts, or its lane halted.
    reason: str
    #: The job's handle, settled as failed with :attr:`exception`.
    job: Job[Any]


def check_dead_letter(value: object) -> None:
    if value is not None and not isinstance(value, ObjectSendStream) and not callable(value):
        raise TypeError(
            f"dead_letter must be an object send stream (such as the send end of "
            f"anyio.create_memory_object_stream()), a callable or None, got {value!r}"
        )


class Postbox:
    """Delivers dead letters in order, from one task, outside the lanes' bookkeeping.

    A job fails inside the lanes' synchronous bookkeeping, where user code must not
    run (it could submit jobs in the middle of an update) and nothing may block: the
    letter waits here, and one task started on demand delivers it. A stream gets
    every letter (the task waits for room: nothing is dropped), and is closed once
    the lanes are, so that ``async for letter in receive_stream`` ends. If the lanes'
    host is cancelled, a function still gets every letter that was waiting (shielded),
    a stream what fits in its buffer; so do the letters of jobs that fail on the way
    out, once the lanes' workers are done.
    """

    __slots__ = (
        "_callback",
        "_closing",
        "_delivering",
        "_emptied",
        "_letters",
        "_spawn",
        "_stream",
        "delivered",
        "posted",
    )

    def __init__(
        self,
        target: ObjectSendStream[DeadLetter[Any]] | Callable[[DeadLetter[Any]], object],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
    ) -> None:
        self._stream: ObjectSendStream[DeadLetter[Any]] | None = None
        self._callback: Callable[[DeadLetter[Any]], object] | None = None
        if isinstance(target, ObjectSendStream):
            self._stream = target  # pyright: ignore[reportUnknownMemberType]
        else:
            self._callback = target
        self._spawn = spawn
        self._letters: deque[DeadLetter[Any]] = deque()
        self._delivering = False
        self._emptied: anyio.Event | None = None
        self._closing = False
        self.delivered = 0
        self.posted = 0

    def post(self, letter: DeadLetter[Any]) -> None:
        self._letters.append(letter)
        self.posted += 1
        if not self._delivering:
            self._delivering = True
            self._spawn(self._deliver)

    @property
    def busy(self) -> bool:
        """Whether letters are waiting or being delivered."""
        return self._delivering

    async def _deliver(self) -> None:
        stream = self._stream
        letters = self._letters
        try:
            while letters:
                if stream is not None:
                    await stream.send(letters[0])
                    letters.popleft()
                    self.delivered += 1
                else:
                    await self._call(letters)
        except anyio.get_cancelled_exc_class():
            # Cancelled with the lanes' host: what can be delivered without waiting is.
            with anyio.CancelScope(shield=True):
                await self._deliver_now()
            raise
        finally:
            self._delivering = False
            if self._emptied is not None:
                self._emptied.set()
                self._emptied = None

    async def _call(self, letters: deque[DeadLetter[Any]]) -> None:
        assert self._callback is not None
        result = self._callback(letters.popleft())
        self.delivered += 1
        if inspect.isawaitable(result):
            await result

    async def _deliver_now(self) -> None:
        """A stream gets what fits in its buffer; a function gets every letter."""
        if self._stream is None:
            while self._letters:
                await self._call(self._letters)
            return
        send_nowait = getattr(self._stream, "send_nowait", None)
        while self._letters and send_nowait is not None:
            try:
                send_nowait(self._letters[0])
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            self._letters.popleft()
            self.delivered += 1

    async def wait_delivered(self) -> None:
        """Wait until every letter posted so far has been handed over."""
        while self._delivering:
            if self._emptied is None:
                self._emptied = anyio.Event()
            await self._emptied.wait()

    async def finish(self) -> None:
        """The lanes have stopped: deliver what is left without waiting, close the stream.

        Shielded: it runs on the lanes' way out, cancelled or not.
        """
        if self._closing or self._delivering:  # a delivery still under way: leave it be
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            await self._deliver_now()
            if self._stream is not None:
                await self._stream.aclose()
