"""Many jobs over many keys: everything settles, nothing is left behind."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import defaultdict
from typing import Any

import pytest
from anyio.lowlevel import checkpoint

from anyio_keyq import Job, JobCancelled, JobStatus, KeyedLanes

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),  # debug mode would take minutes here
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param  # type: ignore[no-any-return]


JOBS = 100_000
KEYS = 10_000


@pytest.mark.no_cover  # tracing every line would make this take minutes
@pytest.mark.timeout(300)
async def test_many_jobs_over_many_keys_settle_and_leave_nothing() -> None:
    rng = random.Random(20261122)
    order: dict[int, list[int]] = defaultdict(list)

    async def job(key: int, index: int, fail: bool) -> int:
        order[key].append(index)
        await checkpoint()
        if fail:
            raise ValueError(index)
        return index

    async def run_batch(n: int) -> list[tuple[Job[int], bool, bool]]:
        handles: list[tuple[Job[int], bool, bool]] = []
        async with KeyedLanes[int](limit=100, max_pending=50) as lanes:
            for index in range(n):
                fail = rng.random() < 0.05
                key = rng.randrange(KEYS)
                handle = await lanes.submit(key, job, key, index, fail)
                cancel = rng.random() < 0.05
                if cancel:
                    handle.cancel()
                handles.append((handle, fail, cancel))
            assert lanes.statistics().peak_running <= 100
        stats = lanes.statistics()
        assert (stats.lanes, stats.running, stats.queued, stats.workers) == (0, 0, 0, 0)
        assert stats.submitted == n
        return handles

    await run_batch(1000)  # warm up caches and lazily built state before measuring
    order.clear()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        handles = await run_batch(JOBS)
        for handle, fail, cancel in handles:
            assert handle.done()
            if handle.status is JobStatus.CANCELLED:
                assert cancel
                with pytest.raises(JobCancelled):
                    handle.result()
            elif fail:
                assert isinstance(handle.exception(), ValueError)
            else:
                assert handle.status is JobStatus.FINISHED
        assert all(indices == sorted(indices) for indices in order.values())
        del handles, handle
        order.clear()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert retained < 1_000_000, f"{retained} bytes retained after {JOBS} jobs"
