"""Helpers shared by the test modules: trivial jobs and checkpoint assertions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
import sniffio
from anyio.lowlevel import checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable


async def echo(value: Any) -> Any:
    await checkpoint()
    return value


async def boom(message: str) -> None:
    await checkpoint()
    raise ValueError(message)


async def assert_cancel_point(call: Callable[[], Any]) -> None:
    """*call* raises cancellation inside an already-cancelled scope."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await call()
        pytest.fail("not a cancel point")  # pragma: no cover
    assert scope.cancelled_caught


async def assert_schedule_point(call: Callable[[], Any]) -> Any:
    """A sibling task gets to run while *call* runs (on trio: *call* yields).

    Returns what *call* returned.
    """
    if sniffio.current_async_library() == "trio":
        import trio.testing

        with trio.testing.assert_checkpoints():
            return await call()
    ran = False

    async def sibling() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        assert not ran
        result = await call()
        assert ran
    return result
