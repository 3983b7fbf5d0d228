"""Static type checks, read by mypy and pyright, never executed."""

from __future__ import annotations

from typing import assert_type

from anyio_keyq import Job, JobStatus, KeyedLanes, LanesStatistics


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
