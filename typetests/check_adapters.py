"""Static type checks of the iterator adapters, read by mypy and pyright, never executed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, assert_type

from anyio_keyq import amap, batched, keyed_amap

if TYPE_CHECKING:
    import anyio


async def fetch(url: str) -> bytes:
    return b""


async def urls() -> AsyncIterator[str]:
    yield "https://example.org"


def account(event: tuple[str, int]) -> str:
    return event[0]


async def apply(event: tuple[str, int]) -> int:
    return event[1]


def unhashable(event: tuple[str, int]) -> list[str]:
    return [event[0]]


async def check(limiter: anyio.CapacityLimiter) -> None:
    async with amap(fetch, ["a", "b"], limit=2) as pages:
        assert_type(pages, AsyncIterator[bytes])
        async for page in pages:
            assert_type(page, bytes)
    async with amap(fetch, urls(), limit=limiter, ordered=False) as pages:
        assert_type(pages, AsyncIterator[bytes])
    async with amap(fetch, ["a"], limit=2, return_exceptions=True) as outcomes:
        assert_type(outcomes, AsyncIterator[bytes | Exception])
    flag: bool = bool(limiter.borrowed_tokens)
    async with amap(fetch, ["a"], limit=2, return_exceptions=flag) as outcomes:
        assert_type(outcomes, AsyncIterator[bytes | Exception])

    events = [("ann", 1), ("bob", 2)]
    async with keyed_amap(apply, events, key=account, limit=10) as results:
        assert_type(results, AsyncIterator[int])
    async with keyed_amap(apply, events, key=lambda e: e[0], limit=10, per_key=2) as results:
        assert_type(results, AsyncIterator[int])
    async with keyed_amap(
        apply, events, key=account, limit=10, ordered=True, return_exceptions=True
    ) as outcomes2:
        assert_type(outcomes2, AsyncIterator[int | Exception])

    async with batched(urls(), size=10, max_wait=0.5) as batches:
        assert_type(batches, AsyncIterator[list[str]])
    async with batched(range(5), size=2, max_wait=None) as int_batches:
        assert_type(int_batches, AsyncIterator[list[int]])

    amap(fetch, [1, 2], limit=2)  # type: ignore[arg-type]
    amap(fetch, ["a"], limit=2.5)  # type: ignore[call-overload]
    amap(fetch, ["a"])  # type: ignore[call-overload]
    keyed_amap(apply, events, key=unhashable, limit=2)  # type: ignore[arg-type]
    keyed_amap(apply, events, limit=2)  # type: ignore[call-overload]
    batched(range(5), size=2)  # type: ignore[call-arg]
    batched(range(5), size=2, max_wait="soon")  # type: ignore[arg-type]
