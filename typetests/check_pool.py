"""Static type checks of Pool, read by mypy and pyright, never executed."""

from __future__ import annotations

from typing import assert_type

import anyio
from anyio.abc import SocketStream

from anyio_keyq import Pool, PoolStatistics


async def connect() -> SocketStream:
    return await anyio.connect_tcp("127.0.0.1", 5432)


async def alive(stream: SocketStream) -> bool:
    return True


def not_closed(stream: SocketStream) -> bool:
    return True


async def check_pool() -> None:
    async with Pool(connect, max_size=10, validate=alive, idle_timeout=60.0) as pool:
        assert_type(pool, Pool[SocketStream])
        async with pool.acquire() as stream:
            assert_type(stream, SocketStream)
            pool.discard(stream)
        assert_type(pool.statistics(), PoolStatistics)
        assert_type(pool.size, int)
        assert_type(pool.max_size, int)
        assert_type(pool.closed, bool)
        assert_type(await pool.aclose(), None)
        pool.discard("not a stream")  # type: ignore[arg-type]
    Pool(connect, max_size=1, validate=not_closed, close=lambda stream: stream.aclose())
    Pool(connect, max_size=1, min_size=0, close_timeout=1, keep_on_error=True)
    Pool(connect, 10)  # type: ignore[call-arg]
    Pool(connect, max_size=1, validate=len)  # type: ignore[arg-type]
    Pool(anyio.connect_tcp, max_size=1)  # type: ignore[arg-type]
