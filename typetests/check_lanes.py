"""Static type checks, read by mypy and pyright, never executed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_type

import anyio

from anyio_keyq import (
    CircuitBreaker,
    DeadLetter,
    Job,
    JobStatus,
    KeyedLanes,
    LanesStatistics,
    Retry,
)


async def fetch(user: str, page: int) -> bytes:
    return b""


async def check(lanes: KeyedLanes[str]) -> None:
    assert_type(await lanes.run("k", fetch, "ann", 1), bytes)
    job = await lanes.submit("k", fetch, "ann", 1, timeout=2.5)
    assert_type(job, Job[bytes])
    assert_type(lanes.submit_nowait("k", fetch, "ann", 1), Job[bytes])
    assert_type(await job, bytes)
    assert_type(job.result(), bytes)
    assert_type(job.status, JobStatus)
    assert_type(lanes.statistics(), LanesStatistics)
    assert_type(lanes.keys(), tuple[str, ...])
    assert_type(lanes.pending("k"), int)

    await lanes.run("k", fetch, "ann")  # type: ignore[arg-type]
    await lanes.run("k", fetch, "ann", "one")  # type: ignore[arg-type]
    await lanes.run(1, fetch, "ann", 1)  # type: ignore[arg-type]


async def check_failures() -> None:
    letters: list[DeadLetter[str]] = []
    send, _ = anyio.create_memory_object_stream[DeadLetter[str]](10)
    async with KeyedLanes[str](
        retry=Retry(attempts=3),
        breaker=CircuitBreaker(failure_threshold=3),
        dead_letter=letters.append,
        on_failure="halt",
    ) as lanes:
        job = lanes.submit_nowait("k", fetch, "ann", 1, retry=Retry(attempts=5))
        assert_type(job.attempts, int)
        assert_type(lanes.halted, Mapping[str, BaseException])
        lanes.resume("k")
        assert_type(letters[0].key, str)
        assert_type(letters[0].exception, BaseException)
    KeyedLanes[str](dead_letter=send)
    KeyedLanes[int](dead_letter=send)  # type: ignore[arg-type]
    KeyedLanes[str](on_failure="stop")  # type: ignore[arg-type]
    KeyedLanes[str](retry=3)  # type: ignore[arg-type]
