"""Static type checks of ConcurrencyScope, read by mypy and pyright, never executed."""

from __future__ import annotations

from typing import Any, assert_type

import anyio

from anyio_keyq import ConcurrencyScope, Job, JobStatus, Limiter, ScopeStatistics


async def fetch(user: str, page: int) -> bytes:
    return b""


async def check() -> None:
    async with ConcurrencyScope(timeout=5, limit=2, fail_fast=False) as scope:
        assert_type(scope, ConcurrencyScope)
        job = scope.spawn(fetch, "ann", 1)
        assert_type(job, Job[bytes])
        assert_type(scope.spawn(fetch, "bob", 2, name="page 2"), Job[bytes])
        assert_type(scope.spawn(anyio.sleep, 1), Job[None])
        assert_type(await job, bytes)
        assert_type(job.status, JobStatus)
        assert_type(await scope.wait_settled(), tuple[Job[Any], ...])
        assert_type(scope.jobs, tuple[Job[Any], ...])
        assert_type(scope.statistics(), ScopeStatistics)
        assert_type(scope.deadline, float)
        assert_type(scope.cancel_called, bool)
        scope.deadline += 10
        scope.cancel("no longer needed")
    # Names bound in the block stay bound after it (pyright: no "possibly unbound").
    async with ConcurrencyScope() as scope:
        later = scope.spawn(fetch, "ann", 1)
    assert_type(later.result(), bytes)
    assert_type(
        ConcurrencyScope(limit=anyio.CapacityLimiter(3)).limit,
        int | anyio.CapacityLimiter | Limiter | None,
    )

    scope.spawn(fetch, "ann")  # type: ignore[arg-type]
    scope.spawn(fetch, "ann", "one")  # type: ignore[arg-type]
    scope.spawn(fetch, "ann", 1, name=3)  # type: ignore[arg-type]
    ConcurrencyScope(30)  # type: ignore[call-arg]
    ConcurrencyScope(timeout="30")  # type: ignore[arg-type]
    ConcurrencyScope(limit=2.5)  # type: ignore[arg-type]
