"""hedge: call a slow-tailed function again if it has not answered, and keep the first answer."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar, TypeVarTuple, Unpack, cast

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._util import check_callable, describe

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


def _check_delays(delays: object) -> tuple[float, ...]:
    """Return *delays* as a tuple of finite, strictly increasing offsets >= 0."""
    if isinstance(delays, str | bytes) or not isinstance(delays, Iterable):
        raise TypeError(
            f"delays must be an iterable of numbers of seconds, such as (0.05, 0.2), got {delays!r}"
        )
    offsets: list[float] = []
    for index, value in enumerate(cast("Iterable[object]", delays)):
        name = f"delays[{index}]"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if not 0 <= value < math.inf:  # NaN fails both comparisons
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if offsets and value <= offsets[-1]:
            raise ValueError(
                f"delays must be strictly increasing (offsets from the start of the first "
                f"call, not gaps between calls), but {name} is {value!r} after "
                f"{offsets[-1]!r}"
            )
        offsets.append(float(value))
    return tuple(offsets)


async def hedge(
    fn: Callable[[Unpack[PosArgsT]], Awaitable[T]],
    /,
    *args: *PosArgsT,
    delays: Iterable[float] = (0.05, 0.2),
) -> T:
    """Call ``fn(*args)``, and call it again if it is slow to answer; return the first answer.

    A *hedged call* cuts the tail latency of an operation that is usually fast but
    sometimes slow for reasons that a second try does not share: a replica that is
    busy, a packet that was lost, a garbage collection pause. The first call starts at
    once; if no call has succeeded ``delays[0]`` seconds after that start, a backup call
    starts, running alongside the first; after ``delays[1]`` seconds another, and so
    on, for at most ``1 + len(delays)`` calls. Pass keyword arguments to *fn* with
    :func:`functools.partial`::

        replica = await hedge(read_row, "users", 42, delays=(0.05, 0.2))

    **Delays are offsets from the start of the first call**, not gaps between calls:
    with ``delays=(0.05, 0.2)`` the backups start 50 ms and 200 ms after the first
    call. They must be finite, at least 0 and strictly increasing. With ``delays=()``
    there is a single call and nothing is hedged.

    **The first success wins.** As soon as one call returns, every other call is
    cancelled, and :func:`hedge` waits for them to finish before it returns the
    winner's value: the calls run in a task group of :func:`hedge`'s own, so none of
    them outlives it.

    **A failure starts the next backup at once.** A call that raises an
    :exc:`Exception` does not stop the others, and the backup next in line starts
    right away instead of at its instant; the backups after it keep theirs. (A failure
    is an answer that came early: waiting for the next instant would only add latency.)
    If every call fails, :func:`hedge` raises an :exc:`ExceptionGroup` of their
    exceptions, in the order the calls started. A :exc:`BaseException` that is not an
    :exc:`Exception` (such as :exc:`KeyboardInterrupt`) is not a failure of the call:
    it cancels the other calls and propagates, as it would from a task group.

    Unlike :meth:`KeyedLanes.run` or a retry loop, which run one attempt at a time,
    :func:`hedge` runs attempts *concurrently*, so ``fn`` must be safe to run more than
    once at the same time: a read, or a write that is idempotent.

    **Cancellation:** cancelling the caller cancels every call, and :func:`hedge`
    waits for them before the cancellation propagates. :func:`hedge` is a checkpoint:
    a cancel point (inside a cancelled scope it raises before calling ``fn``) and a
    schedule point, even when the first call answers without waiting.

    :param delays: when to start each backup call, in seconds from the start of the
        first call
    :return: the value returned by the first call that succeeded
    :raises ExceptionGroup: if every call failed, with their exceptions in start order
    :raises TypeError: if ``fn`` is not callable, or ``delays`` is not an iterable of
        numbers
    :raises ValueError: if the delays are negative, infinite, NaN or not strictly
        increasing

    .. versionadded:: 0.1.0
    """
    check_callable(fn)
    offsets = _check_delays(delays)
    await checkpoint_if_cancelled()

    calls = 1 + len(offsets)
    failed: dict[int, Exception] = {}
    winner: list[T] = []  # the value of the first call that succeeded, once there is one
    started = 0

    async with anyio.create_task_group() as tg:

        def launch() -> None:
            nonlocal started
            tg.start_soon(attempt, started, name=f"hedged call {started} to {describe(fn)}")
            started += 1

        async def attempt(index: int) -> None:
            try:
                value = await fn(*args)
            except Exception as exc:
                failed[index] = exc
                if not winner and started < calls:
                    launch()  # the next backup, at once
                return
            if not winner:
                winner.append(value)
                tg.cancel_scope.cancel()

        first_start = anyio.current_time()
        launch()
        while started < calls:
            # Sleep until the instant of the next backup. If a failure started that
            # backup meanwhile, the loop goes on to the one after it.
            next_up = started
            with anyio.move_on_at(first_start + offsets[next_up - 1]):
                await anyio.sleep_forever()
            if started == next_up:
                launch()

    if winner:
        return winner[0]
    # No call succeeded and none raised a BaseException: all of them started and failed.
    errors = [failed[index] for index in range(calls)]
    raise ExceptionGroup(f"all {calls} hedged calls to {describe(fn)} failed", errors)
