"""Static type checks of SingleFlight, read by mypy and pyright."""

from __future__ import annotations

from typing import assert_type

from anyio_keyq import SingleFlight, SingleFlightStatistics


async def load(user: str, version: int) -> bytes:
    return user.encode() * version


async def check_singleflight() -> None:
    async with SingleFlight[str, bytes](ttl=5.0) as flights:
        assert_type(flights, SingleFlight[str, bytes])
        assert_type(await flights.run("alice", load, "alice", 2), bytes)
        assert_type(flights.forget("alice"), None)
        assert_type(flights.statistics(), SingleFlightStatistics)
        assert_type(flights.ttl, float | None)
        await flights.run("alice", load, "alice")  # type: ignore[arg-type]
        await flights.run("alice", load, "alice", "2")  # type: ignore[arg-type]
        await flights.run(1, load, "alice", 2)  # type: ignore[arg-type]
    SingleFlight(5.0)  # type: ignore[call-arg]
